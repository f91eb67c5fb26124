import csv

import pytest

from mpo_lib.reporting.human_eval import COLUMNS, export_sheets, fleiss, import_labels, summarise
from mpo_lib.runtime.artifacts import read_json

# Wikipedia "Fleiss' kappa" worked example: 10 subjects, 14 raters, 5 categories, kappa = 0.210
WIKIPEDIA_COUNTS = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]


def make_items(n=12):
    return [{"id": f"item-{i}", "category": "helpful" if i < n // 2 else "harmless", "instruction": f"question {i}",
             "a": f"MPO says {i}\nover two lines, with a comma", "b": f"PPO says {i}"} for i in range(n)]


def fill(path, choose, encoding="utf-8"):
    """An annotator: label each row with choose(row) -> "1", "2" or "tie" (None drops the row)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["label"] = choose(row)
    rows = [row for row in rows if row["label"] is not None]
    with path.open("w", newline="", encoding=encoding) as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def prefer_a(row):
    return "1" if row["response_1"].startswith("MPO") else "2"


def test_sheets_are_blinded_and_the_order_is_random_but_fixed(tmp_path):
    sheets = export_sheets(make_items(40), tmp_path / "one", seed=3)
    assert len(sheets) == 3 and len({s.read_text() for s in sheets}) == 1
    assert csv.DictReader(sheets[0].open()).fieldnames == COLUMNS  # no column names a policy
    first = read_json(tmp_path / "one" / "key.json")["response_1"]
    assert 5 < sum(v == "a" for v in first.values()) < 35  # both orders occur
    export_sheets(make_items(40), tmp_path / "two", seed=3)
    assert read_json(tmp_path / "two" / "key.json")["response_1"] == first


def test_round_trip_recovers_the_outcome_for_a_despite_the_random_order(tmp_path):
    sheets = export_sheets(make_items(), tmp_path, seed=1)
    fill(sheets[0], prefer_a, encoding="utf-8-sig")     # always A; re-saved with a BOM, as spreadsheets do
    fill(sheets[1], lambda row: "tie" if row["item"] == "item-0" else prefer_a(row))
    fill(sheets[2], lambda row: "2" if row["response_1"].startswith("MPO") else "1")   # always B
    labels = import_labels(sheets, tmp_path / "key.json")
    assert labels["item-0"] == {"category": "helpful", "outcomes": ["win", "tie", "lose"]}
    assert labels["item-7"] == {"category": "harmless", "outcomes": ["win", "win", "lose"]}
    report = summarise(labels)
    assert report["helpful"]["items"] == 6 and report["helpful"]["annotators"] == 3
    assert report["helpful"]["win"] == pytest.approx((1 + 5 / 6 + 0) / 3)
    assert report["helpful"]["tie"] == pytest.approx(1 / 18)
    assert report["harmless"]["win"] == pytest.approx(2 / 3) and report["harmless"]["lose"] == pytest.approx(1 / 3)


def test_fleiss_kappa_matches_the_published_worked_example():
    ratings = [[category for category, n in enumerate(row) for _ in range(n)] for row in WIKIPEDIA_COUNTS]
    assert fleiss(ratings) == pytest.approx(0.210, abs=5e-4)
    assert fleiss([["win"] * 3, ["lose"] * 3, ["tie"] * 3]) == pytest.approx(1.0)


def test_summary_kappa_is_one_for_unanimous_annotators(tmp_path):
    sheets = export_sheets(make_items(), tmp_path, seed=0)
    for sheet in sheets:
        fill(sheet, lambda row: "tie" if row["item"] in ("item-1", "item-8") else prefer_a(row))
    report = summarise(import_labels(sheets, tmp_path / "key.json"))
    assert report["helpful"]["kappa"] == pytest.approx(1.0) and report["harmless"]["kappa"] == pytest.approx(1.0)


def test_a_bad_label_names_the_file_and_row(tmp_path):
    sheets = export_sheets(make_items(), tmp_path, seed=0)
    for sheet in sheets:
        fill(sheet, prefer_a)
    fill(sheets[1], lambda row: "maybe" if row["item"] == "item-2" else prefer_a(row))
    with pytest.raises(ValueError, match=r"sheet_2\.csv, row 4: label 'maybe' for item 'item-2'"):
        import_labels(sheets, tmp_path / "key.json")
    fill(sheets[1], lambda row: "" if row["item"] == "item-0" else prefer_a(row))
    with pytest.raises(ValueError, match=r"sheet_2\.csv, row 2: label ''"):
        import_labels(sheets, tmp_path / "key.json")


def test_unknown_and_missing_items_are_named(tmp_path):
    sheets = export_sheets(make_items(), tmp_path, seed=0)
    for sheet in sheets:
        fill(sheet, prefer_a)
    text = sheets[2].read_text().replace("item-5,", "item-99,")
    sheets[2].write_text(text)
    with pytest.raises(ValueError, match=r"sheet_3\.csv, row 7: unknown item 'item-99'"):
        import_labels(sheets, tmp_path / "key.json")
    fill(sheets[0], lambda row: None if row["item"] == "item-5" else prefer_a(row))
    with pytest.raises(ValueError, match=r"sheet_1\.csv: no row for item\(s\) \['item-5'\]"):
        import_labels(sheets, tmp_path / "key.json")
