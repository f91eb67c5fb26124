"""The launcher: a stage trained by two launched CPU workers (gloo; DeepSpeed ZeRO-2 or ZeRO-3 where
asked) matches the same stage in one process with the same global batch, and a failing worker fails the
caller with its message."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import psutil
import pytest
import yaml
from safetensors.torch import load_file

from mpo_lib import Run, load_config
from mpo_lib.method.resample import load_pairs
from mpo_lib.runtime.artifacts import read_json
from mpo_lib.runtime.launch import LaunchError, run_stage

from conftest import LORA, ROOT, SMOKE


def two_workers(deepspeed_config: str | None = None) -> dict:
    # smoke's PPO mini-batch of 2 sequences splits over two workers one per worker
    return {"launch": {"num_processes": 2, "deepspeed_config": deepspeed_config}, "ppo": {"micro_batch_size": 1}}


TWO_WORKERS = two_workers()


def copy_of(run: Run, folder, overrides: dict) -> Run:
    """The finished smoke stages in a folder of their own, with other params for the stage under test."""
    shutil.copytree(run.path, folder / "smoke")
    return Run(load_config(SMOKE, overrides), folder / "smoke")


def zero3_partitioning_everything(folder) -> str:
    """params/deepspeed/zero3.json, but partitioning every weight: under its default threshold (10^5
    elements) ZeRO-3 would keep all of the tiny model's weights whole on every worker."""
    config = json.loads((ROOT / "params" / "deepspeed" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = folder / "zero3_all.json"
    path.write_text(json.dumps(config))
    return str(path)


def loss_curve(run: Run, stage: str) -> list[float]:
    return [entry["loss"] for entry in read_json(run.stage_dir(stage) / "log_history.json") if "loss" in entry]


@pytest.mark.parametrize("deepspeed_config", [None, "params/deepspeed/zero2.json"], ids=["ddp", "zero2"])
def test_dpo_on_two_workers_matches_one_process_with_the_same_global_batch(smoke_run, tmp_path, deepspeed_config):
    # DPO on 16 of the 32 resampled pairs (dpo_full: the count does not depend on the split): 4 optimizer
    # steps of 4 pairs, either 4 in one process or 2 in each of two workers
    one = copy_of(smoke_run, tmp_path / "one", {"dpo": {"batch_size": 4, "max_rows": 16}})
    two = copy_of(smoke_run, tmp_path / "two", {"dpo": {"batch_size": 2, "max_rows": 16},
                                                **two_workers(deepspeed_config)})
    assert [run_stage(run, "dpo_full")["workers"] for run in (one, two)] == [1, 2]
    curves = [loss_curve(run, "dpo_full") for run in (one, two)]
    assert len(curves[0]) == len(curves[1]) == 4
    assert curves[1] == pytest.approx(curves[0], abs=1e-5)  # float summation order only
    assert (two.path / "launch" / "dpo_full.yaml").exists()  # what the workers were given


ENGINE_DTYPES = """
import os, sys, torch, deepspeed
from transformers import LlamaConfig, LlamaForCausalLM
from mpo_lib import load_config
from mpo_lib.runtime.zero import engine_config
cfg = load_config(sys.argv[1], {"model": {"bf16": True}, "ppo": {"micro_batch_size": 1},
                                "launch": {"num_processes": 2, "deepspeed_config": sys.argv[2]}})
model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2))
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()),
                                  config=engine_config(cfg, trained=True))
buffer = getattr(engine.optimizer, "grad_partitions_flat_buffer", None)  # ZeRO-3's gradient partitions
print(next(engine.module.parameters()).dtype, engine.optimizer.gradient_accumulation_dtype,
      buffer is None or buffer.dtype)
"""


@pytest.mark.slow  # a DeepSpeed process of its own: 10-40 s (its first import builds caches)
@pytest.mark.parametrize("deepspeed_config", ["params/deepspeed/zero2.json", "params/deepspeed/zero3.json"])
def test_the_deepspeed_configs_accumulate_bf16_gradients_in_fp32(deepspeed_config):
    # one DeepSpeed process of its own (DeepSpeed sets up torch.distributed, which this process must not hold)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1"}
    result = subprocess.run([sys.executable, "-c", ENGINE_DTYPES, str(SMOKE), deepspeed_config], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=True)
    weights, accumulation, buffer = result.stdout.split()[-3:]
    assert (weights, accumulation) == ("torch.bfloat16", "torch.float32")
    assert buffer in ("True", "torch.float32")


def test_lora_dpo_under_zero2_matches_one_process(lora_run, tmp_path):
    # LoRA adapters over a frozen base, their gradients and moments partitioned over two workers
    one = copy_of(lora_run, tmp_path / "one", {**LORA, "dpo": {"batch_size": 4, "max_rows": 16}})
    two = copy_of(lora_run, tmp_path / "two", {**LORA, "dpo": {"batch_size": 2, "max_rows": 16},
                                               **two_workers("params/deepspeed/zero2.json")})
    for run in (one, two):
        run_stage(run, "dpo_full")
    assert loss_curve(two, "dpo_full") == pytest.approx(loss_curve(one, "dpo_full"), abs=1e-5)
    adapters = [load_file(run.stage_dir("dpo_full") / "adapter" / "adapter_model.safetensors") for run in (one, two)]
    assert adapters[1].keys() == adapters[0].keys()
    assert max((adapters[0][k] - adapters[1][k]).abs().max().item() for k in adapters[0]) < 1e-5


@pytest.mark.parametrize("deepspeed_config", ["params/deepspeed/zero2.json", "zero3"])
def test_bf16_dpo_under_zero_follows_the_one_process_bf16_loss_curve(smoke_run, tmp_path, deepspeed_config):
    # the full profiles' precision: DeepSpeed holds bf16 weights and, as its JSONs ask, accumulates the
    # two micro-batches' gradients in fp32; one process trains fp32 weights under bf16 autocast
    deepspeed_config = zero3_partitioning_everything(tmp_path) if deepspeed_config == "zero3" else deepspeed_config
    bf16 = {"model": {"bf16": True, "emulated_bf16": True}}
    one = copy_of(smoke_run, tmp_path / "one", {**bf16, "dpo": {"batch_size": 4, "max_rows": 16}})
    two = copy_of(smoke_run, tmp_path / "two", {**bf16, "dpo": {"batch_size": 1, "grad_accum": 2, "max_rows": 16},
                                                **two_workers(deepspeed_config)})
    for run in (one, two):
        run_stage(run, "dpo_full")
    curves = [loss_curve(run, "dpo_full") for run in (one, two)]
    assert len(curves[1]) == 4
    assert curves[1] == pytest.approx(curves[0], abs=2e-3)  # bf16 rounding of weights and activations


def test_sft_under_zero3_saves_the_whole_weights_the_one_process_run_trains(smoke_run, tmp_path):
    # each worker holds a shard of every weight: the stage's model is gathered from both, not rank 0's shard
    one = copy_of(smoke_run, tmp_path / "one", {"sft": {"batch_size": 8, "max_steps": 4}})
    two = copy_of(smoke_run, tmp_path / "two", {"sft": {"batch_size": 4, "max_steps": 4},
                                                **two_workers(zero3_partitioning_everything(tmp_path))})
    assert [run_stage(run, "sft")["workers"] for run in (one, two)] == [1, 2]
    assert loss_curve(two, "sft") == pytest.approx(loss_curve(one, "sft"), abs=1e-5)
    weights = [load_file(run.stage_dir("sft") / "model" / "model.safetensors") for run in (one, two)]
    assert {k: v.shape for k, v in weights[1].items()} == {k: v.shape for k, v in weights[0].items()}
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]) < 1e-5


def test_the_reward_model_under_zero3_reports_the_accuracy_of_the_model_it_saves(smoke_run, tmp_path):
    from mpo_lib.method.data import load_preferences, truncate_prompt
    from mpo_lib.method.reward import rm_rows, score
    from mpo_lib.runtime.models import load_stage_model, load_tokenizer

    run = copy_of(smoke_run, tmp_path, {"rm": {"batch_size": 4, "max_steps": 6},
                                        **two_workers(zero3_partitioning_everything(tmp_path))})
    run_stage(run, "rm")  # the held-out pairs scored by both workers together, through ZeRO-3's gathering
    cfg, tokenizer = run.cfg, load_tokenizer(run)
    rows = rm_rows(cfg, load_preferences(cfg).heldout)[: cfg.rm.eval_rows]
    prompts = [truncate_prompt(tokenizer, r["prompt"], cfg.data.max_prompt_tokens) for r in rows]
    saved = score(load_stage_model(run, "rm", head="score"), tokenizer, prompts, [r["chosen"] for r in rows],
                  cfg.resample.score_batch_size, cfg.rm.max_length, cfg.model.bf16)
    assert saved == pytest.approx(read_json(run.stage_dir("rm") / "heldout_scores.json")["chosen"], abs=1e-5)


# greedy rollouts: both layouts generate the same responses, so the updates can be compared
GREEDY_PPO = {"rollout_batch_size": 4, "mini_batch_size": 4, "micro_batch_size": 1, "ppo_epochs": 1,
              "greedy_rollouts": True}
PPO_STEP_KEYS = ("reward_mean", "kl_to_reference", "response_length", "policy_loss", "value_loss")


def ppo_steps(run: Run) -> list[dict]:
    return read_json(run.stage_dir("ppo_full") / "steps.json")


def assert_same_ppo(run: Run, reference: Run) -> None:
    """The same per-step statistics and final weights as the reference run."""
    for mine, theirs in zip(ppo_steps(run), ppo_steps(reference), strict=True):
        for key in PPO_STEP_KEYS:
            # float summation order only; over 12 steps a KL near 0 differs by up to 2e-6
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), (mine["step"], key)
    weights = [load_file(r.stage_dir("ppo_full") / "model" / "model.safetensors") for r in (run, reference)]
    assert {k: v.shape for k, v in weights[0].items()} == {k: v.shape for k, v in weights[1].items()}
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]) < 1e-5


@pytest.mark.parametrize("deepspeed_config", [None, "params/deepspeed/zero2.json"], ids=["ddp", "zero2"])
def test_ppo_on_two_workers_matches_one_process(smoke_run, tmp_path, deepspeed_config):
    # two steps, each one mini-batch of 4 sequences: 4 micro-batches of 1 in one process, 2 per worker in two
    ppo = {**GREEDY_PPO, "max_steps": 2}
    one = copy_of(smoke_run, tmp_path / "one", {"ppo": ppo})
    two = copy_of(smoke_run, tmp_path / "two", {"ppo": ppo, "launch": {"num_processes": 2,
                                                                       "deepspeed_config": deepspeed_config}})
    assert [run_stage(run, "ppo_full")["workers"] for run in (one, two)] == [1, 2]
    assert_same_ppo(two, one)


def test_bf16_ppo_under_zero3_follows_the_same_run_under_zero2(smoke_run, tmp_path):
    # bf16 engines both (ZeRO-2 is held to one fp32 process above): every weight partitioned, and generating
    # from the gathered bf16 policy, gives ZeRO-2's rollouts and updates. Against one process the rollouts
    # can differ: its fp32 norms and embeddings under autocast break near-ties otherwise than bf16 weights.
    ppo, bf16 = {**GREEDY_PPO, "max_steps": 2}, {"model": {"bf16": True, "emulated_bf16": True}}
    runs = [copy_of(smoke_run, tmp_path / name, {**bf16, "ppo": ppo, "launch": {
        "num_processes": 2, "deepspeed_config": config}})
        for name, config in (("zero2", "params/deepspeed/zero2.json"),
                             ("zero3", zero3_partitioning_everything(tmp_path)))]
    assert [run_stage(run, "ppo_full")["workers"] for run in runs] == [2, 2]
    for mine, theirs in zip(ppo_steps(runs[1]), ppo_steps(runs[0]), strict=True):
        for key in PPO_STEP_KEYS:  # bf16 summation order: the ZeRO-3 gathers add in another order
            assert mine[key] == pytest.approx(theirs[key], rel=1e-2, abs=1e-3), (mine["step"], key)
    weights = [load_file(r.stage_dir("ppo_full") / "model" / "model.safetensors") for r in runs]
    assert {k: v.shape for k, v in weights[1].items()} == {k: v.shape for k, v in weights[0].items()}


def test_ppo_under_zero3_killed_after_a_checkpoint_resumes_as_the_one_process_run(smoke_run, tmp_path):
    """Every weight partitioned over two workers: killed once a checkpoint is written, the next attempt
    loads each worker's partitions of weights and optimizer states and ends as one process does."""
    ppo = {**GREEDY_PPO, "max_steps": 12, "checkpoint_every": 1}  # a tiny model's step: a tenth of a second
    one = copy_of(smoke_run, tmp_path / "one", {"ppo": ppo})
    run_stage(one, "ppo_full")
    two = copy_of(smoke_run, tmp_path / "two", {"ppo": ppo, "launch": {
        "num_processes": 2, "deepspeed_config": zero3_partitioning_everything(tmp_path)}})
    state = two.path / "ppo_full.partial" / "checkpoint" / "state.pt"
    params = tmp_path / "two.yaml"
    params.write_text(yaml.safe_dump(two.cfg.source_params))
    command = [sys.executable, "-c", "import sys; from mpo_lib import Run, load_config; from mpo_lib.runtime.launch import "
               "run_stage; run_stage(Run(load_config(sys.argv[1]), sys.argv[2]), 'ppo_full')", str(params), str(two.path)]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as launcher:
        deadline = time.time() + 300
        while not state.exists() and launcher.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        # the workers run in sessions of their own (torch elastic): killed one by one, with the launcher
        for process in [*psutil.Process(launcher.pid).children(recursive=True), psutil.Process(launcher.pid)]:
            process.kill()
    assert state.exists()  # (the ppo_full beside it is the smoke run's, of other params)
    metrics = run_stage(two, "ppo_full")
    assert 1 <= metrics["resumed_at_step"] < 12 and metrics["workers"] == 2
    assert_same_ppo(two, one)
    assert not (two.path / "ppo_full.partial").exists()


def test_a_failing_worker_fails_the_caller_with_its_message(smoke_run, tmp_path):
    run = copy_of(smoke_run, tmp_path, TWO_WORKERS)
    with pytest.raises(LaunchError, match=r"stage no_such_stage: a launched worker failed \(exit \d+\): "
                                          r"ValueError: no stage 'no_such_stage' in these params"):
        run_stage(run, "no_such_stage")


def test_resampling_on_two_workers_covers_every_prompt_once_in_order(smoke_run, tmp_path):
    run = copy_of(smoke_run, tmp_path, {"resample": {"num_prompts": 8}, **TWO_WORKERS})
    metrics = run_stage(run, "resample")
    pairs = load_pairs(run)
    # the same prompts, in the same order, as the one-process run's first 8 (resample_prompts is seeded)
    assert [p["prompt"] for p in pairs] == [p["prompt"] for p in load_pairs(smoke_run)[:8]]
    assert metrics["workers"] == 2 and metrics["prompts"] == 8  # prompts r, r + 2, ... from worker r
    assert all(isinstance(p["response_1"], str) and isinstance(p["reward_2"], float) for p in pairs)


def test_evaluation_on_two_workers_gives_the_one_process_answers_and_rewards(smoke_run, tmp_path):
    from mpo_lib.reporting.evaluation import responses

    run = copy_of(smoke_run, tmp_path, TWO_WORKERS)  # greedy answers (eval.temperature 0): sharding changes nothing
    metrics = run_stage(run, "eval_sft")
    assert metrics["workers"] == 2 and metrics["prompts"] == smoke_run.metrics("eval_sft")["prompts"]
    mine, reference = responses(run, "sft"), responses(smoke_run, "sft")
    assert [r["response"] for r in mine] == [r["response"] for r in reference]
    assert [r["reward"] for r in mine] == pytest.approx([r["reward"] for r in reference], abs=1e-4)
    assert metrics["reward_mean"] == pytest.approx(smoke_run.metrics("eval_sft")["reward_mean"], abs=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_the_vllm_backend_without_vllm_says_so_before_anything_runs(smoke_run, tmp_path):
    from mpo_lib import ConfigError

    run = copy_of(smoke_run, tmp_path, {"launch": {"generation_backend": "vllm"}, "resample": {"num_prompts": 4}})
    before = {path: path.read_bytes() for path in run.path.rglob("*") if path.is_file()}
    for stage in ("resample", "eval_sft"):
        with pytest.raises(ConfigError, match=r"launch.generation_backend is 'vllm', but vLLM is not installed: "
                                              r"pip install vllm"):
            run_stage(run, stage)
    assert {path: path.read_bytes() for path in run.path.rglob("*") if path.is_file()} == before
