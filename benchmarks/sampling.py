"""Where sampling's time goes on a CPU, in one run: the prefill's LM head, and decoding at several batch sizes.

    python benchmarks/sampling.py [--params params/cpu_small.yaml] [--batch-sizes 16 48]

1. The LM head of the last prompt position in bf16, taken as transformers does for logits_to_keep=1 (a strided
   view of the hidden states) against the kit's index (resample.sample_batch): a frozen bf16 linear layer on a
   strided 3-D input is far slower on a CPU.
2. Greedy answers (the eval section's max_new_tokens and repetition_penalty) to the run's eval prompts from the base
   model in the params' sample_dtype, at each batch size: seconds, new tokens/s, and model FLOP/s (2N per generated
   token) against the machine's bf16 matmul peak (benchmarks/mfu.py).
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

from mpo_lib.method.resample import generate
from mpo_lib.reporting.evaluation import eval_prompts
from mpo_lib.runtime.models import DTYPES, load_stage_model, load_tokenizer


def fastest(call, repeats: int = 5) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def last_position_head(model, rows: int, prompt_length: int = 128) -> tuple[float, float]:
    """Seconds for the LM head of the last of prompt_length positions of `rows` prompts: strided view, index."""
    hidden = torch.randn(rows, prompt_length, model.config.hidden_size, dtype=model.dtype)
    head, last = model.get_output_embeddings(), torch.tensor([prompt_length - 1])
    with torch.no_grad():
        return fastest(lambda: head(hidden[:, -1:, :])), fastest(lambda: head(hidden[:, last, :]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params/cpu_small.yaml")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 48])
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with scratch_run(args.params) as (cfg, splits, run):
        tokenizer = load_tokenizer(run)
        # frozen, as the stages' trained policies load: the strided-view slowdown needs weights without gradients
        model = load_stage_model(run, "base").to(DTYPES[cfg.model.sample_dtype]).eval().requires_grad_(False)
        n = matmul_parameters(model)[0]
        print(f"{args.params}: {cfg.model.sample_dtype} weights, N = {n / 1e6:.1f}M matmul parameters")
        for rows in args.batch_sizes:
            strided, indexed = last_position_head(model, rows)
            print(f"prefill LM head, {rows} prompts: strided view {strided * 1e3:.1f} ms, index {indexed * 1e3:.1f} ms "
                  f"({strided / indexed:.0f}x)")
        peak = matmul_peak(torch.bfloat16)
        prompts = [p["prompt"] for p in eval_prompts(run, splits.evaluation)]
        print(f"bf16 matmul peak, measured now: {peak / 1e9:.0f} GFLOP/s; {len(prompts)} eval prompts, greedy, "
              f"{cfg.eval.max_new_tokens} new tokens max, repetition penalty {cfg.eval.repetition_penalty}")
        for batch_size in args.batch_sizes:
            started = time.perf_counter()
            answers = generate(model, tokenizer, prompts, 1, cfg.eval.max_new_tokens, batch_size, temperature=0.0,
                               stop=cfg.resample.stop, repetition_penalty=cfg.eval.repetition_penalty)
            seconds = time.perf_counter() - started
            tokens = sum(len(tokenizer(a[0], add_special_tokens=False)["input_ids"]) for a in answers)
            rate = 2 * n * tokens / seconds
            print(f"batch {batch_size:>3}: {seconds:5.1f} s, {tokens / seconds:6.1f} new tokens/s, "
                  f"{rate / 1e9:5.1f} GFLOP/s, {100 * rate / peak:4.1f}% of peak")


if __name__ == "__main__":
    main()
