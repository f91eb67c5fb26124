"""Notebook 07 (and the bars of notebook 06): every policy of a run answers the same held-out
prompts with one decoding setting, and the run's reward model scores the answers.

- Table 3 / Table 6 / Fig. 4: mean reward per policy with a 95% bootstrap interval, the share of its
  answers that loop (a run of 4 words repeated 3 times), the paper's value beside it. The paper's rewards
  come from its own 7B reward model: compare orderings and gaps between policies, not absolute values.
- Paired differences: for each comparison the paper draws (COMPARISONS), the mean per-prompt
  reward difference with a paired 95% BCa interval; a difference is called real only when that
  interval excludes 0.
- Table 4: the pairwise judge (mpo_lib.reporting.judge) on eval.compare (MPO vs PPO), both orders, with an
  interval for the win - lose rate.
- Table 5: blinded human-evaluation sheets (mpo_lib.reporting.human_eval), summarised once labels exist.
- Table 7: the same prompts answered side by side (the paper's own instructions included for HH).
"""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path

from mpo_lib.method.data import truncate_prompt
from mpo_lib.method.resample import sample_and_score
from mpo_lib.method.reward import score
from mpo_lib.reporting.bootstrap import equal_length_difference_ci, mean_ci, paired_difference_ci
from mpo_lib.reporting.paper import CASES, RESULTS
from mpo_lib.runtime import stages
from mpo_lib.runtime.artifacts import Run, config_hash, read_json, write_json
from mpo_lib.runtime.distributed import is_main_process
from mpo_lib.runtime.launch import run_stage
from mpo_lib.runtime.models import device, load_stage_model, load_tokenizer, to_device


def policies(run: Run) -> list[str]:
    """The finished policy stages the params train, in table order: a stage left from other params is not
    evaluated."""
    return [name for name in stages.policies(run.cfg) if run.is_complete(name)]


def eval_prompts(run: Run, rows: list[dict]) -> list[dict]:
    """eval.num_prompts distinct prompts of `rows` (a run's Splits.evaluation: held-out pairs, or TL;DR-SFT test
    posts), taken from the subsets in turn."""
    cfg = run.cfg
    tokenizer = load_tokenizer(run)
    by_subset: dict[str, list[str]] = {}
    for row in rows:
        prompts = by_subset.setdefault(row["subset"], [])
        if row["prompt"] not in prompts:
            prompts.append(row["prompt"])
    chosen = []
    for depth in range(max(map(len, by_subset.values()), default=0)):
        for subset, prompts in by_subset.items():
            if depth < len(prompts) and len(chosen) < cfg.eval.num_prompts:
                chosen.append({"prompt": truncate_prompt(tokenizer, prompts[depth], cfg.data.max_prompt_tokens),
                               "subset": subset})
    return chosen


def case_prompts(run: Run) -> list[str]:
    return [f"\n\nHuman: {text}\n\nAssistant:" for text in CASES] if run.cfg.data.dataset == "hh" else []


def run_policy_eval(run: Run, policy: str, prompts: list[dict]) -> dict:
    """Stage eval_<policy>: greedy (or eval.temperature) answers to the eval prompts and the paper's
    case prompts, the eval prompts' rewards, and their mean with a bootstrap interval."""
    cfg, spec = run.cfg, run.cfg.eval
    cases = case_prompts(run)

    def build(out_dir: Path) -> dict:
        texts = [p["prompt"] for p in prompts] + cases
        # case prompts' rewards: unreported
        result = sample_and_score(run, policy, texts, 1, spec, spec.batch_size, spec.repetition_penalty)
        answers, rewards = [a[0] for a in result["samples"]], [r[0] for r in result["rewards"]][:len(prompts)]
        with open(out_dir / "responses.jsonl" if is_main_process() else os.devnull, "w") as handle:
            for k, text in enumerate(texts):
                row = {"prompt": text, "response": answers[k], "case": k >= len(prompts),
                       "subset": prompts[k]["subset"] if k < len(prompts) else None,
                       "reward": rewards[k] if k < len(prompts) else None}
                handle.write(json.dumps(row) + "\n")
        mean, low, high = mean_ci(rewards, n_resamples=spec.bootstrap_resamples, seed=cfg.seed)
        subsets = sorted({p["subset"] for p in prompts})
        return {"policy": policy, "prompts": len(prompts), "reward_mean": mean, "ci_low": low, "ci_high": high,
                "reward_by_subset": {s: sum(r for r, p in zip(rewards, prompts) if p["subset"] == s)
                                     / sum(p["subset"] == s for p in prompts) for s in subsets},
                "tokens_generated": result["new_tokens"], "generation_seconds": round(result["seconds"], 1)}

    return run.reuse_or_build(f"eval_{policy}", *eval_spec(run, policy, prompts), build)


def eval_spec(run: Run, policy: str, prompts: list[dict]) -> tuple[dict, list[str]]:
    cfg = run.cfg
    decoding = {"max_new_tokens", "temperature", "top_p", "bootstrap_resamples"}
    decoding |= {"repetition_penalty"} if cfg.eval.repetition_penalty != 1.0 else set()  # unset: earlier hashes hold
    settings = {"eval": cfg.eval.model_dump(include=decoding),
                "prompts": config_hash(prompts), "cases": case_prompts(run), "stop": cfg.resample.stop,
                "sample_dtype": cfg.model.sample_dtype, "seed": cfg.seed, **cfg.workers(), **cfg.generation()}
    return settings, [policy, "rm"]


def responses(run: Run, policy: str) -> list[dict]:
    path = run.require(f"eval_{policy}") / "responses.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------- reward tables

def _paper_value(run: Run, table: str, policy: str):
    value = RESULTS.get(run.cfg.data.dataset, {}).get(table, {}).get(stages.paper_row(policy))
    if isinstance(value, dict):  # MPO in Table 3: the row of the stage's gamma, else both
        gamma = run.cfg.split.gamma if (own := stages.gamma_of(policy)) is None else own
        return value.get(gamma, " / ".join(f"{v} (γ={g:g})" for g, v in value.items()))
    return value


def loops(answer: str, n: int = 4, repeats: int = 3) -> bool:
    """An answer that repeats itself: some run of n words occurs `repeats` times or more. Greedy decoding of a
    small model loops ("No, no, no, ..."), and the RM scores the loop like any other answer."""
    words = answer.split()
    counts = collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return any(count >= repeats for count in counts.values())


def loop_rate(run: Run, policy: str) -> float:
    """The share of a policy's eval answers that loop (`loops`)."""
    answers = [r["response"] for r in responses(run, policy) if not r["case"]]
    return sum(map(loops, answers)) / len(answers)


def reward_rows(run: Run, names: list[str], table: str) -> list[dict]:
    """One row per evaluated policy among `names`: mean reward, 95% interval, the share of its answers that
    loop, the paper's value."""
    rows = []
    for name in names:
        if not run.is_complete(f"eval_{name}"):
            continue
        m = run.metrics(f"eval_{name}")
        label = stages.label(name) + (f" (γ={run.cfg.split.gamma:g})" if name == "mpo" else "")
        rows.append({"policy": label, "stage": name, "reward": round(m["reward_mean"], 3),
                     "95% CI": f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]", "prompts": m["prompts"],
                     "loop rate": f"{loop_rate(run, name):.0%}", f"paper ({table})": _paper_value(run, table, name)})
    return rows


# the comparisons the paper draws, each as (policy, baseline): Table 3's order (MPO > PPO > DPO > SFT,
# DPO over DPO-base), Fig. 4's (DPO best on D^e, PPO best on everything) and Table 6's (MPO over its variants)
COMPARISONS = [("mpo", "ppo_full"), ("mpo", "dpo_full"), ("mpo", "dpo"), ("mpo", "sft"), ("ppo_full", "sft"),
               ("dpo_full", "sft"), ("dpo", "sft"), ("dpo_full", "dpo_base"), ("dpo", "dpo_full"), ("dpo", "dpo_hard"),
               ("ppo_full", "ppo_easy"), ("ppo_full", "ppo_hard"), ("mpo", "mpo_reverse"), ("mpo", "mpo_sft_kl"),
               ("mpo", "mpo_reverse_sft")]


def paired_answers(run: Run, policy: str, baseline: str) -> tuple[list[dict], list[dict]]:
    """The two policies' scored answers to the same eval prompts, in the same order."""
    answers = {name: [r for r in responses(run, name) if not r["case"]] for name in (policy, baseline)}
    if [r["prompt"] for r in answers[policy]] != [r["prompt"] for r in answers[baseline]]:
        raise ValueError(f"eval_{policy} and eval_{baseline} answered different prompts: their eval settings "
                         "differ; re-run notebook 07 so that both answer the run's eval prompts")
    return answers[policy], answers[baseline]


def words(answer: dict) -> int:
    return len(answer["response"].split())


def comparisons(cfg) -> list[tuple[str, str]]:
    """COMPARISONS, and for each further threshold its MPO against vanilla PPO, against its own DPO stage
    and against the MPO of split.gamma (Table 3: MPO at gamma 2 above MPO at gamma 1)."""
    further = [(stages.at_gamma("mpo", g), stages.at_gamma("dpo", g)) for g in cfg.split.gammas]
    return COMPARISONS + [pair for mpo, dpo in further for pair in ((mpo, "ppo_full"), (mpo, dpo), ("mpo", mpo))]


def paired_differences(run: Run) -> list[dict]:
    """Each comparison of comparisons() whose two policies were evaluated: the mean per-prompt reward
    difference, its paired 95% BCa interval (prompts resampled jointly), and whether 0 is outside it; the
    answers' mean length difference in words, and the difference at equal length (bootstrap.equal_length_difference_ci)
    with its interval: what remains of the gap once a linear length preference of the RM is taken out."""
    rows = []
    for policy, baseline in comparisons(run.cfg):
        if not (run.is_complete(f"eval_{policy}") and run.is_complete(f"eval_{baseline}")):
            continue
        ours, theirs = paired_answers(run, policy, baseline)
        rewards = [r["reward"] for r in ours], [r["reward"] for r in theirs]
        lengths = [words(r) for r in ours], [words(r) for r in theirs]
        settings = {"n_resamples": run.cfg.eval.bootstrap_resamples, "seed": run.cfg.seed}
        mean, low, high = paired_difference_ci(*rewards, **settings)
        equal, equal_low, equal_high = equal_length_difference_ci(*rewards, *lengths, **settings)
        rows.append({"comparison": f"{stages.label(policy)} − {stages.label(baseline)}", "policy": policy,
                     "baseline": baseline, "mean difference": round(mean, 3), "paired 95% CI": f"[{low:.3f}, {high:.3f}]",
                     "0 outside the interval": low > 0 or high < 0, "prompts": len(ours),
                     "Δ words": f"{(sum(lengths[0]) - sum(lengths[1])) / len(ours):+.1f}",
                     "at equal length": round(equal, 3), "equal-length 95% CI": f"[{equal_low:.3f}, {equal_high:.3f}]",
                     "0 outside at equal length": equal_low > 0 or equal_high < 0})
    return rows


def table3(run: Run) -> list[dict]:
    return reward_rows(run, stages.policies(run.cfg), "table3")


def _saved(run: Run, fig, name: str):
    """The figure laid out, written to the run's figures/ and closed: its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = run.figure_path(name)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_table3(run: Run):
    """Table 3 as points with their 95% intervals, in the paper's order: the RM's scale has no meaningful zero,
    and the paper's rewards come from its own RM (another scale), so neither bars nor its values are drawn.
    Policies the run did not evaluate are named under the axes."""
    import matplotlib.pyplot as plt

    rows = table3(run)
    missing = [stages.label(name) for name in stages.policies(run.cfg) if not run.is_complete(f"eval_{name}")]
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.3 * max(1, len(rows))))
    for y, row in enumerate(reversed(rows)):
        low, high = map(float, row["95% CI"].strip("[]").split(", "))
        ax.errorbar(row["reward"], y, xerr=[[row["reward"] - low], [high - row["reward"]]], fmt="o", color="#4c72b0",
                    capsize=3)
    ax.set_yticks(range(len(rows)), [row["policy"] for row in reversed(rows)], fontsize=8)
    ax.set_xlabel(f"mean reward of the run's RM, {rows[0]['prompts'] if rows else 0} prompts (95% CI)"
                  + (f"\nnot evaluated: {', '.join(missing)}" if missing else ""), fontsize=8)
    ax.set_title("Table 3: mean reward per policy", fontsize=10)
    return _saved(run, fig, "table3_rewards.png")


def table6(run: Run) -> list[dict]:
    return reward_rows(run, ["mpo", "ppo_full", "mpo_reverse", "mpo_sft_kl", "mpo_reverse_sft"], "table6")


FIG4 = {"DPO": {"easy": "dpo", "hard": "dpo_hard", "full": "dpo_full"},
        "PPO": {"easy": "ppo_easy", "hard": "ppo_hard", "full": "ppo_full"}}


def plot_fig4(run: Run):
    """Fig. 4: test reward of DPO and PPO trained from SFT on D^e, D^h and everything, as points with
    their 95% intervals: the RM's scale has no meaningful zero, so bars from 0 would mislead."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for offset, color, (method, trained_on) in zip((-0.12, 0.12), ("#4c72b0", "#dd8452"), FIG4.items()):
        label = method  # on the method's first point only
        for x, stage in enumerate(trained_on.values()):
            if not run.is_complete(f"eval_{stage}"):  # at the foot of the axes, clear of the title and the points
                ax.text(x + offset, 0.03, "not run", rotation=90, ha="center", va="bottom", fontsize=7, color=color,
                        transform=ax.get_xaxis_transform())
                continue
            m = run.metrics(f"eval_{stage}")
            ax.errorbar(x + offset, m["reward_mean"], fmt="o", color=color, capsize=3,
                        yerr=[[m["reward_mean"] - m["ci_low"]], [m["ci_high"] - m["reward_mean"]]], label=label)
            label = None
    ax.legend(fontsize=8)
    ax.set_xlim(-0.5, 2.5)
    ax.set_xticks(range(3), ["easy (D^e)", "hard (D^h)", "full"])
    ax.set_ylabel("mean test reward")
    ax.set_title(f"Fig. 4: trained on easy / hard / full (γ={run.cfg.split.gamma:g})", fontsize=10)
    return _saved(run, fig, "fig4_easy_hard_full.png")


def plot_paired_differences(run: Run):
    """Each comparison of paired_differences: the mean per-prompt difference and its paired 95% interval,
    against the line at 0 (green: 0 outside the interval)."""
    import matplotlib.pyplot as plt

    rows = paired_differences(run)
    fig, ax = plt.subplots(figsize=(7, 1.1 + 0.32 * max(1, len(rows))))
    for y, row in enumerate(reversed(rows)):
        low, high = map(float, row["paired 95% CI"].strip("[]").split(", "))
        color = "#2a9d4b" if row["0 outside the interval"] else "#777777"
        ax.errorbar(row["mean difference"], y, xerr=[[row["mean difference"] - low], [high - row["mean difference"]]],
                    fmt="o", color=color, capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [row["comparison"] for row in reversed(rows)], fontsize=8)
    ax.set_xlabel(f"mean reward difference, {rows[0]['prompts'] if rows else 0} shared prompts (paired 95% CI)")
    ax.set_title("Paired differences (green: 0 outside the interval)", fontsize=10)
    return _saved(run, fig, "paired_differences.png")


# ---------------------------------------------------------------------------- Tables 4, 5, 7

def compared_items(run: Run, limit: int | None = None) -> list[dict]:
    """The eval prompts answered by both policies of eval.compare, as judge/sheet items."""
    a, b = run.cfg.eval.compare
    first = [r for r in responses(run, a) if not r["case"]]
    second = {r["prompt"]: r for r in responses(run, b) if not r["case"]}
    items = [{"id": f"{k}", "instruction": r["prompt"], "category": r["subset"], "a": r["response"],
              "b": second[r["prompt"]]["response"]} for k, r in enumerate(first) if r["prompt"] in second]
    return items[:limit]


def make_judge(run: Run, kind: str):
    from mpo_lib.reporting import judge

    if kind == "openai":
        return judge.OpenAIJudge()
    if kind == "local":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from mpo_lib.runtime.models import SMOLLM2, smollm2_folder
        path = str(smollm2_folder()) if run.cfg.eval.judge_model == SMOLLM2 else run.cfg.eval.judge_model
        return judge.LocalChatJudge(AutoModelForCausalLM.from_pretrained(path).to(device()),
                                    AutoTokenizer.from_pretrained(path), name=f"local:{run.cfg.eval.judge_model}")
    cfg, tokenizer = run.cfg, load_tokenizer(run)
    reward_model = to_device(load_stage_model(run, "rm", head="score"))
    return judge.RewardMarginJudge(
        lambda prompts, answers: score(reward_model, tokenizer, prompts, answers, 2, cfg.rm.max_length, cfg.model.bf16),
        name=f"rm:{run.stage_hash('rm')}", tie_margin=cfg.eval.tie_margin)


def table4(run: Run) -> dict[str, dict]:
    """Each judge of eval.judges on eval.compare, in both orders; judgements cached under
    <run>/judge/ (a re-run costs nothing), results in <run>/judge/<kind>.json."""
    from mpo_lib.reporting.judge import OPENAI_ENV, judge_pairs, openai_configured

    items = compared_items(run, run.cfg.eval.judge_items)
    for kind in run.cfg.eval.judges:
        if kind == "openai" and not openai_configured():  # the full profiles list it: a run without an endpoint
            print(f"Table 4: the openai judge is skipped: set {', '.join(OPENAI_ENV)} to run it")
            continue
        write_json(run.path / "judge" / f"{kind}.json",
                   judge_pairs(make_judge(run, kind), items, run.path / "judge" / "cache"))
    return judge_summaries(run)


def judge_summaries(run: Run) -> dict[str, dict]:
    """The recorded Table 4 results of eval.judges, the paper's beside them."""
    paper = RESULTS.get(run.cfg.data.dataset, {}).get("table4")
    return {kind: {**read_json(path)["summary"], "paper": paper} for kind in run.cfg.eval.judges
            if (path := run.path / "judge" / f"{kind}.json").exists()}


def export_human_eval(run: Run) -> Path:
    """Blinded sheets for eval.compare under <run>/human_eval/: eval.human_eval_items per subset,
    three annotators. Sheets are written once: re-running never replaces sheets being filled in."""
    from mpo_lib.reporting.human_eval import export_sheets

    folder = run.path / "human_eval"
    # the sheets hold these stages' answers: other answers make them another evaluation
    answers = {stage: run.stage_hash(f"eval_{stage}") for stage in run.cfg.eval.compare}
    if (folder / "key.json").exists():
        recorded = read_json(folder / "answers.json") if (folder / "answers.json").exists() else None
        if recorded != answers:
            raise RuntimeError(f"{folder} holds sheets for other answers ({recorded}, now {answers}): move it "
                               "aside (labels included) before exporting new sheets")
        return folder
    items, per_subset = [], {}
    for item in compared_items(run):
        if per_subset.setdefault(item["category"], 0) < run.cfg.eval.human_eval_items:
            per_subset[item["category"]] += 1
            items.append(item)
    short = {c: n for c, n in per_subset.items() if n < run.cfg.eval.human_eval_items}
    if short:
        print(f"human evaluation: only {short} items per subset (eval.human_eval_items="
              f"{run.cfg.eval.human_eval_items}; raise eval.num_prompts for more)")
    export_sheets(items, folder, annotators=3, seed=run.cfg.seed)
    write_json(folder / "answers.json", answers)
    return folder


def table5(run: Run) -> dict | None:
    """Win/Tie/Lose per category and Fleiss' kappa, once the filled sheets are in
    <run>/human_eval/labels/ (same file names); None until then."""
    from mpo_lib.reporting.human_eval import import_labels, summarise

    folder = run.path / "human_eval"
    filled = sorted((folder / "labels").glob("sheet_*.csv"))
    if not filled:
        return None
    summary = summarise(import_labels(filled, folder / "key.json"))
    paper = RESULTS.get(run.cfg.data.dataset, {}).get("table5", {})
    return {category: {**row, "paper": paper.get(category.split("-")[0])} for category, row in summary.items()}


def case_studies(run: Run) -> list[dict]:
    """Table 7: the paper's instructions and eval.case_studies held-out prompts, answered by DPO,
    PPO and MPO (the paper's answers beside them where it printed some)."""
    columns = {"DPO": "dpo_full" if run.is_complete("eval_dpo_full") else "dpo", "PPO": "ppo_full", "MPO": "mpo"}
    columns = {label: stage for label, stage in columns.items() if run.is_complete(f"eval_{stage}")}
    answers = {label: {r["prompt"]: r["response"] for r in responses(run, stage)} for label, stage in columns.items()}
    first = responses(run, next(iter(columns.values()))) if columns else []
    chosen = [r["prompt"] for r in first if r["case"]]
    chosen += [r["prompt"] for r in first if not r["case"]][: run.cfg.eval.case_studies]
    rows = []
    for prompt in chosen:
        rows.append({"instruction": prompt.strip(), **{label: answers[label][prompt].strip() for label in columns}})
        paper = CASES.get(prompt.removeprefix("\n\nHuman: ").removesuffix("\n\nAssistant:"))
        if paper:
            rows.append({"instruction": "(the paper's answers)", **paper})
    return rows


# ---------------------------------------------------------------------------- compute

def compute_rows(run: Run) -> list[dict]:
    """What each finished stage cost: samples seen, tokens generated, wall-clock seconds, and tokens per
    second: trained for SFT, RM and DPO (TRL's count of the tokens it trained on, over the training time),
    generated for resampling, PPO and evaluation."""
    cfg, rows = run.cfg, []
    finished = [stage for stage in stages.catalogue(cfg) if run.is_complete(stage.name)]
    for stage in sorted(finished, key=lambda s: (run.stage_dir(s.name) / "COMPLETE").stat().st_mtime):
        folder = run.stage_dir(stage.name)
        m = read_json(folder / "metrics.json")
        tokens = m.get("tokens_generated", m.get("new_tokens"))
        samples, rate = m.get("samples_seen"), None
        if stage.kind.trl_section:  # TRL stages: optimizer steps x global batch
            section = getattr(cfg, stage.kind.trl_section)
            samples = m["optimizer_steps"] * section.batch_size * section.grad_accum * m.get("workers", 1)
            trained = [e["num_tokens"] for e in read_json(folder / "log_history.json") if "num_tokens" in e]
            rate = trained[-1] / m["train_seconds"] if trained and m.get("train_seconds") else None
        elif stage.kind is stages.RESAMPLE:
            samples = 2 * m["prompts"]  # two completions a prompt
        if tokens and m.get("wall_seconds"):
            rate = tokens / m["wall_seconds"]
        rows.append({"stage": stage.name, "samples seen": samples, "tokens generated": tokens,
                     "optimizer steps": m.get("optimizer_steps"), "wall-clock s": round(m.get("wall_seconds") or 0, 1),
                     "tokens/s": rate and round(rate)})
    return rows


def mpo_vs_ppo_compute(run: Run) -> dict | None:
    """MPO's own stages (resample, DPO on D^e, PPO on D^h) against vanilla PPO's one stage, and their
    ratio: the paper's "MPO is cheaper than PPO" (§4.1), measured. SFT and the RM are shared by both."""
    by_stage = {row["stage"]: row for row in compute_rows(run)}
    if not all(s in by_stage for s in ("resample", "dpo", "mpo", "ppo_full")):
        return None
    keys = ("samples seen", "tokens generated", "optimizer steps", "wall-clock s")
    total = lambda stages, key: sum(by_stage[s][key] or 0 for s in stages)
    mpo, ppo = ({key: total(stages, key) for key in keys} for stages in (("resample", "dpo", "mpo"), ("ppo_full",)))
    ratio = {key: round(mpo[key] / ppo[key], 2) if ppo[key] else None for key in keys}
    return {"MPO (resample + DPO + PPO on D^h)": mpo, "PPO (all prompts)": ppo, "MPO / PPO": ratio}


def evaluate(run: Run, policy: str) -> dict:
    """Stage eval_<policy>: its answers to the eval prompts, scored by the run's RM (Table 3's row)."""
    return run_stage(run, f"eval_{policy}")
