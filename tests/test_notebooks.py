"""Every notebook executed on the smoke profile with papermill (the notebook is both tutorial and
test), then the metrics each one records, and a resumed run that reuses every finished stage."""
import json
import math
import shutil

import nbformat
import pytest

from mpo_lib.method.resample import sizes_by_gamma

import notebook_check
from conftest import ROOT


def test_data_counts(smoke_run):
    files = smoke_run.metrics("data")["files"]
    assert files["helpful-base/test"]["read"] == 2354
    assert files["harmless-base/test"]["read"] == 2312
    for part in files.values():
        assert part["kept"] + sum(part["dropped"].values()) == part["read"]


def test_sft_trained(smoke_run):
    metrics = smoke_run.metrics("sft")
    assert metrics["optimizer_steps"] == smoke_run.cfg.sft.max_steps
    assert metrics["train_loss_last"] < metrics["train_loss_first"]


def test_reward_model_accuracy_is_a_rate(smoke_run):
    heldout = smoke_run.metrics("rm")["heldout"]
    assert heldout["all"]["pairs"] == 2 * smoke_run.cfg.data.holdout
    for subset in heldout.values():
        assert 0.0 <= subset["rm_accuracy"] <= 1.0 and 0.0 <= subset["shorter_wins_accuracy"] <= 1.0


def test_split_covers_every_prompt_once(smoke_run):
    split = smoke_run.metrics("split")
    assert split["easy"] + split["hard"] == split["prompts"] == smoke_run.cfg.resample.num_prompts
    assert split["easy"] > 0 and split["hard"] > 0
    by_gamma = sizes_by_gamma(smoke_run, [0.0, *smoke_run.cfg.split.report_gammas, 1e9])
    assert by_gamma["0"]["easy"] <= split["prompts"] and by_gamma["1e+09"] == {"easy": 0, "hard": split["prompts"]}
    easy_counts = [counts["easy"] for counts in by_gamma.values()]
    assert easy_counts == sorted(easy_counts, reverse=True)  # a higher gamma never adds easy pairs


def test_dpo_starts_at_the_reference_and_moves(smoke_run):
    metrics = smoke_run.metrics("dpo")
    assert metrics["pairs"] == smoke_run.metrics("split")["easy"]
    assert metrics["reward_margin_first"] == 0.0  # step 1: policy == reference (SFT), so the margin is exactly 0
    assert math.isfinite(metrics["reward_margin_last"]) and metrics["reward_margin_last"] != 0.0
    assert metrics["train_loss_first"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics["reward_margin_after"] > 0  # trained on D^e, the policy prefers its chosen responses


def test_figures_and_executed_notebooks_are_in_the_run(smoke_run):
    for name in ("fig2_left_rm_precision.png", "fig2_right_pairs_per_gap.png", "token_lengths.png"):
        assert (smoke_run.path / "figures" / name).stat().st_size > 1000
    executed = sorted(nb.name for nb in (smoke_run.path / "notebooks").glob("*.ipynb"))
    assert executed == sorted(nb.name for nb in (ROOT / "notebooks").glob("*.ipynb"))
    assert executed[:6] == ["00_data_stats.ipynb", "01_sft.ipynb", "02_reward_model.ipynb",
                            "03_resample_split.ipynb", "04_dpo.ipynb", "05_ppo.ipynb"]


def test_every_training_stage_logs_each_step_to_tensorboard(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mpo_lib.runtime import stages

    trained = stages.of_kind(smoke_run.cfg, stages.SFT, stages.RM, stages.DPO, stages.PPO)
    assert len(trained) == 15  # sft, rm, 5 DPO and 8 PPO stages (2 thresholds, every ablation)
    for stage in trained:
        events = EventAccumulator(str(smoke_run.path / stage.name / "tensorboard")).Reload()
        metrics = smoke_run.metrics(stage.name)
        if stage.kind is stages.PPO:
            tag, steps = "ppo/reward_mean", metrics["steps"]
            assert "ppo/samples/text_summary" in events.Tags()["tensors"], stage.name  # the samples table (Text tab)
        else:
            tag, steps = "train/loss", metrics["optimizer_steps"]
        assert [point.step for point in events.Scalars(tag)] == list(range(1, steps + 1)), stage.name


def test_every_notebook_runs_and_shows_its_tables_and_figures_under_nbval(smoke_run, tmp_path):
    executed = sorted((smoke_run.path / "notebooks").glob("*.ipynb"))
    result = notebook_check.nbval([notebook_check.check_copy(nb, tmp_path) for nb in executed], tmp_path)
    code_cells = sum(len([c for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code"]) for nb in executed)
    assert result.returncode == 0 and f"{code_cells} passed" in result.stdout, result.stdout[-4000:]


def test_nbval_fails_a_notebook_that_stops_showing_its_table(smoke_run, tmp_path):
    copy = notebook_check.check_copy(smoke_run.path / "notebooks" / "00_data_stats.ipynb", tmp_path)
    notebook = nbformat.read(copy, as_version=4)
    table1 = notebook_check.tagged(notebook)[0]
    table1.source = table1.source.replace("stats.table1(metrics)", "table = stats.table1(metrics)")  # computed, not shown
    nbformat.write(notebook, copy)
    result = notebook_check.nbval([copy], tmp_path)
    assert result.returncode == 1 and "1 failed" in result.stdout and "Missing output fields" in result.stdout


def test_resumed_pipeline_reuses_finished_stages(smoke_run, capsys):
    from mpo_lib.runtime.pipeline import run_pipeline

    markers = {p: p.stat().st_mtime_ns for p in smoke_run.path.glob("*/COMPLETE")}
    run_pipeline(str(ROOT / "params" / "smoke.yaml"), str(smoke_run.path), until="02")
    assert {p: p.stat().st_mtime_ns for p in smoke_run.path.glob("*/COMPLETE")} == markers
    executed = nbformat.read(smoke_run.path / "notebooks" / "01_sft.ipynb", as_version=4)
    outputs = json.dumps([cell.get("outputs", []) for cell in executed.cells])
    assert "[sft] finished earlier with the same config" in outputs


def test_changed_params_rerun_the_stage_and_keep_the_old_one(smoke_run, tmp_path):
    from mpo_lib import Run, load_config
    from mpo_lib.method.resample import run_split

    copy = tmp_path / "smoke"
    shutil.copytree(smoke_run.path, copy)
    run = Run(load_config(ROOT / "params" / "smoke.yaml", {"split": {"gamma": 0.005}}), copy)
    before = run.metrics("split")
    after = run_split(run)
    assert after["gamma"] == 0.005 and after["easy"] >= before["easy"]
    superseded = list(copy.glob("split.superseded-*"))
    assert len(superseded) == 1 and json.loads((superseded[0] / "metrics.json").read_text()) == before


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_are_clean(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert sum("parameters" in cell.metadata.get("tags", []) for cell in code) == 1
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert all(len(cell.source.splitlines()) <= 8 for cell in code), "logic belongs in mpo_lib"
