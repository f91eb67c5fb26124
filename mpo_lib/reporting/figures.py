"""Fig. 2 of the paper from a run (RM precision per reward-difference bin, left; resampled pairs per
reward-difference bin, right), token-length histograms and the training curves."""
from __future__ import annotations

import itertools
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mpo_lib.method.resample import gap_values, load_pairs
from mpo_lib.reporting.paper import RM_ACCURACY
from mpo_lib.runtime.artifacts import Run, read_json
from mpo_lib.runtime.config import PROJECT_ROOT


def _bins(gaps: np.ndarray, edges: list[float]):
    """(label, mask) per bin; the last bin is open-ended like the paper's."""
    bounds = list(edges) + [np.inf]
    for low, high in itertools.pairwise(bounds):
        label = f"{low:g}-{high:g}" if np.isfinite(high) else f">{low:g}"
        yield label, (gaps >= low) & (gaps < high)


def precision_by_gap(run: Run, edges: list[float]) -> list[dict]:
    """Fig. 2 left: on held-out pairs, the share the RM ranks correctly within each |reward gap| bin."""
    scores = read_json(run.require("rm") / "heldout_scores.json")
    chosen, rejected = np.asarray(scores["chosen"]), np.asarray(scores["rejected"])
    return [{"bin": label, "pairs": int(mask.sum()),
             "precision": float(np.mean(chosen[mask] > rejected[mask])) if mask.any() else None}
            for label, mask in _bins(np.abs(chosen - rejected), edges)]


def pairs_by_gap(run: Run, edges: list[float]) -> list[dict]:
    """Fig. 2 right: resampled pairs per |reward gap| bin."""
    gaps = np.asarray(gap_values(load_pairs(run)))
    return [{"bin": label, "pairs": int(mask.sum())} for label, mask in _bins(gaps, edges)]


def _bar(rows: list[dict], key: str, ylabel: str, title: str, path, paper: tuple[str, float] | None = None) -> None:
    """Bars per reward-gap bin (counts are counts from 0); `paper`: a (label, value) line where the scales compare."""
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    bars = ax.bar([r["bin"] for r in rows], [r[key] or 0 for r in rows], color="#4c72b0")
    ax.bar_label(bars, labels=[f"n={r['pairs']}" for r in rows], fontsize=8)
    top = max([r[key] or 0 for r in rows] + [paper[1] if paper else 0, 1e-9])
    if paper:  # the line labelled just above it, at the left, clear of the bars' counts
        ax.axhline(paper[1], color="#c44e52", ls="--", lw=1)
        ax.text(0.01, paper[1], paper[0], color="#c44e52", fontsize=7, va="bottom", transform=ax.get_yaxis_transform())
    ax.set_ylim(0, 1.25 * top)
    ax.set_xlabel("reward difference |r(y1) - r(y2)|")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_fig2_left(run: Run, rows: list[dict]):
    """With the paper's RM accuracy over all gaps (Table 2) beside it: both are shares of pairs ranked right."""
    path = run.figure_path("fig2_left_rm_precision.png")
    paper = (f"paper, all gaps (Table 2): {RM_ACCURACY[run.cfg.data.dataset]:.0%}", RM_ACCURACY[run.cfg.data.dataset])
    _bar(rows, "precision", "RM precision", "Fig. 2 left: RM precision per reward gap", path, paper)
    return path


def plot_fig2_right(run: Run, rows: list[dict]):
    path = run.figure_path("fig2_right_pairs_per_gap.png")
    _bar(rows, "pairs", "resampled pairs", "Fig. 2 right: pairs per reward gap", path)
    return path


def copy_to_repository(run: Run) -> list:
    """Profiles with copy_figures: true publish their figures (and tables.md) under the repository's figures/."""
    if not run.cfg.copy_figures:
        return []
    target = PROJECT_ROOT / "figures"
    target.mkdir(exist_ok=True)
    published = [path for path in sorted((run.path / "figures").iterdir()) if path.suffix in (".png", ".md")]
    return [shutil.copy2(path, target / path.name) for path in published]


def plot_token_lengths(run: Run):
    """Prompt and response token-length histograms (notebook 00)."""
    lengths = read_json(run.require("data") / "token_lengths.json")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, (name, values) in zip(axes, lengths.items()):
        ax.hist(values, bins=50, color="#4c72b0")
        ax.set_xlabel(f"{name} tokens")
        ax.set_ylabel("rows")
        ax.set_yscale("log")
    fig.tight_layout()
    path = run.figure_path("token_lengths.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def smoothed(values: list[float]) -> np.ndarray:
    """An exponential moving average with a half-life of a tenth of the curve, bias-corrected at the
    start (pandas' adjust=True): per-step losses of small batches are mostly noise."""
    import pandas as pd
    return pd.Series(values, dtype=float).ewm(halflife=max(1.0, len(values) / 10)).mean().to_numpy()


def _curve(ax, steps: list, values: list[float], label: str | None = None) -> None:
    """The raw per-step values, faint, under their smoothed curve."""
    line, = ax.plot(steps, values, alpha=0.3, lw=1)
    ax.plot(steps, smoothed(values), color=line.get_color(), lw=2, label=label)


def plot_training_curves(run: Run, stage: str, keys: list[str]):
    """Per-step training curves of a TRL stage, from its log_history.json (raw faint, smoothed bold)."""
    history = read_json(run.require(stage) / "log_history.json")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(entry["step"], entry[key]) for entry in history if key in entry]
        if points:
            _curve(ax, *map(list, zip(*points)))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
    fig.suptitle(stage, fontsize=10)
    fig.tight_layout()
    path = run.figure_path(f"{stage}_curves.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_ppo_curves(run: Run, stages: list[str], keys=("reward_mean", "kl_to_reference")):
    """Reward and KL-to-reference per PPO step, one line per PPO stage (raw faint, smoothed bold; notebook 05)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.8 * len(keys), 3.3), squeeze=False)
    for stage in stages:
        steps = read_json(run.require(stage) / "steps.json")
        for ax, key in zip(axes[0], keys):
            _curve(ax, [s["step"] for s in steps], [s[key] for s in steps], label=stage)
    for ax, key in zip(axes[0], keys):
        ax.set_xlabel("PPO step")
        ax.set_ylabel(key)
        ax.legend()
    fig.tight_layout()
    path = run.figure_path("ppo_reward_kl.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
