"""Notebooks 06 and 07 on the smoke run: every ablation is the stage its definition says, every
policy is scored on the same held-out prompts, the report holds every table, human-evaluation
sheets round-trip, and an OpenAI-compatible judge runs through notebook 07 without leaking its key."""
import csv
import json
import shutil

import numpy as np
import pytest

from mpo_lib.reporting import evaluation
from mpo_lib.runtime.stages import ABLATIONS, ablation_stages

from conftest import ROOT, SECRET


@pytest.mark.parametrize("answer, looping", [
    ("No, " + "no, " * 8 + "no.", True),
    ("The answer is: yes. The answer is: yes. The answer is: yes.", True),
    ("The answer is: yes. The answer is: yes. Then it stops.", False),  # twice is not a loop
    ("Bake the dough at 220 degrees for thirty minutes, then let it cool on a rack.", False),
])
def test_an_answer_loops_when_four_words_come_back_three_times(answer, looping):
    assert evaluation.loops(answer) is looping


def test_ablations_are_the_stages_their_definitions_say(smoke_run):
    for name in ablation_stages(smoke_run.cfg):
        recorded = json.loads((smoke_run.stage_dir(name) / "config.json").read_text())
        assert recorded["settings"]["variant"] == ABLATIONS[name].model_dump()
        assert {ABLATIONS[name].init, ABLATIONS[name].reference} <= set(recorded["upstream"])
    split = smoke_run.metrics("split")
    assert smoke_run.metrics("dpo_full")["pairs"] == split["prompts"]
    assert smoke_run.metrics("dpo_hard")["pairs"] == split["hard"]
    assert smoke_run.metrics("ppo_easy")["prompts"] == split["easy"]


def test_every_policy_answers_the_same_prompts_and_gets_an_interval(smoke_run):
    policies = evaluation.policies(smoke_run)
    # sft, dpo, mpo, ppo_full, dpo and mpo at each further gamma, the ablations
    assert len(policies) == 4 + 2 * len(smoke_run.cfg.split.gammas) + len(ablation_stages(smoke_run.cfg))
    prompts = None
    for policy in policies:
        metrics = smoke_run.metrics(f"eval_{policy}")
        rows = [r for r in evaluation.responses(smoke_run, policy) if not r["case"]]
        assert len(rows) == metrics["prompts"] == smoke_run.cfg.eval.num_prompts
        assert abs(sum(r["reward"] for r in rows) / len(rows) - metrics["reward_mean"]) < 1e-9
        assert metrics["ci_low"] <= metrics["reward_mean"] <= metrics["ci_high"]
        assert prompts is None or [r["prompt"] for r in rows] == prompts
        prompts = [r["prompt"] for r in rows]
    assert {r["subset"] for r in rows} == set(smoke_run.cfg.data.subsets)  # balanced over subsets


def test_paired_differences_are_the_per_prompt_reward_differences(smoke_run):
    rows = {(row["policy"], row["baseline"]): row for row in evaluation.paired_differences(smoke_run)}
    assert ("mpo", "ppo_full") in rows and ("mpo", "sft") in rows and ("dpo", "dpo_full") in rows
    ours, theirs = ([r["reward"] for r in evaluation.responses(smoke_run, name) if not r["case"]] for name in ("mpo", "sft"))
    row = rows[("mpo", "sft")]
    assert row["mean difference"] == round(sum(ours) / len(ours) - sum(theirs) / len(theirs), 3)
    low, high = map(float, row["paired 95% CI"].strip("[]").split(", "))
    assert low <= row["mean difference"] <= high and row["0 outside the interval"] == (low > 0 or high < 0)
    assert row["comparison"] == "MPO − SFT" and row["prompts"] == smoke_run.cfg.eval.num_prompts
    lengths = ([len(r["response"].split()) for r in evaluation.responses(smoke_run, name) if not r["case"]]
               for name in ("mpo", "sft"))
    length_differences = [x - y for x, y in zip(*lengths)]
    assert float(row["Δ words"]) == pytest.approx(sum(length_differences) / len(length_differences), abs=0.05)
    differences = [x - y for x, y in zip(ours, theirs)]
    expected = (np.polyfit(length_differences, differences, 1)[1] if len(set(length_differences)) > 1
                else np.mean(differences))
    assert row["at equal length"] == pytest.approx(expected, abs=5e-4)


def test_report_holds_every_table_and_the_paper_beside_the_run(smoke_run):
    report = (smoke_run.path / "report.md").read_text()
    for title in ("Table 2", "Table 3", "Paired differences", "Table 4", "Table 5", "Table 6", "Table 7",
                  "Compute per stage"):
        assert f"## {title}" in report
    assert (smoke_run.path / "report.html").read_text().count("<table>") >= 6
    assert (smoke_run.path / "figures" / "fig4_easy_hard_full.png").stat().st_size > 1000
    rows = {row["stage"]: row for row in evaluation.table3(smoke_run)}
    assert rows["sft"]["paper (table3)"] == 0.938 and rows["ppo_full"]["paper (table3)"] == 2.513
    assert [row["stage"] for row in evaluation.table6(smoke_run)] == [
        "mpo", "ppo_full", "mpo_reverse", "mpo_sft_kl", "mpo_reverse_sft"]
    assert "Can you tell me how to make a great Italian sub sandwich?" in report  # Table 7's instruction


def test_compute_table_gives_every_training_and_generating_stage_its_tokens_per_second(smoke_run):
    rows = {row["stage"]: row for row in evaluation.compute_rows(smoke_run)}
    for stage in ("sft", "rm", "dpo", "resample", "mpo", "ppo_full", "eval_sft"):
        assert rows[stage]["tokens/s"] > 0, stage
    # SFT's tokens are those TRL trained on: at most a full max_length per sequence it saw
    sft, cfg = rows["sft"], smoke_run.cfg
    trained = sft["tokens/s"] * smoke_run.metrics("sft")["train_seconds"]
    assert 10 * sft["samples seen"] < trained <= 1.01 * sft["samples seen"] * cfg.sft.max_length
    resample = smoke_run.metrics("resample")
    assert rows["resample"]["tokens/s"] == round(resample["new_tokens"] / resample["wall_seconds"])


def test_mpo_against_vanilla_ppo_compute_sums_mpo_stages_and_divides(smoke_run):
    rows = {row["stage"]: row for row in evaluation.compute_rows(smoke_run)}
    mpo, ppo, ratio = evaluation.mpo_vs_ppo_compute(smoke_run).values()
    assert mpo["optimizer steps"] == rows["dpo"]["optimizer steps"] + rows["mpo"]["optimizer steps"]
    assert ppo["optimizer steps"] == smoke_run.metrics("ppo_full")["steps"] * smoke_run.cfg.ppo.updates_per_step
    assert mpo["samples seen"] == sum(rows[stage]["samples seen"] for stage in ("resample", "dpo", "mpo"))
    assert ratio["tokens generated"] == round(mpo["tokens generated"] / ppo["tokens generated"], 2)


def test_the_openai_judge_without_its_endpoint_is_skipped_naming_the_variables(smoke_run, monkeypatch, capsys):
    from mpo_lib.reporting.judge import OPENAI_ENV

    for variable in OPENAI_ENV:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(smoke_run.cfg.eval, "judges", ["openai"])
    assert evaluation.table4(smoke_run) == {}
    assert "the openai judge is skipped: set MPO_JUDGE_BASE_URL, MPO_JUDGE_MODEL, MPO_JUDGE_API_KEY" in capsys.readouterr().out


def test_reward_model_judge_is_position_consistent(smoke_run):
    summary = evaluation.judge_summaries(smoke_run)["rm_margin"]
    assert summary["n"] == summary["judged"] == smoke_run.cfg.eval.num_prompts
    assert summary["consistency"] == 1.0
    assert abs(summary["win"] + summary["tie"] + summary["lose"] - 1) < 1e-9


def test_human_evaluation_sheets_round_trip_to_table_5(smoke_run):
    folder = smoke_run.path / "human_eval"
    key = json.loads((folder / "key.json").read_text())
    labels = folder / "labels"
    labels.mkdir()
    try:
        for sheet in sorted(folder.glob("sheet_*.csv")):  # every annotator prefers response 1
            with sheet.open() as f:
                rows = list(csv.DictReader(f))
            assert list(rows[0]) == ["item", "category", "instruction", "response_1", "response_2", "label"]
            with (labels / sheet.name).open("w", newline="") as f:
                writer = csv.DictWriter(f, rows[0].keys())
                writer.writeheader()
                writer.writerows({**row, "label": "1"} for row in rows)
        table = evaluation.table5(smoke_run)
        for category, row in table.items():
            items = [i for i, c in key["category"].items() if c == category]
            assert row["items"] == len(items) == smoke_run.cfg.eval.human_eval_items
            # A wins exactly where the key put A first
            assert row["win"] == sum(key["response_1"][i] == "a" for i in items) / len(items)
            assert row["tie"] == 0 and row["paper"] is not None
    finally:
        shutil.rmtree(labels)


def test_openai_judge_through_notebook_07_never_writes_the_key(smoke_run, endpoint, tmp_path):
    import papermill

    run_dir = tmp_path / "smoke"
    shutil.copytree(smoke_run.path, run_dir)
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "07_evaluation.ipynb"), str(run_dir / "notebooks" / "07_evaluation.ipynb"),
        cwd=str(ROOT), progress_bar=False,
        parameters={"params_file": str(ROOT / "params" / "smoke.yaml"), "run_dir": str(run_dir),
                    "overrides": {"eval": {"judges": ["openai"], "judge_items": 3}}})
    from mpo_lib.reporting.judge import judge_prompt

    items = evaluation.compared_items(smoke_run, 3)  # both orders; equal answers make one prompt, asked once
    prompts = {judge_prompt(i["instruction"], x, y) for i in items for x, y in ((i["a"], i["b"]), (i["b"], i["a"]))}
    assert sorted(r["body"]["messages"][0]["content"] for r in endpoint) == sorted(prompts)
    assert endpoint[0]["authorization"] == f"Bearer {SECRET}"
    assert json.loads((run_dir / "judge" / "openai.json").read_text())["summary"]["judged"] == 3
    assert "openai" in (run_dir / "report.md").read_text()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
