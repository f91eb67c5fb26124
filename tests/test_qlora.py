"""The one-GPU QLoRA layout of params/hh_qlora.yaml (an NF4 base, LoRA adapters, bitsandbytes' paged 8-bit
AdamW) through notebooks 00-05 on the smoke data and tiny model. bitsandbytes runs NF4 and its 8-bit AdamW
on CPU too; only the paging falls back to ordinary memory."""
import yaml

from mpo_lib import Run, load_config
from mpo_lib.artifacts import read_json
from mpo_lib.models import load_stage_model
from mpo_lib.pipeline import run_pipeline

from conftest import ROOT, SMOKE


def test_the_qlora_layout_trains_every_stage_through_ppo_on_a_4bit_base(tmp_path):
    qlora = load_config(ROOT / "params" / "hh_qlora.yaml").model
    params = yaml.safe_load(SMOKE.read_text())
    params["model"].update(quantization=qlora.quantization, optimizer=qlora.optimizer, bf16=qlora.bf16,
                           lora={"r": 8, "alpha": 16})
    params_file = tmp_path / "smoke_qlora.yaml"
    params_file.write_text(yaml.safe_dump(params))
    run_pipeline(str(params_file), str(tmp_path / "run"), until="05")
    run = Run(load_config(params_file), tmp_path / "run")

    import bitsandbytes  # mpo_lib hides it from processes whose params need no 4-bit model; these do

    base = load_stage_model(run, "base")
    assert isinstance(base.model.layers[0].mlp.down_proj, bitsandbytes.nn.Linear4bit)  # what the stages train over
    for stage in ("sft", "rm", "dpo", "mpo", "ppo_full"):
        assert read_json(run.stage_dir(stage) / "model.json")["kind"] == "lora", stage  # adapters only
    sft_output = (run.path / "notebooks" / "01_sft.ipynb").read_text()
    assert "Paged optimizers are not supported on CPU" in sft_output  # bitsandbytes' paged 8-bit AdamW was built
    assert run.metrics("dpo")["reward_margin_after"] > 0  # the adapters moved towards the chosen answers
    assert len(read_json(run.stage_dir("mpo") / "steps.json")) == run.cfg.ppo.max_steps
