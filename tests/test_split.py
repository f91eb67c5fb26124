from mpo_lib.method.resample import split_by_gap


def pair(prompt, reward_1, reward_2):
    return {"prompt": prompt, "response_1": f"{prompt}-1", "response_2": f"{prompt}-2",
            "reward_1": reward_1, "reward_2": reward_2}


def test_algorithm_1_puts_each_prompt_on_the_right_side():
    pairs = [pair("wide", 3.5, 0.5),          # gap 3 > 2: easy, first preferred
             pair("reversed", -1.0, 2.5),     # gap 3.5 > 2: easy, second preferred
             pair("exactly", 1.0, 3.0),       # gap == gamma: not "more than" gamma, so hard
             pair("close", 0.2, 0.7)]         # gap 0.5: hard
    easy, hard = split_by_gap(pairs, gamma=2.0)
    assert easy == [{"prompt": "wide", "chosen": "wide-1", "rejected": "wide-2"},
                    {"prompt": "reversed", "chosen": "reversed-2", "rejected": "reversed-1"}]
    assert hard == [{"prompt": "exactly"}, {"prompt": "close"}]


def test_every_prompt_lands_in_exactly_one_set():
    pairs = [pair(str(i), i * 0.37 % 3, i * 0.11 % 2) for i in range(50)]
    for gamma in (0.0, 0.5, 1.0, 2.0):
        easy, hard = split_by_gap(pairs, gamma)
        assert len(easy) + len(hard) == len(pairs)
        assert {p["prompt"] for p in easy} | {p["prompt"] for p in hard} == {p["prompt"] for p in pairs}


def test_each_further_gamma_trains_its_own_mpo_on_its_own_split(smoke_run):
    """split.gammas: split_gamma<g>, dpo_gamma<g> on that split's D^e and mpo_gamma<g> on its D^h, from and
    near that DPO; every one evaluated beside split.gamma's MPO."""
    from mpo_lib.reporting import evaluation
    from mpo_lib.runtime.artifacts import read_json

    gamma = smoke_run.cfg.split.gammas[0]
    split = smoke_run.metrics("split_gamma0p015")
    assert split["gamma"] == gamma == 0.015 and split["easy"] + split["hard"] == split["prompts"]
    assert smoke_run.metrics("dpo_gamma0p015")["pairs"] == split["easy"]
    mpo = smoke_run.metrics("mpo_gamma0p015")
    assert mpo["prompts"] == split["hard"] and mpo["variant"]["init"] == mpo["variant"]["reference"] == "dpo_gamma0p015"
    assert read_json(smoke_run.stage_dir("mpo_gamma0p015") / "config.json")["upstream"].keys() >= {
        "dpo_gamma0p015", "split_gamma0p015"}
    policies = [row["policy"] for row in evaluation.table3(smoke_run)]
    assert policies.index("MPO (γ=0.01)") + 1 == policies.index("MPO (γ=0.015)")
