"""TL;DR end to end: every notebook (00-07) on real OpenAI TL;DR comparisons and reference summaries,
with the smoke model, and the rows of the paper's TL;DR column that such a run produces."""
import pytest

from mpo_lib import Run, load_config
from mpo_lib.reporting import evaluation
from mpo_lib.runtime.dryrun import protocol
from mpo_lib.runtime.pipeline import run_pipeline, summary

from conftest import ROOT

SMOKE_TLDR = ROOT / "params" / "smoke_tldr.yaml"


@pytest.fixture(scope="module")
def tldr_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "smoke_tldr"
    run_pipeline(str(SMOKE_TLDR), str(run_dir))
    return Run(load_config(SMOKE_TLDR), run_dir)


@pytest.mark.slow
def test_every_notebook_runs_on_tldr_and_table3_has_the_papers_tldr_column(tldr_run):
    files = tldr_run.metrics("data")["files"]
    assert files["batch13/test"]["read"] == 1097
    heldout = tldr_run.metrics("rm")["heldout"]["all"]
    assert heldout["pairs"] == tldr_run.cfg.data.holdout and 0 <= heldout["rm_accuracy"] <= 1
    split = tldr_run.metrics("split")
    assert split["easy"] + split["hard"] == split["prompts"] == tldr_run.cfg.resample.num_prompts
    rows = {row["stage"]: row for row in evaluation.table3(tldr_run)}
    assert {stage: row["paper (table3)"] for stage, row in rows.items() if row["paper (table3)"] is not None} == {
        "sft": 1.108, "dpo_full": 2.911, "ppo_full": 3.460, "mpo": "3.569 (γ=1) / 3.784 (γ=2)"}
    assert {"dpo_base", "dpo"} <= rows.keys()
    for row in rows.values():
        assert row["prompts"] == tldr_run.cfg.eval.num_prompts
    answers = [r for r in evaluation.responses(tldr_run, "mpo") if not r["case"]]
    assert all(r["prompt"].endswith("TL;DR:") for r in answers)  # the post's end is kept, the question too
    assert any(line.startswith("paired, MPO − PPO:") for line in summary(tldr_run))


def test_smoke_tldr_produces_the_rows_a_small_run_can():
    produced = dict(protocol(load_config(SMOKE_TLDR)))
    assert produced["Table 3: SFT"] == "eval_sft" and produced["Table 3 (text): DPO-base"] == "eval_dpo_base"
    assert produced["Table 3: MPO (γ=2)"] is None  # its gamma is the tiny RM's, not the paper's
