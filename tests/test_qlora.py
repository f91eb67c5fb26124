"""The one-GPU QLoRA layout of params/hh_qlora.yaml (an NF4 base, LoRA adapters, bitsandbytes' paged 8-bit
AdamW) through notebooks 00-05 on the smoke data and tiny model. bitsandbytes runs NF4 and its 8-bit AdamW
on CPU too; only the paging falls back to ordinary memory."""
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from mpo_lib import Run, load_config
from mpo_lib.runtime.artifacts import read_json
from mpo_lib.runtime.models import four_bit, load_stage_model, load_tokenizer
from mpo_lib.runtime.pipeline import run_pipeline

from conftest import ROOT, SMOKE


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    """hh_qlora's model settings on the smoke profile, notebooks 00-05."""
    tmp_path = tmp_path_factory.mktemp("qlora")
    qlora = load_config(ROOT / "params" / "hh_qlora.yaml").model
    params = yaml.safe_load(SMOKE.read_text())
    params["model"].update(quantization=qlora.quantization, optimizer=qlora.optimizer, bf16=qlora.bf16,
                           emulated_bf16=True, lora={"r": 8, "alpha": 16})  # bf16 on any CPU, as on the GPU
    params_file = tmp_path / "smoke_qlora.yaml"
    params_file.write_text(yaml.safe_dump(params))
    run_pipeline(str(params_file), str(tmp_path / "run"), until="05")
    return Run(load_config(params_file), tmp_path / "run")


def test_the_qlora_layout_trains_every_stage_through_ppo_on_a_4bit_base(qlora_run):
    run = qlora_run
    import bitsandbytes  # mpo_lib hides it from processes whose params need no 4-bit model; these do

    base = load_stage_model(run, "base")
    assert isinstance(base.model.layers[0].mlp.down_proj, bitsandbytes.nn.Linear4bit)  # what the stages train over
    for stage in ("sft", "rm", "dpo", "mpo", "ppo_full"):
        assert read_json(run.stage_dir(stage) / "model.json")["kind"] == "lora", stage  # adapters only
    sft_output = (run.path / "notebooks" / "01_sft.ipynb").read_text()
    assert "Paged optimizers are not supported on CPU" in sft_output  # bitsandbytes' paged 8-bit AdamW was built
    assert run.metrics("dpo")["reward_margin_after"] > 0  # the adapters moved towards the chosen answers
    assert len(read_json(run.stage_dir("mpo") / "steps.json")) == run.cfg.ppo.max_steps


def trained_stack(run, chain: list[str], head: str):
    """The 4-bit base with the chain's adapters unmerged and all active, by plain transformers and peft: the model
    each stage trained (and PPO's stacked layout ran)."""
    from peft import PeftModel

    auto, kwargs = (AutoModelForCausalLM, {}) if head == "lm" else (AutoModelForSequenceClassification, {"num_labels": 1})
    base = auto.from_pretrained(run.stage_dir("base") / "model", quantization_config=four_bit(), **kwargs)
    base.config.pad_token_id = load_tokenizer(run).pad_token_id
    model = PeftModel.from_pretrained(base, run.stage_dir(chain[0]) / "adapter", adapter_name=chain[0])
    for stage in chain[1:]:
        model.load_adapter(run.stage_dir(stage) / "adapter", adapter_name=stage)
    model.base_model.set_adapter(chain)
    return model.eval()


@pytest.mark.parametrize("stage, chain, head", [("sft", ["sft"], "lm"), ("rm", ["rm"], "score"),
                                               ("dpo", ["sft", "dpo"], "lm"), ("mpo", ["sft", "dpo", "mpo"], "lm")])
def test_a_4bit_stage_loads_with_its_trained_adapters(qlora_run, stage, chain, head):
    tokenizer = load_tokenizer(qlora_run)
    inputs = tokenizer(["\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour and water."], return_tensors="pt")
    with torch.no_grad():
        loaded = load_stage_model(qlora_run, stage, head).eval()(**inputs).logits
        trained = trained_stack(qlora_run, chain, head)(**inputs).logits
        assert torch.allclose(loaded, trained, atol=1e-5), (loaded - trained).abs().max()
