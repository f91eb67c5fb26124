"""`python -m mpo_lib pipeline`: execute the numbered notebooks in order with papermill, each
into runs/<run_name>/notebooks/, with one progress line per notebook. Finished stages are
reused, so re-running the pipeline resumes where it stopped; before it starts, it prints which
stages it will reuse, resume, build or re-run, and why."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from traitlets.config import Config as TraitletsConfig

from mpo_lib.reporting import evaluation, judge
from mpo_lib.reporting.figures import copy_to_repository
from mpo_lib.reporting.paper import RM_ACCURACY
from mpo_lib.runtime import stages
from mpo_lib.runtime.artifacts import Run
from mpo_lib.runtime.config import PROJECT_ROOT, load_config, params_path
from mpo_lib.runtime.lineage import plan
from mpo_lib.runtime.run_lock import building

NOTEBOOKS = PROJECT_ROOT / "notebooks"


class NotebookFailed(RuntimeError):
    """A notebook's cell raised: the message names the notebook, the error line and the executed copy."""


def notebooks(until: str | None = None) -> list[Path]:
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if until is not None:
        if not any(nb.name.startswith(until) for nb in found):
            raise ValueError(f"--until {until}: no notebook numbered {until} in {NOTEBOOKS}")
        found = [nb for nb in found if nb.name[:2] <= until]
    return found


def print_plan(run: Run) -> list[dict]:
    """What a full run would do with each stage, and why (mpo_lib.runtime.lineage)."""
    rows = plan(run)
    for row in rows:
        print(f"plan: {row['stage']:<18} {row['action']:<7} {row['why']}", flush=True)
    return rows


def run_pipeline(params_file: str, run_dir: str | None = None, until: str | None = None,
                 plan_only: bool = False, overrides: dict | None = None) -> Path:
    cfg = load_config(params_file, overrides)  # fail on bad params before any notebook starts
    run = Run(cfg, run_dir)
    if plan_only:  # reads the run directory only: no lock
        print_plan(run)
        return run.path
    with building(run.path):  # the notebooks' kernels inherit the hold
        execute_notebooks(run, params_file, until, overrides or {})
    for line in summary(run):
        print(line)
    for path in copy_to_repository(run):
        print(f"figure published: {path}")
    print(f"run directory: {run.path}")
    return run.path


def execute_notebooks(run: Run, params_file: str, until: str | None, overrides: dict) -> None:
    import papermill

    try:
        print_plan(run)
    except (ValueError, RuntimeError, OSError, KeyError) as exc:  # it informs; the notebooks report errors
        print(f"plan unavailable ({type(exc).__name__}: {exc}); running the notebooks", flush=True)
    out_dir = run.path / "notebooks"
    out_dir.mkdir(exist_ok=True)
    selected = notebooks(until)
    with tempfile.TemporaryDirectory(prefix="mpo-kernel-") as sockets:  # short: a socket path has <= 107 bytes
        # the kernels talk over IPC sockets, not unencrypted loopback TCP (which ipykernel warns about each time)
        ipc = TraitletsConfig({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
        for index, notebook in enumerate(selected, 1):
            started, executed = time.time(), out_dir / notebook.name
            print(f"[{index}/{len(selected)}] {notebook.name} ...", flush=True)
            try:
                papermill.execute_notebook(
                    str(notebook), str(executed), cwd=str(PROJECT_ROOT), progress_bar=False, config=ipc,
                    parameters={"params_file": str(params_path(params_file)), "run_dir": str(run.path),
                                "overrides": overrides})
            except papermill.PapermillExecutionError as exc:
                raise NotebookFailed(f"{notebook.name} failed in cell [{exc.exec_count}]: {exc.ename}: {exc.evalue}\n"
                                     f"  the executed notebook, with the cell and its traceback: {executed}"
                                     ) from None
            print(f"[{index}/{len(selected)}] {notebook.name} done in {time.time() - started:.0f}s", flush=True)


# the policies Table 3 compares: the summary prints their paired differences
TABLE3_POLICIES = {"sft", "dpo_base", "dpo_full", "dpo", "ppo_full", "mpo"}


def summary(run: Run) -> list[str]:
    """The headline numbers of the finished stages, one line each."""
    lines = []
    if run.is_complete("rm"):
        heldout = run.metrics("rm")["heldout"]
        for subset, result in heldout.items():
            if subset == "all" and len(heldout) == 2:  # one subset: "all" repeats it
                continue
            lines.append(f"RM held-out accuracy ({subset}, {result['pairs']} pairs): {result['rm_accuracy']:.1%} "
                         f"vs 'shorter response wins' {result['shorter_wins_accuracy']:.1%} "
                         f"(paper: {RM_ACCURACY[run.cfg.data.dataset]:.0%})")
    headline = {  # stage kind -> its line, from the stage's name and metrics
        stages.SPLIT: lambda name, m: f"{name} at gamma={m['gamma']:g}: |D^e|={m['easy']} |D^h|={m['hard']} of "
                                      f"{m['prompts']} prompts",
        stages.DPO: lambda name, m: f"{name}: {m['pairs']} pairs, loss {m['train_loss_first']:.3f} -> "
                                    f"{m['train_loss_last']:.3f}; after training, reward margin "
                                    f"{m['reward_margin_after']:+.3f} and accuracy {m['reward_accuracy_after']:.0%} on its pairs",
        stages.PPO: lambda name, m: f"{name}: {m['steps']} steps over {m['prompts']} prompts, reward "
                                    f"{m['reward_first_quarter']:+.3f} (first quarter) -> {m['reward_last_quarter']:+.3f} "
                                    f"(last quarter), KL {m['kl_last_quarter']:.3f}, {m['step_seconds_mean']:.0f} s/step"}
    for stage in stages.of_kind(run.cfg, *headline):
        if run.is_complete(stage.name):
            lines.append(headline[stage.kind](stage.name, run.metrics(stage.name)))
    if versus := evaluation.mpo_vs_ppo_compute(run):
        lines.append("MPO (resample + DPO + PPO on D^h) / vanilla PPO: "
                     + ", ".join(f"{key} x{value}" for key, value in versus["MPO / PPO"].items()))
    for row in evaluation.table3(run):
        paper = row["paper (table3)"]
        lines.append(f"Table 3, {row['policy']}: reward {row['reward']:+.3f} {row['95% CI']} on {row['prompts']} "
                     f"held-out prompts" + (f" (paper: {paper})" if paper is not None else ""))
    for row in evaluation.paired_differences(run):
        if {stages.paper_row(row["policy"]), stages.paper_row(row["baseline"])} <= TABLE3_POLICIES:
            verdict = "0 outside: a real difference" if row["0 outside the interval"] else "0 inside: not shown to differ"
            lines.append(f"paired, {row['comparison']}: {row['mean difference']:+.3f} {row['paired 95% CI']} ({verdict}); "
                         f"{row['Δ words']} words, at equal length {row['at equal length']:+.3f} "
                         f"{row['equal-length 95% CI']}")
    for kind, result in evaluation.judge_summaries(run).items():
        if not result["judged"]:
            lines.append(f"Table 4 ({judge.LABELS[kind]}): no item judged ({result['failures']} failures)")
            continue
        lines.append(f"Table 4 ({judge.LABELS[kind]}), {' vs '.join(run.cfg.eval.compare)}: win {result['win']:.1%} "
                     f"tie {result['tie']:.1%} lose {result['lose']:.1%}, position-consistent {result['consistency']:.1%}"
                     + (f"; win - lose {result['win_minus_lose']:+.1%} [{result['win_minus_lose_ci'][0]:+.1%}, "
                        f"{result['win_minus_lose_ci'][1]:+.1%}]" if result.get("win_minus_lose_ci") else ""))
    return lines
