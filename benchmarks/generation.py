"""Resampling throughput: the kit's batched, length-sorted generation (16 prompts x 2 samples per
generate call) against one prompt at a time, same model, prompts, dtype and stop rule, one run.

    python benchmarks/generation.py [--prompts 16] [--max-new-tokens 64]

Prints new tokens/s for both and the speedup, first on the smoke model, then on SmolLM2-135M
(the last line is the SmolLM2 figure).
"""
from __future__ import annotations

import argparse
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
from mpo_lib.method.data import corpus, load_preferences, truncate_prompt
from mpo_lib.method.resample import generate, resample_prompts
from mpo_lib.runtime.models import DTYPES, load_stage_model, load_tokenizer, prepare_base


def tokens_per_second(model, tokenizer, prompts, batch_size, cfg, max_new_tokens) -> float:
    started = time.perf_counter()
    samples = generate(model, tokenizer, prompts, 2, max_new_tokens, batch_size, stop=cfg.resample.stop, seed=0)
    seconds = time.perf_counter() - started
    return sum(len(tokenizer(s, add_special_tokens=False)["input_ids"]) for pair in samples for s in pair) / seconds


def measure(params: str, label: str, n_prompts: int, max_new_tokens: int) -> float:
    cfg = load_config(params)
    splits = load_preferences(cfg)
    with tempfile.TemporaryDirectory() as run_dir:
        run = Run(cfg, run_dir)
        prepare_base(run, corpus(cfg, splits))
        tokenizer = load_tokenizer(run)
        model = load_stage_model(run, "base").to(DTYPES[cfg.model.sample_dtype])
        prompts = [truncate_prompt(tokenizer, p, cfg.data.max_prompt_tokens)
                   for p in resample_prompts(cfg, splits.train)[:n_prompts]]
        generate(model, tokenizer, prompts[:2], 2, 4, 2)  # warm-up
        batched = tokens_per_second(model, tokenizer, prompts, n_prompts, cfg, max_new_tokens)
        sequential = tokens_per_second(model, tokenizer, prompts, 1, cfg, max_new_tokens)
    print(f"{label}: {n_prompts} prompts x 2 samples, {max_new_tokens} new tokens max, {cfg.model.sample_dtype}: "
          f"batched {batched:.1f} new tokens/s, one prompt at a time {sequential:.1f} new tokens/s")
    return batched / sequential


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    smoke = measure("params/smoke.yaml", "smoke model", args.prompts, args.max_new_tokens)
    print(f"smoke_batched_vs_sequential_speedup={smoke:.2f}")
    smollm = measure("params/cpu_small.yaml", "SmolLM2-135M", args.prompts, args.max_new_tokens)
    print(f"batched_vs_sequential_speedup={smollm:.2f}")


if __name__ == "__main__":
    main()
