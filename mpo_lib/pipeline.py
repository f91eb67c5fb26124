"""`python -m mpo_lib pipeline`: execute the numbered notebooks in order with papermill, each
into runs/<run_name>/notebooks/, with one progress line per notebook. Finished stages are
reused, so re-running the pipeline resumes where it stopped."""
from __future__ import annotations

import time
from pathlib import Path

from .artifacts import Run
from .config import PROJECT_ROOT, load_config
from .figures import copy_to_repository

NOTEBOOKS = PROJECT_ROOT / "notebooks"


def notebooks(until: str | None = None) -> list[Path]:
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if until is not None:
        if not any(nb.name.startswith(until) for nb in found):
            raise ValueError(f"--until {until}: no notebook numbered {until} in {NOTEBOOKS}")
        found = [nb for nb in found if nb.name[:2] <= until]
    return found


def run_pipeline(params_file: str, run_dir: str | None = None, until: str | None = None) -> Path:
    import papermill

    cfg = load_config(params_file)  # fail on bad params before any notebook starts
    if cfg.launch.num_processes > 1:
        raise NotImplementedError(f"{params_file}: launch.num_processes={cfg.launch.num_processes}: multi-process "
                                  "launch (accelerate + DeepSpeed) is not implemented yet; run with 1 process")
    run = Run(cfg, run_dir)
    out_dir = run.path / "notebooks"
    out_dir.mkdir(exist_ok=True)
    selected = notebooks(until)
    for index, notebook in enumerate(selected, 1):
        started = time.time()
        print(f"[{index}/{len(selected)}] {notebook.name} ...", flush=True)
        papermill.execute_notebook(
            str(notebook), str(out_dir / notebook.name), cwd=str(PROJECT_ROOT), progress_bar=False,
            parameters={"params_file": str(Path(params_file).resolve()), "run_dir": str(run.path)})
        print(f"[{index}/{len(selected)}] {notebook.name} done in {time.time() - started:.0f}s", flush=True)
    for path in copy_to_repository(run):
        print(f"figure published: {path}")
    print(f"run directory: {run.path}")
    return run.path
