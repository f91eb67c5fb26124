"""What the smoke notebooks must show, checked with nbval.

A code cell tagged `nbval-check-output` shows a table or a figure a reader needs (Table 1, Fig. 2, the split,
Table 3 ...). tests/notebook_outputs/<notebook>.json keeps what each tagged cell showed on the smoke profile,
sanitised (notebook_outputs/sanitize.cfg: numbers and spacing may move). The check re-executes a run's
executed notebooks under `pytest --nbval-lax`: every cell must run, and every tagged cell must show the same
outputs (the same tables, rows and columns, the same figures). A cell that stops displaying its table fails.

After a deliberate change to what a notebook shows, refresh the expected outputs from a smoke run:

    python tests/notebook_check.py runs/smoke      # after `make smoke`
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
from nbval.plugin import get_sanitize_patterns

TAG = "nbval-check-output"
EXPECTED = Path(__file__).resolve().parent / "notebook_outputs"
SANITIZE = EXPECTED / "sanitize.cfg"


def sanitised(outputs: list) -> list:
    """Outputs as nbval compares them: sanitised text, no image bytes or widget ids (nbval skips both; an image's
    text/plain stays)."""
    patterns = get_sanitize_patterns(SANITIZE.read_text())
    clean = []
    for output in outputs:
        output = {k: v for k, v in output.items() if k not in ("execution_count", "metadata", "transient")}
        if "data" in output:
            output["data"] = {k: v for k, v in output["data"].items()
                              if not k.startswith("image/") and k != "application/vnd.jupyter.widget-view+json"}
        for key, value in list(output.get("data", {}).items()) + [("text", output.get("text"))]:
            if isinstance(value, str):
                for regex, replace in patterns:
                    value = re.sub(regex, replace, value)
                (output["data"] if key != "text" else output)[key] = value
        clean.append(output)
    return clean


def tagged(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code" and TAG in cell.metadata.get("tags", [])]


def write_expected(run_dir: Path) -> None:
    """tests/notebook_outputs/<notebook>.json from a smoke run's executed notebooks."""
    for executed in sorted((run_dir / "notebooks").glob("*.ipynb")):
        cells = tagged(nbformat.read(executed, as_version=4))
        expected = [{"source": cell.source, "outputs": sanitised(cell.outputs)} for cell in cells]
        (EXPECTED / f"{executed.stem}.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
        print(f"{executed.stem}: {len(cells)} checked cells")


def check_copy(executed: Path, out: Path) -> Path:
    """The executed notebook with its tagged cells' expected outputs in place and every other output cleared:
    the notebook nbval re-executes and compares."""
    notebook = nbformat.read(executed, as_version=4)
    expected = json.loads((EXPECTED / f"{executed.stem}.json").read_text())
    cells = tagged(notebook)
    if len(cells) != len(expected):
        raise AssertionError(f"{executed.name}: {len(cells)} cells tagged {TAG}, {len(expected)} expected in "
                             f"{EXPECTED / (executed.stem + '.json')}: refresh it (python tests/notebook_check.py RUN)")
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    for cell, want in zip(cells, expected):
        cell.outputs = [nbformat.from_dict(output) for output in want["outputs"]]
    nbformat.write(notebook, out / executed.name)
    return out / executed.name


def nbval(notebooks: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    """pytest --nbval-lax over the notebooks, in this interpreter's environment."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env",
                           "--nbval-sanitize-with", str(SANITIZE), "-p", "no:cacheprovider", "--rootdir", str(cwd),
                           *map(str, notebooks)], cwd=cwd, capture_output=True, text=True)


if __name__ == "__main__":
    write_expected(Path(sys.argv[1]))
