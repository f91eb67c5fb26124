"""Notebook 06: the paper's ablations (stages.ABLATIONS, chosen by `ablations` in params), each a
stage trained by the same DPO or PPO code as the main stages, with the variant that defines it."""
from __future__ import annotations

from mpo_lib.runtime.artifacts import Run
from mpo_lib.runtime.launch import run_stage
from mpo_lib.runtime.stages import ablation_stages


def run_ablations(run: Run) -> dict[str, dict]:
    """Train the chosen ablations and those they start from, in dependency order."""
    return {name: run_stage(run, name) for name in ablation_stages(run.cfg)}
