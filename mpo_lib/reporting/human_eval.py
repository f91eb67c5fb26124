"""Table 5: double-blind human evaluation. Each annotator gets a CSV sheet of (instruction,
response_1, response_2) with the two policies in a random order per item and no policy names;
a separate key records which policy is response_1. The filled sheets are mapped back to A's
win/tie/lose, averaged over annotators per category, with Fleiss' kappa for their agreement."""
from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from mpo_lib.runtime.artifacts import read_json, write_json

COLUMNS = ["item", "category", "instruction", "response_1", "response_2", "label"]
OUTCOMES = ("win", "tie", "lose")


def export_sheets(items: list[dict], out_dir: str | Path, annotators: int = 3, seed: int = 0) -> list[Path]:
    """One sheet per annotator (sheet_1.csv, ...) and key.json. Items are {id, category,
    instruction, a, b}; the order of a and b is drawn once per item (all sheets share it, so the
    key is one mapping). Returns the sheet paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len({str(item["id"]) for item in items}) != len(items):
        raise ValueError("item ids must be unique")
    rng = random.Random(seed)
    first, rows = {}, []
    for item in items:
        order = rng.choice(["ab", "ba"])
        first[str(item["id"])] = order[0]
        rows.append({"item": str(item["id"]), "category": item["category"], "instruction": item["instruction"],
                     "response_1": item[order[0]], "response_2": item[order[1]], "label": ""})
    sheets = []
    for k in range(1, annotators + 1):
        path = out_dir / f"sheet_{k}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        sheets.append(path)
    write_json(out_dir / "key.json", {"seed": seed, "response_1": first,
                                      "category": {str(item["id"]): item["category"] for item in items}})
    return sheets


def _outcome(label: str, a_is_first: bool) -> str | None:
    label = label.strip().lower()
    if label == "tie":
        return "tie"
    if label in ("1", "2"):
        return "win" if (label == "1") == a_is_first else "lose"
    return None


def import_labels(sheet_paths: Sequence[str | Path], key_path: str | Path) -> dict[str, dict]:
    """item -> {"category", "outcomes": A's win/tie/lose, one per sheet in the given order}.
    Every sheet must label every item of the key once with 1, 2 or tie; errors name the file and
    the spreadsheet row (the header is row 1). Read as utf-8-sig: spreadsheets re-save with a BOM."""
    key = read_json(key_path)
    labels = {item: {"category": category, "outcomes": []} for item, category in key["category"].items()}
    for path in map(Path, sheet_paths):
        seen = set()
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            if not {"item", "label"} <= set(header):
                raise ValueError(f"{path}: the header row needs the columns item and label")
            for row_number, cells in enumerate(reader, start=2):
                if not any(cell.strip() for cell in cells):  # blank rows a spreadsheet leaves at the end
                    continue
                row = dict(zip(header, cells))
                item = (row.get("item") or "").strip()
                if item not in key["response_1"]:
                    raise ValueError(f"{path}, row {row_number}: unknown item {item!r} (not in {key_path})")
                if item in seen:
                    raise ValueError(f"{path}, row {row_number}: item {item!r} appears twice")
                outcome = _outcome(row.get("label") or "", key["response_1"][item] == "a")
                if outcome is None:
                    raise ValueError(f"{path}, row {row_number}: label {row.get('label')!r} for item {item!r} "
                                     "must be 1, 2 or tie")
                seen.add(item)
                labels[item]["outcomes"].append(outcome)
        missing = sorted(set(labels) - seen)
        if missing:
            raise ValueError(f"{path}: no row for item(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return labels


def fleiss(ratings: Sequence[Sequence]) -> float:
    """Fleiss' kappa of a subjects x raters table of category labels (any hashable labels).
    nan when every label is the same: chance agreement is then 1 and kappa undefined."""
    values = np.asarray(ratings, dtype=object)
    categories = sorted({v for row in values for v in row}, key=str)
    codes = np.vectorize(categories.index, otypes=[int])(values)
    counts, _ = aggregate_raters(codes, n_cat=len(categories))
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(fleiss_kappa(counts))


def summarise(labels: dict[str, dict]) -> dict[str, dict]:
    """Per category: items, annotators, A's win/tie/lose rates (each annotator's rate, averaged
    over annotators as the paper reports them) and Fleiss' kappa over the win/tie/lose labels."""
    report = {}
    for category in sorted({entry["category"] for entry in labels.values()}):
        table = [entry["outcomes"] for entry in labels.values() if entry["category"] == category]
        per_annotator = np.array([[sum(o == outcome for o in column) / len(column) for outcome in OUTCOMES]
                                  for column in zip(*table)])
        report[category] = {"items": len(table), "annotators": len(per_annotator),
                            **dict(zip(OUTCOMES, per_annotator.mean(0).tolist())), "kappa": fleiss(table)}
    return report
