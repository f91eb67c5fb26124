"""The paper's orderings across runs that differ only in their seed.

    python -m mpo_lib seeds runs/cpu_small runs/cpu_small_seed1 runs/cpu_small_seed2

A paired interval (evaluation.paired_differences) resamples prompts: it says whether two trained policies differ on
the run's prompts, not whether the methods that trained them do. Each seed draws its own RM score head, batches,
resampled pairs and rollouts, and on cpu_small two seeds on the same code gave MPO - vanilla PPO +0.358 and -0.122,
both intervals excluding 0. So an ordering of methods is called shown here only when every run's paired interval
excludes 0 on the same side, and the same again for the differences at equal answer length. Each run's differences
are in its own RM's units, so they are listed, not pooled.
"""
from __future__ import annotations

from pathlib import Path

from mpo_lib.reporting.evaluation import paired_differences
from mpo_lib.runtime import stages
from mpo_lib.runtime.config import ConfigError


def verdict(rows: list[dict], mean: str, shown: str) -> tuple[int, int, str]:
    """One comparison's rows, one per run: how many runs' intervals lie above 0, how many below, and the ordering
    shown by all of them, if any."""
    above, below = sum(r[shown] and r[mean] > 0 for r in rows), sum(r[shown] and r[mean] < 0 for r in rows)
    policy, baseline = stages.label(rows[0]["policy"]), stages.label(rows[0]["baseline"])
    return above, below, (f"{policy} > {baseline} in every run" if above == len(rows) else
                          f"{policy} < {baseline} in every run" if below == len(rows) else "not shown")


def orderings(per_run: dict[str, list[dict]]) -> list[dict]:
    """per_run: {run label: its paired_differences rows}. One row per comparison every run evaluated, in the first
    run's order: each run's mean difference and interval, how many runs put 0 below or above the interval, the
    verdict, and the verdict on the differences at equal answer length (evaluation.paired_differences)."""
    by_run = {label: {row["comparison"]: row for row in rows} for label, rows in per_run.items()}
    first = next(iter(by_run.values()), {})
    common = [c for c in first if all(c in rows for rows in by_run.values())]
    table = []
    for comparison in common:
        rows = [by_run[label][comparison] for label in by_run]
        above, below, plain = verdict(rows, "mean difference", "0 outside the interval")
        table.append({"comparison": comparison,
                      **{label: f"{r['mean difference']:+.3f} {r['paired 95% CI']}" for label, r in zip(by_run, rows)},
                      "runs above 0": above, "runs below 0": below, "verdict": plain,
                      "verdict at equal length": verdict(rows, "at equal length", "0 outside at equal length")[2]})
    return table


def runs_orderings(run_dirs: list[str]) -> list[dict]:
    """orderings() of finished runs, each labelled by its seed (its path where two share one)."""
    from mpo_lib.runtime.export import open_finished

    if len(run_dirs) < 2:
        raise ConfigError(f"seeds: give two or more run directories, got {len(run_dirs)}")
    for folder in run_dirs:
        if not (Path(folder) / "eval_sft" / "params.yaml").is_file():
            raise ConfigError(f"seeds: {folder} has no finished evaluation (eval_sft): run its notebook 07 first")
    runs = [open_finished(d, "eval_sft") for d in run_dirs]
    seeds = [run.cfg.seed for run in runs]
    labels = [f"seed {s}" if seeds.count(s) == 1 else str(d) for s, d in zip(seeds, run_dirs)]
    return orderings({label: paired_differences(run) for label, run in zip(labels, runs)})
