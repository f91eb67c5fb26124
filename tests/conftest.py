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
