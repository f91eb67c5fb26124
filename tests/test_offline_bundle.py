"""deploy/offline_bundle.py: what travels to a machine without internet."""
import sys

from mpo_lib import load_config

from conftest import ROOT, SMOKE

sys.path.insert(0, str(ROOT / "deploy"))
from offline_bundle import HF_STACK, canonical, packages_to_carry


def test_the_bundle_carries_what_the_target_lacks_and_the_hugging_face_stack_always():
    cfg = load_config(SMOKE)
    image = {canonical(line) for line in (ROOT / "deploy/gpu_image_packages.txt").read_text().splitlines()
             if line and not line.startswith("#")}
    closure, carried = packages_to_carry(cfg, image)
    assert {"trl", "datasets", "papermill", "ipykernel", "gguf"} <= carried.keys()  # not in the image
    assert {"transformers", "accelerate"} <= image and set(HF_STACK) <= carried.keys()  # at the tested versions
    assert not {"torch", "numpy", "pandas", "pyarrow", "statsmodels"} & carried.keys()  # the image's own
    assert not {"openai", "deepspeed", "bitsandbytes"} & closure.keys()  # smoke uses none of them
    qlora = load_config(ROOT / "params/hh_qlora.yaml", {"eval": {"judges": ["openai"]}})
    assert {"openai", "bitsandbytes"} <= packages_to_carry(qlora, image)[1].keys()
    assert "deepspeed" in packages_to_carry(load_config(ROOT / "params/hh_full.yaml"), image)[1]
    assert carried["trl"] == "1.16.0"  # requirements.txt's pin, as installed here
