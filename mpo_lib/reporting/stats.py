"""Stage `data`: Table 1 style counts per subset and split, rows dropped per reason, and
prompt/response token lengths (with the base model's tokenizer)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mpo_lib.method.data import Splits, length_stats
from mpo_lib.runtime.artifacts import Run, write_json
from mpo_lib.runtime.models import load_tokenizer


def run_data_stats(run: Run, splits: Splits) -> dict:
    def build(out_dir: Path) -> dict:
        lengths = length_stats(load_tokenizer(run), splits)
        write_json(out_dir / "token_lengths.json", lengths)
        summary = {name: {"mean": float(np.mean(v)), "median": float(np.median(v)), "p95": float(np.percentile(v, 95)),
                          "max": int(np.max(v))} for name, v in lengths.items()}
        prompts = lambda rows: len({row["prompt"] for row in rows})
        return {"files": splits.report, "train_rows": len(splits.train), "heldout_rows": len(splits.heldout),
                "train_prompts": prompts(splits.train), "heldout_prompts": prompts(splits.heldout),
                "eval_source": run.cfg.data.eval_prompts, "eval_candidates": prompts(splits.evaluation),
                "token_lengths": summary}

    return run.reuse_or_build("data", *data_spec(run.cfg), build)


def data_spec(cfg) -> tuple[dict, list[str]]:
    # what it counts is part of what it is: a run counted before prompts were counts again (no stage reads it)
    return {**cfg.data.settings(), "counts": ["rows", "unique_prompts"]}, ["base"]


def table1(metrics: dict):
    """Rows read, kept (and their distinct prompts) and dropped per reason, per subset/split file."""
    import pandas as pd
    rows = [{"file": name, "rows": part["read"], "kept": part["kept"], "unique prompts": part["unique_prompts"],
             **{f"dropped: {k}": v for k, v in part["dropped"].items()}} for name, part in metrics["files"].items()]
    return pd.DataFrame(rows).fillna(0).set_index("file")
