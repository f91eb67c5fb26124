from mpo_lib.__main__ import main
from mpo_lib.reporting.seeds import orderings


def paired(policy: str, baseline: str, mean: float, low: float, high: float, at_equal_length: float = 0.0) -> dict:
    """A row as evaluation.paired_differences writes it; at equal length, an interval of ±0.1 around the value."""
    return {"comparison": f"{policy.upper()} − {baseline.upper()}", "policy": policy, "baseline": baseline,
            "mean difference": mean, "paired 95% CI": f"[{low:.3f}, {high:.3f}]",
            "0 outside the interval": low > 0 or high < 0, "prompts": 96, "at equal length": at_equal_length,
            "0 outside at equal length": abs(at_equal_length) > 0.1}


def test_an_ordering_is_shown_only_when_every_seed_excludes_zero_on_the_same_side():
    """cpu_small's two seeds: MPO - PPO excluded 0 in both, on opposite sides; DPO - SFT above 0 in both;
    PPO - SFT above 0 in one and holding 0 in the other; at equal answer length DPO - SFT held 0 in seed 1. A
    comparison one run lacks is left out."""
    per_run = {
        "seed 0": [paired("mpo", "ppo_full", 0.358, 0.173, 0.562), paired("dpo_full", "sft", 0.534, 0.334, 0.744, 0.437),
                   paired("ppo_full", "sft", 0.008, -0.142, 0.154), paired("mpo", "mpo_reverse", 0.1, 0.01, 0.2)],
        "seed 1": [paired("mpo", "ppo_full", -0.122, -0.241, -0.004), paired("dpo_full", "sft", 0.131, 0.021, 0.25, 0.065),
                   paired("ppo_full", "sft", 0.164, 0.061, 0.266)],
    }
    table = {row["comparison"]: row for row in orderings(per_run)}
    assert list(table) == ["MPO − PPO_FULL", "DPO_FULL − SFT", "PPO_FULL − SFT"]
    assert (table["MPO − PPO_FULL"]["runs above 0"], table["MPO − PPO_FULL"]["runs below 0"]) == (1, 1)
    assert table["MPO − PPO_FULL"]["verdict"] == "not shown"
    assert table["MPO − PPO_FULL"]["seed 1"] == "-0.122 [-0.241, -0.004]"
    assert table["DPO_FULL − SFT"]["verdict"] == "DPO > SFT in every run"
    assert table["DPO_FULL − SFT"]["verdict at equal length"] == "not shown"  # seed 1's gain was shorter answers
    assert table["PPO_FULL − SFT"]["verdict"] == "not shown"
    flipped = orderings({label: [paired("sft", "dpo_full", -r["mean difference"], -0.25, -0.02)
                                 for r in rows if r["policy"] == "dpo_full"] for label, rows in per_run.items()})
    assert flipped[0]["verdict"] == "SFT < DPO in every run"


def test_seeds_command_needs_two_evaluated_runs(tmp_path, capsys):
    assert main(["seeds", str(tmp_path)]) == 2
    assert "two or more run directories" in capsys.readouterr().err
    assert main(["seeds", str(tmp_path), str(tmp_path / "other")]) == 2
    assert f"{tmp_path} has no finished evaluation (eval_sft)" in capsys.readouterr().err
