"""Model FLOP/s of a finished run's stages against this machine's measured matmul peak in the run's precision.

    python benchmarks/mfu.py --params params/cpu_small.yaml [--run-dir runs/cpu_small]

The peak is measured here, now: the fastest of repeated 2048 x 2048 matmuls (2 * 2048^3 FLOPs each), in bf16 when the run
trains in bf16 and in fp32 when it does not (a machine without native bf16 runs bf16 profiles in fp32). Each stage's
rate comes from what the run recorded (tokens TRL trained on over the training seconds; tokens generated
over the stage's wall-clock), at N = the parameters of the model's matrix multiplies (every linear layer,
the LM head included), per token:

- SFT with LoRA: 4N (forward 2N, backward through the frozen weights to the activations 2N; the adapters'
  own gradients are negligible); full fine-tuning 6N. The RM the same, without the LM head.
- DPO: the policy's 4N (6N full) plus the reference's forward 2N, per chosen and rejected token.
- Resampling and evaluation: 2N per generated token (decoding only: the prompts' prefill and the RM's
  scoring are not counted, so these rates are lower bounds).

Then the ceiling at the model's own MLP matmul, (rows x hidden) @ (hidden x intermediate), with the rows of an SFT
micro-batch and of a resampling batch: how much of the peak a stage could reach if it were all matmuls.

PPO is left out: a step mixes sampling, four models' forwards and two updates over whole sequences whose
prompt lengths the run does not record.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MPO_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from mpo_lib import Run, load_config
from mpo_lib.method.data import corpus, load_preferences
from mpo_lib.runtime import stages
from mpo_lib.runtime.artifacts import read_json
from mpo_lib.runtime.models import load_stage_model, prepare_base


@contextlib.contextmanager
def scratch_run(params: str):
    """(config, its data splits, a temporary run with the base model prepared): the other benchmarks' set-up."""
    cfg = load_config(params)
    splits = load_preferences(cfg)
    with tempfile.TemporaryDirectory() as run_dir:
        run = Run(cfg, run_dir)
        prepare_base(run, corpus(cfg, splits))
        yield cfg, splits, run


def matmul_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 3.0, rows: int | None = None,
                width: int | None = None) -> float:
    """FLOP/s of the fastest of repeated (rows x size) @ (size x width) matmuls in `dtype` (square by default),
    after a warm-up. The fastest, not the mean: on a shared 2-core machine the mean over a few seconds varied
    twofold between calls."""
    rows, width = rows or size, width or size
    a, b = torch.randn(rows, size, dtype=dtype), torch.randn(size, width, dtype=dtype)
    a @ b
    fastest, started = float("inf"), time.perf_counter()
    while time.perf_counter() - started < seconds:
        begun = time.perf_counter()
        a @ b
        fastest = min(fastest, time.perf_counter() - begun)
    return 2 * rows * size * width / fastest


def matmul_parameters(model) -> tuple[int, int]:
    """(weights of every linear layer, those of the LM head)."""
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    head = model.get_output_embeddings()
    return sum(m.weight.numel() for m in linear), head.weight.numel() if head is not None else 0


def stage_rates(run: Run, n: int, head: int) -> list[tuple[str, float, str]]:
    """(stage, model FLOP/s, FLOPs per token used) for every finished stage the docstring counts."""
    lora = run.cfg.model.lora is not None
    train = 4 if lora else 6
    rows = []
    for stage in stages.catalogue(run.cfg):
        if not run.is_complete(stage.name):
            continue
        m = read_json(run.stage_dir(stage.name) / "metrics.json")
        if stage.kind.trl_section:
            trained = [e["num_tokens"] for e in read_json(run.stage_dir(stage.name) / "log_history.json")
                       if "num_tokens" in e]
            if not trained or not m.get("train_seconds"):
                continue
            per_token, count = {"sft": (train * n, f"{train}N"), "rm": (train * (n - head), f"{train}(N - head)"),
                                "dpo": ((train + 2) * n, f"{train}N + 2N")}[stage.kind.name]
            rows.append((stage.name, trained[-1] / m["train_seconds"] * per_token, count))
        elif stage.kind.generates and m.get("wall_seconds"):
            generated = m.get("tokens_generated", m.get("new_tokens"))
            rows.append((stage.name, generated / m["wall_seconds"] * 2 * n, "2N per generated token"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params/cpu_small.yaml")
    parser.add_argument("--run-dir")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    run = Run(load_config(args.params), args.run_dir)
    base = load_stage_model(run, "base")
    n, head, model_config = *matmul_parameters(base), base.config
    precision = "bf16" if run.cfg.model.bf16 else "fp32"
    peak = matmul_peak(torch.bfloat16 if run.cfg.model.bf16 else torch.float32)
    print(f"{precision} matmul peak (the run's precision), measured now: {peak / 1e9:.0f} GFLOP/s")
    print(f"N = {n / 1e6:.1f}M matmul parameters ({head / 1e6:.1f}M in the LM head); run {run.path}")
    print(f"{'stage':<18} {'GFLOP/s':>8} {f'% of {precision} peak':>15}  FLOPs per token")
    for stage, rate, count in stage_rates(run, n, head):
        print(f"{stage:<18} {rate / 1e9:>8.1f} {100 * rate / peak:>14.1f}%  {count}")
    # the ceiling at the model's own MLP shape: a training micro-batch's rows against a decoding batch's
    dtype, config = torch.bfloat16 if run.cfg.model.bf16 else torch.float32, run.cfg
    hidden, mlp = model_config.hidden_size, model_config.intermediate_size
    for label, rows in (("training (sft batch x max_length rows)", config.sft.batch_size * config.sft.max_length),
                        ("decoding (resample batch rows)", config.resample.batch_size)):
        rate = matmul_peak(dtype, hidden, rows=rows, width=mlp)
        print(f"{precision} ({rows} x {hidden}) @ ({hidden} x {mlp}), {label}: {rate / 1e9:.0f} GFLOP/s, "
              f"{100 * rate / peak:.0f}% of peak")


if __name__ == "__main__":
    main()
