"""SFT and DPO steps on a CPU with TRL's fused LM head against the kit's labelled-tokens head
(mpo_lib.runtime.lm_head), side by side in one run: same params, rows, seed and step count.

    python benchmarks/lm_head.py [--params params/cpu_small.yaml] [--steps 8]

Each arm runs the real stages (sft, then dpo_base on the dataset's own pairs, from that SFT) in its own
temporary run folder. Prints seconds per optimizer step, model GFLOP/s (benchmarks/mfu.py's count: 4N per trained
token for LoRA SFT, 6N for LoRA DPO's policy and reference) and the last training loss of each arm.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MPO_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from mfu import matmul_parameters

from mpo_lib import Run, load_config
from mpo_lib.method import dpo, sft
from mpo_lib.method.data import corpus, load_preferences, sft_rows
from mpo_lib.runtime.artifacts import read_json
from mpo_lib.runtime.models import load_stage_model, prepare_base


def arm(params: str, steps: int, head: str) -> tuple[dict[str, tuple[float, float, float]], int]:
    """({stage: (seconds per step, trained tokens per second, last loss)}, N) with `head` in the SFT and DPO stages."""
    cfg = load_config(params, {"ablations": ["dpo_base"], "sft": {"max_steps": steps},
                               "dpo": {"max_steps": steps}})
    keep = sft.use_labelled_tokens_head
    if head == "trl_fused":
        sft.use_labelled_tokens_head = dpo.use_labelled_tokens_head = lambda trainer: None
    splits = load_preferences(cfg)
    rates = {}
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            run = Run(cfg, run_dir)
            prepare_base(run, corpus(cfg, splits))
            sft.run_sft(run, sft_rows(cfg, splits))
            dpo.run_dpo(run, splits.train, "dpo_base")
            for stage in ("sft", "dpo_base"):
                metrics = read_json(run.stage_dir(stage) / "metrics.json")
                history = read_json(run.stage_dir(stage) / "log_history.json")
                tokens = [e["num_tokens"] for e in history if "num_tokens" in e][-1]
                rates[stage] = (metrics["train_seconds"] / metrics["optimizer_steps"],
                                tokens / metrics["train_seconds"], metrics["train_loss_last"])
            n = matmul_parameters(load_stage_model(run, "base"))[0]
    finally:
        sft.use_labelled_tokens_head = dpo.use_labelled_tokens_head = keep
    return rates, n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params/cpu_small.yaml")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    arms, n = {}, 0
    for head in ("trl_fused", "labelled_tokens"):
        arms[head], n = arm(args.params, args.steps, head)
    print(f"{args.params}, {args.steps} optimizer steps per stage, N = {n / 1e6:.1f}M matmul parameters")
    print(f"{'stage':<9} {'head':<16} {'s/step':>7} {'GFLOP/s':>8} {'last loss':>10}")
    for stage, flops in (("sft", 4 * n), ("dpo_base", 6 * n)):
        for head, rates in arms.items():
            seconds, tokens, loss = rates[stage]
            print(f"{stage:<9} {head:<16} {seconds:>7.2f} {tokens * flops / 1e9:>8.1f} {loss:>10.4f}")
        print(f"{stage}_speedup={arms['trl_fused'][stage][0] / arms['labelled_tokens'][stage][0]:.2f}")


if __name__ == "__main__":
    main()
