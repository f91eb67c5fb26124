"""Notebook 06: the paper's ablations (config.ABLATIONS, chosen by `ablations` in params), each a
stage trained by the same DPO or PPO code as the main stages, with the variant that defines it."""
from __future__ import annotations

from .artifacts import Run
from .config import ABLATIONS, DPOVariant
from .dpo import run_dpo
from .ppo import run_ppo


def run_ablations(run: Run, train_rows: list[dict]) -> dict[str, dict]:
    """Train the chosen ablations and those they start from, in dependency order."""
    return {name: run_dpo(run, train_rows, name) if isinstance(ABLATIONS[name], DPOVariant) else run_ppo(run, name)
            for name in run.cfg.ablation_stages()}
