"""The dry-run planner against the paper's Table 8 and A.1, and the combinations it must refuse."""
import math
import subprocess
import sys

import pytest

from mpo_lib import ConfigError, load_config
from mpo_lib.runtime.dryrun import architecture, dry_run, protocol

from conftest import ROOT

# Table 8 of the paper, transcribed as printed: (stage, parameter) -> (HH-RLHF, TL;DR)
TABLE8 = {
    ("sft", "learning_rate"): (5e-5, 5e-5), ("sft", "per_device_train_batch_size"): (16, 16),
    ("sft", "num_warmup_steps"): (500, 500),
    ("rm", "learning_rate"): (5e-6, 5e-6), ("rm", "per_device_train_batch_size"): (8, 8),
    ("rm", "weight_decay"): (0.1, 0.1), ("rm", "num_warmup_steps"): (500, 500),
    ("dpo", "learning_rate"): (5e-6, 5e-6), ("dpo", "per_device_train_batch_size"): (2, 4),
    ("dpo", "weight_decay"): (0.1, 0.1), ("dpo", "beta"): (0.1, 0.1), ("dpo", "gradient_accumulation_steps"): (8, 8),
    ("dpo", "num_warmup_steps"): (100, 100),
    ("ppo", "per_device_train_batch_size"): (2, 8), ("ppo", "gradient_accumulation_steps"): (4, 8),
    ("ppo", "actor_lr"): (3e-6, 1e-6), ("ppo", "critic_lr"): (5e-6, 3e-6), ("ppo", "actor_weight_decay"): (0.1, 0.1),
    ("ppo", "critic_weight_decay"): (0.1, 0.1), ("ppo", "num_warmup_steps"): (100, 100),
    ("ppo", "init_kl_coef"): (0.4, 0.1),
}
COLUMN = {"hh": 0, "tldr": 1}


def table8(dataset: str, stage: str) -> dict:
    return {name: values[COLUMN[dataset]] for (section, name), values in TABLE8.items() if section == stage}


GPUS = 8
ANSWER = {"hh": 512, "tldr": 128}  # A.1; the context is 512 for both


def plan(params: str, overrides=None) -> dict:
    return {row["stage"]: row for row in dry_run(load_config(ROOT / params, overrides), params)}


@pytest.mark.parametrize("dataset", ["hh", "tldr"])
def test_full_profiles_reproduce_table8_and_a1(dataset):
    rows = plan(f"params/{dataset}_full.yaml")
    for stage in ("sft", "rm", "dpo", "ppo"):
        paper = table8(dataset, stage)
        row = rows["mpo" if stage == "ppo" else stage]
        assert row["world_size"] == GPUS
        assert row["hyper"] == pytest.approx(paper), stage
        # the effective batch is what the paper's 8 GPUs see
        expected = paper["per_device_train_batch_size"] * paper.get("gradient_accumulation_steps", 1) * GPUS
        assert row["global_batch"] == expected, stage
        assert "--num_processes 8" in row["launch"] and "--use_deepspeed" in row["launch"]
    assert rows["sft"]["sequence_length"] == 512 + ANSWER[dataset] + 1  # context + answer + EOS
    assert rows["mpo"]["sequence_length"] == 512 + ANSWER[dataset]


def test_optimizer_steps_follow_table1_rows_and_the_global_batch():
    rows = plan("params/hh_full.yaml")
    train = 43774 + 42537  # Table 1, HH-RLHF helpful-base + harmless-base
    assert rows["sft"]["rows"] == train
    assert rows["sft"]["optimizer_steps"] == math.ceil(train / (16 * GPUS))
    assert rows["rm"]["optimizer_steps"] == math.ceil((train - math.ceil(train * 0.05)) / (8 * GPUS))  # 5% held out
    # DPO on D^e, estimated at the paper's 20K easy of 80K before the split has run
    assert rows["dpo"]["rows"] == round(train / 4)
    # transformers counts a last, partial accumulation as a step
    assert rows["dpo"]["optimizer_steps"] == math.ceil(math.ceil(round(train / 4) / (2 * GPUS)) / 8) == 169
    # PPO: one pass over each variant's own prompts, one optimizer step per rollout of 64: MPO's PPO over
    # D^h (3/4 at gamma 2, 1/2 at gamma 1), vanilla PPO over every prompt
    hard = train - round(train / 4)
    assert rows["mpo"]["optimizer_steps"] == math.ceil(hard / 64) == 1012
    assert rows["mpo_gamma1"]["optimizer_steps"] == math.ceil((train - round(train / 2)) / 64) == 675
    assert rows["ppo_full"]["optimizer_steps"] == math.ceil(train / 64) == 1349


@pytest.mark.parametrize(("profile", "rows"), [("hh_full", 23), ("tldr_full", 8)])
def test_every_row_of_the_paper_has_a_producer_in_the_full_profiles(profile, rows):
    """Tables 2-6, Fig. 2 and Fig. 4 (HH-RLHF); Tables 2-4 (TL;DR)."""
    produced = protocol(load_config(ROOT / "params" / f"{profile}.yaml"))
    assert len(produced) == rows
    assert [row for row, producer in produced if producer is None] == []
    assert dict(produced)["Table 3: MPO (γ=1)"] == "eval_mpo_gamma1"


def test_the_protocol_check_names_the_rows_a_profile_does_not_produce():
    cfg = load_config(ROOT / "params" / "hh_full.yaml", {"split": {"gammas": []}, "ablations": ["dpo_full"],
                                                         "eval": {"judges": ["rm_margin"]}})
    missing = {row for row, producer in protocol(cfg) if producer is None}
    assert {"Table 3: MPO (γ=1)", "Table 3 (text): DPO-base", "Table 4: GPT-4 judge, MPO (γ=2) vs PPO",
            "Fig. 4: PPO on D^h (γ=2)", "Table 6: MPO-reverse"} <= missing
    assert "Table 3: MPO (γ=2)" not in missing


def test_memory_estimate_partitions_model_states_by_zero_stage():
    zero2 = plan("params/hh_full.yaml", {"launch": {"deepspeed_config": "params/deepspeed/zero2.json"}})["sft"]["memory_gb"]
    zero3 = plan("params/hh_full.yaml", {"launch": {"deepspeed_config": "params/deepspeed/zero3.json"}})["sft"]["memory_gb"]
    params = architecture(load_config(ROOT / "params/hh_full.yaml")).params
    assert params == pytest.approx(6.74e9, rel=0.01)  # LLaMA-2-7B
    assert zero2["weights"] == pytest.approx(2 * params / 2**30, abs=0.01)  # bf16, replicated under ZeRO-2
    assert zero2["optimizer"] == pytest.approx(12 * params / GPUS / 2**30, abs=0.01)  # fp32 master + Adam, sharded
    assert zero2["gradients"] == pytest.approx(4 * params / GPUS / 2**30, abs=0.01)  # accumulated in fp32, sharded
    assert zero3["weights"] == pytest.approx(zero2["weights"] / GPUS, abs=0.01)
    assert zero3["total"] < zero2["total"] < 80  # fits an A100-80GB


def test_qlora_profile_trains_only_the_adapters_on_a_4bit_base():
    cfg = load_config(ROOT / "params/hh_qlora.yaml")
    arch = architecture(cfg)
    assert arch.lora_params == 159_907_840  # r=64 on every linear layer of LLaMA-2-7B (QLoRA's figure)
    sft = plan("params/hh_qlora.yaml")["sft"]
    assert sft["world_size"] == 1 and sft["launch"].startswith("in-process")
    bf16_weights = 2 * arch.params / 2**30
    assert 0.25 * bf16_weights < sft["memory_gb"]["weights"] < 0.4 * bf16_weights  # NF4, fp32 embeddings and adapters
    assert sft["memory_gb"]["total"] < 24
    assert sft["global_batch"] == 128  # Table 8's 16 x 8 GPUs, by accumulation


@pytest.mark.parametrize("dataset", ["hh", "tldr"])
def test_every_stage_of_the_full_profiles_fits_an_80gb_gpu(dataset):
    rows = plan(f"params/{dataset}_full.yaml")
    assert {stage: row["memory_gb"]["total"] < 80 for stage, row in rows.items()} == dict.fromkeys(rows, True)
    # PPO's actor and critic are DeepSpeed engines under the profile's ZeRO-3, the frozen models partitioned too
    assert rows["mpo"]["zero_stage"] == 3
    assert rows["mpo"]["memory_gb"]["weights"] == pytest.approx(4 * 2 * architecture(
        load_config(ROOT / f"params/{dataset}_full.yaml")).params / GPUS / 2**30, abs=0.01)


@pytest.mark.parametrize("overrides, message", [
    ({"ppo": {"mini_batch_size": 8}}, "ppo.mini_batch_size=8 (global) is not a multiple"),
    ({"ppo": {"rollout_batch_size": 60, "mini_batch_size": 60, "micro_batch_size": 1}},
     "ppo.rollout_batch_size=60 (global) does not divide over launch.num_processes=8"),
    ({"launch": {"num_processes": 1, "deepspeed_config": "params/deepspeed/zero3.json"}}, "cannot run in-process"),
    ({"model": {"quantization": "4bit"}}, "a 4-bit base cannot be fine-tuned in full"),
    ({"model": {"lora": {"r": 8}}}, "model.lora with launch.deepspeed_config params/deepspeed/zero3.json (ZeRO-3)"),
])
def test_impossible_combinations_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(ROOT / "params/hh_full.yaml", overrides)


def test_a_sequence_longer_than_the_models_context_is_refused():
    cfg = load_config(ROOT / "params/hh_full.yaml", {"model": {"max_position": None}, "dpo": {"max_length": 5000}})
    with pytest.raises(ConfigError, match=r"dpo.max_length=5000 exceeds the context of meta-llama/Llama-2-7b-hf "
                                          r"\(4096"):
        dry_run(cfg, "hh_full")


def test_dry_run_command_prints_every_stage_and_trains_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mpo_lib", "pipeline", "--params", "params/tldr_full.yaml",
                             "--dry-run", "--run-dir", str(tmp_path / "tldr")], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    for stage in ("sft", "rm", "resample", "dpo", "mpo", "ppo_full", "eval"):
        assert f"\n{stage}: " in result.stdout
    assert "accelerate.commands.launch --config_file params/accelerate/zero3.yaml --num_processes 8 --use_deepspeed" \
           in result.stdout
    assert not (tmp_path / "tldr").exists()


def test_generation_is_sharded_over_the_workers_or_handed_to_vllm():
    sharded = plan("params/hh_full.yaml")
    assert sharded["eval"]["world_size"] == 8 and "stage 'eval_<policy>'" in sharded["eval"]["launch"]
    assert sharded["eval"]["global_batch"] == 8 * sharded["eval"]["per_device_batch"]
    vllm = plan("params/hh_full.yaml", {"launch": {"generation_backend": "vllm"}})
    for stage in ("resample", "eval"):
        assert vllm[stage]["world_size"] == 1 and vllm[stage]["launch"].startswith("in-process through vLLM")
    assert vllm["dpo"]["world_size"] == 8  # training still launches its workers
