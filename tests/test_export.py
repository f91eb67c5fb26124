"""`python -m mpo_lib export`: a finished stage loads in a fresh process with plain transformers and gives the
run's logits; a split loads as a `datasets` preference dataset that TRL's DPOTrainer trains on unchanged."""
import json
import os
import subprocess
import sys

import pytest
import torch

from mpo_lib.method.resample import load_split
from mpo_lib.runtime.models import load_stage_model, load_tokenizer

from conftest import ROOT

# a fresh interpreter, no mpo_lib: the exported folder's logits on one text, saved for the test to compare
PLAIN_LOAD = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
folder, head, text, out = sys.argv[1:]
auto = AutoModelForCausalLM if head == "lm" else AutoModelForSequenceClassification
model, tokenizer = auto.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
assert "mpo_lib" not in sys.modules
with torch.no_grad():
    torch.save(model(**tokenizer(text, return_tensors="pt")).logits, out)
"""
TEXT = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast."


def export(run, stage: str, to) -> str:
    result = subprocess.run([sys.executable, "-m", "mpo_lib", "export", "--run-dir", str(run.path), "--stage", stage,
                             "--to", str(to)], cwd=ROOT, capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stderr
    return result.stdout


def logits_in_a_fresh_process(folder, head: str, tmp_path) -> torch.Tensor:
    out = tmp_path / f"{head}_logits.pt"
    subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(folder), head, TEXT, str(out)], check=True, env=os.environ)
    return torch.load(out)


def run_logits(run, stage: str, head: str) -> torch.Tensor:
    model, tokenizer = load_stage_model(run, stage, head).eval(), load_tokenizer(run)
    with torch.no_grad():
        return model(**tokenizer(TEXT, return_tensors="pt")).logits


@pytest.mark.parametrize("stage, head", [("mpo", "lm"), ("rm", "score")])
def test_an_exported_full_model_gives_the_runs_logits(smoke_run, tmp_path, stage, head):
    export(smoke_run, stage, tmp_path / stage)
    assert torch.allclose(logits_in_a_fresh_process(tmp_path / stage, head, tmp_path),
                          run_logits(smoke_run, stage, head), atol=1e-5)
    card = (tmp_path / stage / "README.md").read_text()
    assert smoke_run.metrics(stage) and json.loads((smoke_run.path / stage / "config.json").read_text())["hash"] in card
    if stage == "mpo":  # the chain MPO was trained through, and its Table 3 row
        assert "1. `base`" in card and "3. `dpo`: DPO (Eq. 2) on the easy pairs of `split`" in card
        assert "4. `mpo`: PPO (Eq. 3) on the hard prompts" in card and "## Evaluation (Table 3 row)" in card


@pytest.mark.parametrize("stage, head", [("dpo", "lm"), ("rm", "score")])
def test_an_exported_lora_chain_is_merged_and_gives_the_runs_logits(lora_run, tmp_path, stage, head):
    adapter = json.loads((lora_run.path / stage / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "tiny"  # the model the params name, never a path in the run
    print(export(lora_run, stage, tmp_path / stage))
    assert not (tmp_path / stage / "adapter_config.json").exists()  # whole weights: sft's and dpo's adapters merged
    assert torch.allclose(logits_in_a_fresh_process(tmp_path / stage, head, tmp_path),
                          run_logits(lora_run, stage, head), atol=1e-5)


def test_an_exported_split_is_a_preference_dataset_dpo_trains_on(smoke_run, tmp_path):
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    export(smoke_run, "split", tmp_path / "split")
    export(smoke_run, "sft", tmp_path / "sft")
    data = load_from_disk(str(tmp_path / "split"))
    easy = data["easy"].to_list()
    assert [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in easy] == load_split(smoke_run, "easy")
    assert len(data["hard"]) == smoke_run.metrics("split")["hard"]
    gap = smoke_run.metrics("split")["gamma"]
    assert all(row["reward_chosen"] - row["reward_rejected"] > gap for row in easy)
    assert all(row["reward_chosen"] - row["reward_rejected"] <= gap for row in data["hard"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    args = DPOConfig(str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=2, use_cpu=True,
                     report_to="none", max_length=160)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data["easy"], processing_class=load_tokenizer(smoke_run))
    assert trainer.train().global_step == 2


def test_exporting_a_stage_without_a_model_names_the_problem(smoke_run, tmp_path):
    for stage, messages in [("mpoo", ["--stage 'mpoo': no finished stage of that name", "did you mean 'mpo'?"]),
                            ("eval_mpo", ["--stage 'eval_mpo' (eval) holds no model or preference pairs"])]:
        result = subprocess.run([sys.executable, "-m", "mpo_lib", "export", "--run-dir", str(smoke_run.path),
                                 "--stage", stage, "--to", str(tmp_path / stage)], cwd=ROOT, capture_output=True,
                                text=True)
        assert result.returncode == 2 and all(m in result.stderr for m in messages), result.stderr
        assert not (tmp_path / stage).exists()
