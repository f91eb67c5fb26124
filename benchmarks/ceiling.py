"""How far each hot loop could rise if everything but its matrix multiplies took no time: the kernel ceiling on
model FLOP/s, on this machine, against its measured bf16 matmul peak.

    python benchmarks/ceiling.py [--params params/cpu_small.yaml] [--steps 3]

Three loops, on the params' real rows and models, each timed over --steps repeats and then profiled (torch.profiler,
self time per operator) for one more:
- a reward-model training step (TRL's RewardTrainer on the rm section's pairs and batch, under the run's bf16
  autocast): model FLOPs 4(N - head) per token of the batch (benchmarks/mfu.py's LoRA count);
- the RM's scoring forward of the same batch, without gradients: 2(N - head) per token;
- sampling (resample.sample_batch): one resample.batch_size batch of prompts, resample.max_new_tokens new tokens, in
  the params' sample_dtype: model FLOPs 2N per prompt and generated token (the prefill counted, unlike mfu.py).

For each it prints the achieved model GFLOP/s (and % of the peak), the share of profiled time in matmul kernels (mm,
bmm, addmm), attention kernels (scaled_dot_product_*) and everything else, and two ceilings: the GFLOP/s (% of peak)
the loop would reach if the other operators took no time, and if attention also took none (the matmul kernels alone,
at the shapes the loop gives them). The RM batch is the first the length-grouped sampler gives: its longest. The peak
is the best of two measurements (benchmarks/mfu.py's), before and after the loops.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MPO_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from mfu import matmul_parameters, matmul_peak, scratch_run
from torch.profiler import profile

from mpo_lib import Run
from mpo_lib.method import reward
from mpo_lib.method.resample import sample_batch
from mpo_lib.reporting.evaluation import eval_prompts
from mpo_lib.runtime.models import DTYPES, load_stage_model, load_tokenizer

MATMULS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"}


def kernel_shares(call) -> tuple[float, float, float]:
    """Shares of one profiled call's self CPU time: (matmul kernels, attention kernels, the rest)."""
    with profile() as trace:
        call()
    times = {e.key: e.self_cpu_time_total for e in trace.key_averages()}
    total = sum(times.values())
    matmul = sum(t for k, t in times.items() if k in MATMULS)
    attention = sum(t for k, t in times.items() if "scaled_dot_product" in k)
    return matmul / total, attention / total, 1 - (matmul + attention) / total


def timed(call, steps: int) -> float:
    """Seconds per call over `steps` calls, after one warm-up."""
    call()
    started = time.perf_counter()
    for _ in range(steps):
        call()
    return (time.perf_counter() - started) / steps


def reward_loops(run: Run, rows: list[dict], out_dir: Path):
    """(one optimizer step of the RM on a fixed batch, the RM's scoring forward of that batch, the batch's tokens)."""
    trainer, _ = reward.reward_trainer(run, rows, out_dir)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which this bypasses
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.cfg.model.bf16):
            trainer.training_step(trainer.model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()

    def scoring():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.cfg.model.bf16):
            trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return step, scoring, int(batch["attention_mask"].sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params/cpu_small.yaml")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with scratch_run(args.params) as (cfg, splits, run):
        tokenizer = load_tokenizer(run)
        model = load_stage_model(run, "base").to(DTYPES[cfg.model.sample_dtype]).eval().requires_grad_(False)
        n, head = matmul_parameters(model)
        dtype = torch.bfloat16 if cfg.model.bf16 else torch.float32
        peak_before = matmul_peak(dtype)
        loops = []
        step, scoring, tokens = reward_loops(run, reward.rm_rows(cfg, splits.train), run.path / "rm_benchmark")
        loops += [(f"RM training step ({tokens} tokens)", step, 4 * (n - head) * tokens),
                  ("RM scoring forward, same batch", scoring, 2 * (n - head) * tokens)]

        prompts = [p["prompt"] for p in eval_prompts(run, splits.evaluation)][:cfg.resample.batch_size]
        spec = cfg.resample

        def sample():  # the same draws each call, so each call decodes the same tokens
            torch.manual_seed(cfg.seed)
            with torch.no_grad():
                return sample_batch(model, tokenizer, prompts, 1, spec.max_new_tokens, spec.temperature, spec.top_p)
        output, prompt_mask, prompt_length = sample()
        sampled = int(prompt_mask.sum() + (output[:, prompt_length:] != tokenizer.pad_token_id).sum())
        loops.append((f"sampling {len(prompts)} prompts x {spec.max_new_tokens} tokens", sample, 2 * n * sampled))

        timings = [(name, timed(call, args.steps), kernel_shares(call), flops) for name, call, flops in loops]
        # the best of two windows, before and after the loops: one 3-second window read 916 against 2,259 GFLOP/s
        # a minute later on the same machine
        peak = max(peak_before, matmul_peak(dtype))
        print(f"{args.params}: N = {n / 1e6:.1f}M matmul parameters; {dtype} matmul peak measured now "
              f"{peak / 1e9:.0f} GFLOP/s; {args.steps} timed repeats each")
        print(f"{'loop':<40} {'s':>6} {'GFLOP/s':>14} {'matmul':>7} {'attn':>6} {'other':>6} "
              f"{'ceiling, no other':>18} {'ceiling, matmul only':>21}")

        def rate(flops_per_s: float) -> str:
            return f"{flops_per_s / 1e9:.0f} ({100 * flops_per_s / peak:.0f}%)"
        for name, seconds, (matmul, attention, other), flops in timings:
            achieved = flops / seconds
            print(f"{name:<40} {seconds:>6.2f} {rate(achieved):>14} {100 * matmul:>6.0f}% {100 * attention:>5.0f}% "
                  f"{100 * other:>5.0f}% {rate(achieved / (matmul + attention)):>18} {rate(achieved / matmul):>21}")


if __name__ == "__main__":
    main()
