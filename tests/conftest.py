import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MPO_DATA_DIR", str((ROOT / ".." / "shared" / "data").resolve()))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = Path(os.environ["MPO_DATA_DIR"])
SMOKE = ROOT / "params" / "smoke.yaml"


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke pipeline (notebooks 00-04) executed once with papermill, as `make smoke` does."""
    from mpo_lib import Run, load_config
    from mpo_lib.pipeline import run_pipeline

    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    run_pipeline(str(SMOKE), str(run_dir))
    return Run(load_config(SMOKE), run_dir)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A smoke run with only the base stage: a tiny model and tokenizer for unit tests."""
    from mpo_lib import Run, load_config
    from mpo_lib.data import corpus, load_preferences
    from mpo_lib.models import prepare_base

    cfg = load_config(SMOKE)
    run = Run(cfg, tmp_path_factory.mktemp("runs") / "tiny")
    prepare_base(run, corpus(cfg, load_preferences(cfg)))
    return run


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory):
    """The smoke stages up to DPO, in-process, with LoRA adapters (the cpu_small layout)."""
    from mpo_lib import Run, load_config
    from mpo_lib.data import corpus, load_preferences, sft_rows
    from mpo_lib.dpo import run_dpo
    from mpo_lib.models import prepare_base
    from mpo_lib.resample import run_resample, run_split
    from mpo_lib.reward import run_reward
    from mpo_lib.sft import run_sft

    cfg = load_config(SMOKE, {"model": {"lora": {"r": 8, "alpha": 16}}, "sft": {"max_steps": 4},
                              "rm": {"max_steps": 4}, "resample": {"num_prompts": 16}})
    run = Run(cfg, tmp_path_factory.mktemp("runs") / "lora")
    splits = load_preferences(cfg)
    prepare_base(run, corpus(cfg, splits))
    run_sft(run, sft_rows(cfg, splits))
    run_reward(run, splits.train, splits.heldout)
    run_resample(run, splits.train)
    run_split(run)
    run_dpo(run, splits.train)
    return run
