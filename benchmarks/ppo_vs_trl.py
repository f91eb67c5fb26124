"""The kit's PPO against TRL 1.12's trl.experimental.ppo.PPOTrainer, side by side in one run, then
the kit's LoRA layout (four roles on one backbone) against four separate models on SmolLM2-135M.

    python benchmarks/ppo_vs_trl.py [--steps 6] [--smollm-run-dir runs/cpu_small]

1. Same tiny model (the smoke profile's SFT policy/reference and reward/value models, full
   fine-tuning, fp32), same prompts, rollout batch, response length, PPO epochs and learning
   rate; each trainer in its own process. TRL 1.12 lives in a throw-away venv ($MPO_TRL112_VENV or
   .bench/trl112),
   never a dependency of the kit. Step time is the median over steps after the first.
2. SmolLM2-135M with LoRA, one PPO step of 8 prompts x 64 new tokens (micro-batches of 2, gradient
   checkpointing), in two processes: four roles on one backbone (the kit's LoRA layout; the issue
   asked for two, hence the last line's name) and four separate models. Uses a copy of the SFT and RM
   of --smollm-run-dir when they are finished (resampling again in the copy if that stage is out of
   date), otherwise builds short ones.

Last two lines:
    step_time_ratio=<ours/trl> peak_rss_ratio=<ours/trl>
    two_backbone_vs_four_models_peak_rss=<x>
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPO_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRL_PACKAGES = ["trl==1.12.0", "transformers==5.24.0", "accelerate==1.15.0", "datasets==5.2.0"]
# TRL's worker runs without gradient checkpointing, one micro-batch per mini-batch: so do we here
TINY_PPO = {"rollout_batch_size": 8, "mini_batch_size": 8, "ppo_epochs": 1, "max_new_tokens": 16,
            "actor_lr": 1e-5, "critic_lr": 1e-5, "init_kl_coef": 0.05, "temperature": 1.0,
            "gradient_checkpointing": False}


def trl_python() -> Path:
    """TRL 1.12 in its own venv ($MPO_TRL112_VENV, default .bench/trl112), created on first use."""
    venv = Path(os.environ.get("MPO_TRL112_VENV", ROOT / ".bench" / "trl112"))
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating the throw-away TRL 1.12 venv in {venv} ...", flush=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)  # the local CPU build; never a CUDA download
        subprocess.run(pip + TRL_PACKAGES + ["torch==2.13.0"], check=True)
    return python


def config(run_dir: Path, params: str, ppo: dict, extra: dict | None = None):
    from mpo_lib import Run, load_config

    overrides = {"ppo": {**ppo, "variants": {"bench": {"init": "sft", "reference": "sft", "prompts": "all"}},
                         "max_steps": ppo.get("max_steps", 1)}, **(extra or {})}
    return Run(load_config(ROOT / params, overrides), run_dir)


def build_stages(run) -> None:
    """base -> sft -> rm -> resample: what a vanilla-PPO variant (init = ref = SFT, all prompts) needs."""
    from mpo_lib.method.data import corpus, load_preferences, sft_rows
    from mpo_lib.method.resample import run_resample
    from mpo_lib.method.reward import run_reward
    from mpo_lib.method.sft import run_sft
    from mpo_lib.runtime.models import prepare_base

    splits = load_preferences(run.cfg)
    prepare_base(run, corpus(run.cfg, splits))
    run_sft(run, sft_rows(run.cfg, splits))
    run_reward(run, splits.train, splits.heldout)
    run_resample(run, splits.train)


def worker(args) -> None:
    """One trainer in this process; prints step seconds and this process's peak RSS."""
    import torch

    from mpo_lib.method.ppo import train_ppo
    from mpo_lib.method.roles import build_roles

    torch.set_num_threads(os.cpu_count() or 1)
    spec = json.loads(args.worker_spec)
    run = config(Path(spec["run_dir"]), spec["params"], spec["ppo"], spec.get("overrides"))
    variant = run.cfg.ppo.variants["bench"]
    roles = build_roles(run, variant, shared=spec.get("shared"))
    with tempfile.TemporaryDirectory() as out_dir:
        train_ppo(run, "bench", variant, Path(out_dir), roles)
        steps = json.loads((Path(out_dir) / "steps.json").read_text())
    # VmHWM, not getrusage's ru_maxrss: that one keeps the parent's peak across fork + exec
    with open("/proc/self/status") as status:
        peak_kb = int(next(line for line in status if line.startswith("VmHWM")).split()[1])
    print(json.dumps({"step_seconds": [s["step_seconds"] for s in steps], "peak_rss_mb": peak_kb / 1024}))


def run_worker(command: list[str]) -> dict:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ours(spec: dict) -> dict:
    return run_worker([sys.executable, __file__, "--worker-spec", json.dumps(spec)])


def compare_with_trl(steps: int, workdir: Path) -> tuple[float, float]:
    from mpo_lib.method.data import truncate_prompt
    from mpo_lib.method.ppo import ppo_prompts
    from mpo_lib.runtime.models import load_tokenizer

    # TRL stops only at EOS: no stop string on our side either, so both generate the same way
    same_stop = {"resample": {"stop": ""}}
    run = config(workdir / "tiny", "params/smoke.yaml", {**TINY_PPO, "max_steps": steps}, same_stop)
    build_stages(run)
    for stage in ("sft", "rm"):
        assert json.loads((run.stage_dir(stage) / "model.json").read_text())["kind"] == "full"
    tokenizer = load_tokenizer(run)
    prompts = [truncate_prompt(tokenizer, p, run.cfg.data.max_prompt_tokens)
               for p in ppo_prompts(run, run.cfg.ppo.variants["bench"])]
    spec = {"seed": 0, "threads": os.cpu_count() or 1, "steps": steps, "output_dir": str(workdir / "trl_out"),
            "policy": str(run.stage_dir("sft") / "model"), "reference": str(run.stage_dir("sft") / "model"),
            "reward": str(run.stage_dir("rm") / "model"),
            "prompt_ids": [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts],
            "cliprange": 0.2, "cliprange_value": 0.2, "kl_coef": TINY_PPO["init_kl_coef"], **TINY_PPO}
    spec_path = workdir / "trl_spec.json"
    spec_path.write_text(json.dumps(spec))
    trl = run_worker([str(trl_python()), str(ROOT / "benchmarks" / "trl_ppo_worker.py"), str(spec_path)])
    mine = ours({"run_dir": str(run.path), "params": "params/smoke.yaml", "ppo": {**TINY_PPO, "max_steps": steps},
                 "overrides": same_stop})
    median = lambda seconds: statistics.median(seconds[1:] or seconds)
    for name, result in (("kit PPO", mine), ("TRL 1.12 PPOTrainer", trl)):
        print(f"{name}: {median(result['step_seconds']) * 1000:.0f} ms/step (median of steps 2-{steps}), "
              f"peak RSS {result['peak_rss_mb']:.0f} MB")
    return median(mine["step_seconds"]) / median(trl["step_seconds"]), mine["peak_rss_mb"] / trl["peak_rss_mb"]


def compare_layouts(run_dir: Path | None, workdir: Path) -> float:
    # micro-batches of 2 (Table 8's per-device PPO batch for HH) and gradient checkpointing
    smollm_ppo = {"rollout_batch_size": 8, "mini_batch_size": 8, "micro_batch_size": 2, "max_new_tokens": 64,
                  "actor_lr": 1e-4, "critic_lr": 1e-4, "max_steps": 1, "gradient_checkpointing": True}
    if run_dir and all((run_dir / s / "COMPLETE").exists() for s in ("sft", "rm")):
        # a copy: resampling again, if that stage is out of date, must not supersede the run's own
        for name in ("run.json", "base", "data", "sft", "rm", "resample"):
            source, target = run_dir / name, workdir / "smollm" / name
            if source.is_dir():
                shutil.copytree(source, target)
            elif source.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target)
        run_dir = workdir / "smollm"
        build_stages(config(run_dir, "params/cpu_small.yaml", smollm_ppo))
    else:  # short stages: only memory is measured here
        run_dir = workdir / "smollm"
        build_stages(config(run_dir, "params/cpu_small.yaml", smollm_ppo, {
            "run_name": "cpu_small", "sft": {"max_steps": 2}, "rm": {"max_steps": 2, "eval_rows": 16},
            "resample": {"num_prompts": 16, "max_new_tokens": 16}}))
    spec = {"run_dir": str(run_dir), "params": "params/cpu_small.yaml", "ppo": smollm_ppo}
    one, four = ours({**spec, "shared": True}), ours({**spec, "shared": False})
    print(f"SmolLM2-135M LoRA, one PPO step of 8 prompts x 64 tokens: one backbone {one['peak_rss_mb']:.0f} MB "
          f"({one['step_seconds'][0]:.1f} s), four models {four['peak_rss_mb']:.0f} MB ({four['step_seconds'][0]:.1f} s)")
    return one["peak_rss_mb"] / four["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--smollm-run-dir", type=Path, default=ROOT / "runs" / "cpu_small")
    parser.add_argument("--worker-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_spec:
        return worker(args)
    with tempfile.TemporaryDirectory() as workdir:
        step_ratio, rss_ratio = compare_with_trl(args.steps, Path(workdir))
        layout_ratio = compare_layouts(args.smollm_run_dir, Path(workdir))
    print(f"step_time_ratio={step_ratio:.2f} peak_rss_ratio={rss_ratio:.2f}")
    print(f"two_backbone_vs_four_models_peak_rss={layout_ratio:.2f}")


if __name__ == "__main__":
    main()
