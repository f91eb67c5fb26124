"""One page per run, report.md and report.html in the run directory: every regenerated table and
figure with the paper's values beside it, and what each stage cost. The tables alone also go to
<run>/figures/tables.md, which profiles with copy_figures publish to the repository."""
from __future__ import annotations

from pathlib import Path

from mpo_lib.method.resample import sizes_by_gamma
from mpo_lib.reporting import evaluation, judge
from mpo_lib.reporting.paper import RESULTS, RM_ACCURACY
from mpo_lib.runtime import stages
from mpo_lib.runtime.artifacts import Run

HH = RESULTS["hh"]  # Fig. 4's quoted values are HH-RLHF's


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "_(nothing to show: the stages have not run)_\n"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    def cell(value) -> str:
        if value is None:
            return ""
        text = {True: "yes", False: "no"}[value] if isinstance(value, bool) else \
            f"{value:.3f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _margin(row: dict) -> str:
    """A judge's win - lose rate and its 95% interval, e.g. '+27.1% [+6.2%, +45.8%]'."""
    low, high = row["win_minus_lose_ci"]
    return f"{row['win_minus_lose']:+.1%} [{low:+.1%}, {high:+.1%}]"


def _percent_rows(results: dict) -> list[dict]:
    """Win/tie/lose tables (4, 5): rates as percentages, the paper's row in one cell."""
    rate = lambda v: None if v is None else f"{v:.1%}"
    rows = []
    for name, row in results.items():
        paper = row.get("paper") or {}
        rows.append({"": name, **{k: rate(row.get(k)) for k in ("win", "tie", "lose")},
                     **({"position-consistent": rate(row["consistency"])} if "consistency" in row else {}),
                     **({"win − lose (95% CI)": _margin(row)} if row.get("win_minus_lose_ci") else {}),
                     **{k: row[k] for k in ("kappa", "judged", "failures", "items", "annotators") if k in row},
                     "paper": ", ".join(f"{k} {v if k == 'kappa' else rate(v)}" for k, v in paper.items())})
    return rows


def tables(run: Run) -> str:
    cfg, parts, judged = run.cfg, [], evaluation.judge_summaries(run)
    if run.is_complete("rm"):
        heldout = run.metrics("rm")["heldout"]
        paper = f"{RM_ACCURACY[cfg.data.dataset]:.0%}"
        parts += ["## Table 2: reward-model accuracy on held-out pairs",
                  markdown_table([{"subset": s, "pairs": r["pairs"], "RM accuracy": f"{r['rm_accuracy']:.1%}",
                                   "shorter response wins": f"{r['shorter_wins_accuracy']:.1%}", "paper": paper}
                                  for s, r in heldout.items()])]
    if run.is_complete("split"):
        sizes = sizes_by_gamma(run, sorted({*cfg.split.report_gammas, cfg.split.gamma}))
        parts += [f"## Easy / hard split (Algorithm 1; training used γ = {cfg.split.gamma:g})",
                  markdown_table([{"γ": g, "|D^e|": s["easy"], "|D^h|": s["hard"]} for g, s in sizes.items()])]
    parts += ["## Table 3: mean reward on held-out prompts (95% bootstrap interval)",
              ("The paper's rewards come from its own LLaMA-2-7B reward model: compare the order of the policies "
               "and the gaps between them, not absolute values.\n"), markdown_table(evaluation.table3(run)),
              "## Paired differences: the comparisons the paper draws",
              ("Each policy minus its baseline on the same prompts: the mean per-prompt reward difference and a "
               "95% BCa interval that resamples prompts jointly. A difference is real only where 0 is outside "
               "the interval; overlapping marginal intervals in Table 3 do not say that it is not. Δ words: the "
               "answers' mean length difference; at equal length: the intercept of d_i = α + β·Δwords_i, the "
               "difference left once a linear length preference of the RM is taken out.\n"),
              markdown_table([{k: v for k, v in row.items() if k not in ("policy", "baseline")}
                              for row in evaluation.paired_differences(run)]),
              "## Table 6: ablations", markdown_table(evaluation.table6(run)),
              "## Fig. 4: DPO and PPO trained on D^e, D^h or everything",
              ("![Fig. 4](figures/fig4_easy_hard_full.png)\n\nThe paper (HH-RLHF, γ = 2) quotes DPO on D^e "
               f"{HH['fig4']['dpo']} and on everything {HH['fig4']['dpo_full']} (Section 4.2; Table 3 gives "
               f"{HH['table3']['dpo_full']} for its DPO), and PPO best with every prompt.\n")]
    if judged:
        a, b = cfg.eval.compare
        by_label = {judge.LABELS[kind]: row for kind, row in judged.items()}
        parts += [(f"## Table 4: pairwise judge, {stages.label(a)} vs {stages.label(b)} (both orders; "
                   "a verdict that flips with the order is a tie)"), markdown_table(_percent_rows(by_label))]
    human = evaluation.table5(run)
    parts += ["## Table 5: human evaluation", markdown_table(_percent_rows(human)) if human else
              "Sheets for three annotators are in the run directory's `human_eval/` (a path relative to the run: "
              "tables.md is published); put the filled copies in its `labels/` folder (same file names) and re-run "
              "notebook 07.\n"]
    parts += ["## Table 7: case studies", markdown_table(evaluation.case_studies(run))]
    parts += ["## Compute per stage", markdown_table(evaluation.compute_rows(run))]
    versus = evaluation.mpo_vs_ppo_compute(run)
    if versus:
        parts += ["MPO against vanilla PPO (the paper: MPO's PPO sees only D^h's prompts):\n",
                  markdown_table([{"": name, **row} for name, row in versus.items()])]
    return "\n".join(parts)


def write_report(run: Run) -> Path:
    """report.md and report.html (figures linked from <run>/figures/); returns the markdown path."""
    import markdown

    figures = sorted((run.path / "figures").glob("*.png"))
    body = tables(run)
    (run.path / "figures" / "tables.md").write_text(body)
    page = "\n".join([f"# MPO reproduction report: {run.cfg.run_name}",
                      f"Model `{run.cfg.model.name}`, dataset `{run.cfg.data.dataset}`, run directory `{run.path}`.\n",
                      body, "## Figures", *[f"![{f.stem}](figures/{f.name})\n" for f in figures]])
    (run.path / "report.md").write_text(page)
    html = markdown.markdown(page, extensions=["tables"])
    style = "body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:collapse}" \
            "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}img{max-width:48%}"
    (run.path / "report.html").write_text(f"<!doctype html><meta charset='utf-8'><style>{style}</style>{html}")
    return run.path / "report.md"
