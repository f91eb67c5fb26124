import csv
import gzip
import json

import pytest

from mpo_lib import load_config
from mpo_lib.method.data import DataError, load_hh_subset, load_preferences, parse_hh_rows, split_dialogue

from conftest import DATA_DIR, ROOT, SMOKE


def first_rows(subset, n=50):
    with gzip.open(DATA_DIR / "hh-rlhf" / subset / "test.jsonl.gz", "rt") as handle:
        return [json.loads(next(handle)) for _ in range(n)]


@pytest.mark.parametrize("subset", ["helpful-base", "harmless-base"])
def test_real_dialogues_split_at_the_last_assistant_turn(subset):
    for row in first_rows(subset):
        prompt, response = split_dialogue(row["chosen"])
        assert prompt + response == row["chosen"]
        assert prompt.startswith("\n\nHuman:") and prompt.endswith("\n\nAssistant:")
        assert "\n\nAssistant:" not in response and "\n\nHuman:" not in response


def test_multi_turn_prompt_keeps_every_earlier_turn():
    dialogue = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine, thanks"
    assert split_dialogue(dialogue) == ("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:",
                                        " fine, thanks")


def test_unusable_rows_are_counted_per_reason_not_dropped_silently():
    rows = [{"chosen": "\n\nHuman: a\n\nAssistant: yes", "rejected": "\n\nHuman: a\n\nAssistant: no"},
            {"chosen": "\n\nHuman: no assistant here", "rejected": "\n\nHuman: a\n\nAssistant: no"},
            {"chosen": "\n\nHuman: a\n\nAssistant: yes", "rejected": "\n\nHuman: b\n\nAssistant: no"},
            {"chosen": "\n\nHuman: a\n\nAssistant:  ", "rejected": "\n\nHuman: a\n\nAssistant: no"}]
    loaded = parse_hh_rows(enumerate(rows, 1), "x", "mem")
    assert loaded.read == 4 and len(loaded.rows) == 1
    assert dict(loaded.dropped) == {"no_assistant_turn": 1, "prompts_differ": 1, "empty_response": 1}


def test_non_string_field_names_file_and_line():
    rows = [{"chosen": "\n\nHuman: a\n\nAssistant: yes", "rejected": "\n\nHuman: a\n\nAssistant: no"},
            {"chosen": ["not", "text"], "rejected": "x"}]
    with pytest.raises(DataError, match=r"file.jsonl:2: 'chosen' and 'rejected' must be strings"):
        parse_hh_rows(enumerate(rows, 1), "x", "file.jsonl")


def test_official_test_files_read_in_full():
    cfg = load_config(SMOKE)
    assert load_hh_subset(cfg, "helpful-base", "test").read == 2354
    assert load_hh_subset(cfg, "harmless-base", "test").read == 2312


def test_holdout_is_disjoint_from_training_rows():
    splits = load_preferences(load_config(SMOKE))
    held = {(r["prompt"], r["chosen"]) for r in splits.heldout}
    assert len(splits.heldout) == 80
    assert not held & {(r["prompt"], r["chosen"]) for r in splits.train}


def test_a_held_out_tldr_post_is_in_no_training_row():
    """batch13 compares 1,097 summary pairs of 905 posts: a row-wise holdout would train on held-out posts."""
    splits = load_preferences(load_config(ROOT / "params" / "smoke_tldr.yaml", {"data": {"max_train_rows": None}}))
    held = {r["prompt"] for r in splits.heldout}
    assert len(splits.heldout) == 40
    assert not held & {r["prompt"] for r in splits.train}
    assert len(splits.train) < 1097 - 40  # their other pairs left training


def test_tldr_follows_the_papers_protocol_locally_no_stage_trains_on_an_evaluated_post():
    """Evaluation on TL;DR-SFT test posts; locally those posts are the SFT file's, so SFT (and DPO, the RM) leave
    out every post a policy is evaluated on, and SFT every post the RM is tested on."""
    from mpo_lib.method.data import load_tldr_sft, sft_rows

    cfg = load_config(ROOT / "params" / "smoke_tldr.yaml", {"data": {"max_train_rows": None}})
    splits = load_preferences(cfg)
    evaluated = {r["prompt"] for r in splits.evaluation}
    posts = {r["prompt"] for r in load_tldr_sft(cfg, "test")}
    assert len(evaluated) == cfg.eval.num_prompts and evaluated <= posts
    assert {r["subset"] for r in splits.evaluation} == {"tldr-sft-test"}
    sft = {r["prompt"] for r in sft_rows(cfg, splits)}
    assert not sft & (evaluated | {r["prompt"] for r in splits.heldout})
    assert len(sft) >= len(posts) - cfg.eval.num_prompts - len(splits.heldout)
    assert not evaluated & {r["prompt"] for r in splits.train}
    held_out_pairs = load_preferences(load_config(ROOT / "params" / "smoke_tldr.yaml",
                                                  {"data": {"eval_prompts": "held_out_pairs"}}))
    assert held_out_pairs.evaluation == held_out_pairs.heldout  # HH's way: the held-out pairs' prompts


def test_table1_counts_the_distinct_prompts_tldr_compares_several_summaries_of():
    from mpo_lib.reporting.stats import table1

    splits = load_preferences(load_config(ROOT / "params" / "smoke_tldr.yaml"))
    table = table1({"files": splits.report})
    assert table.loc["batch13/test", "rows"] == 1097 and table.loc["batch13/test", "unique prompts"] == 905


def copy_hh(tmp_path, subset, payload: bytes):
    folder = tmp_path / "hh-rlhf" / subset
    folder.mkdir(parents=True)
    (folder / "test.jsonl.gz").write_bytes(payload)
    return load_config(SMOKE, {"data": {"data_dir": str(tmp_path), "subsets": [subset]}})


def test_json_line_cut_in_half_names_file_and_line(tmp_path):
    good = json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"})
    cfg = copy_hh(tmp_path, "harmless-base", gzip.compress(f"{good}\n{good[:30]}\n".encode()))
    with pytest.raises(DataError, match=r"harmless-base/test.jsonl.gz:2: not a JSON line"):
        load_hh_subset(cfg, "harmless-base", "test")


def test_truncated_gzip_names_the_file(tmp_path):
    payload = (DATA_DIR / "hh-rlhf" / "harmless-base" / "test.jsonl.gz").read_bytes()
    cfg = copy_hh(tmp_path, "harmless-base", payload[: len(payload) // 2])
    with pytest.raises(DataError, match=r"test.jsonl.gz: cannot be read after line \d+"):
        load_hh_subset(cfg, "harmless-base", "test")


def test_cli_data_fails_with_a_message_on_a_bad_file(tmp_path, capsys):
    from mpo_lib.__main__ import main

    params = tmp_path / "bad.yaml"
    params.write_text(SMOKE.read_text().replace("source: local", f"source: local\n  data_dir: {tmp_path}"))
    copy_hh(tmp_path, "helpful-base", b"not gzip at all")
    assert main(["data", "--params", str(params), "--run-dir", str(tmp_path / "run")]) == 2
    assert "helpful-base/test.jsonl.gz" in capsys.readouterr().err


def windows_copy(text: str) -> str:
    """What a Windows editor saves: a byte-order mark and CRLF line endings."""
    return "\ufeff" + text.replace("\n", "\r\n")


def test_bom_and_crlf_files_load_the_same_rows(tmp_path):
    """HH JSONL (gzipped), TL;DR comparisons (JSONL) and TL;DR SFT posts (CSV), each re-saved with a
    byte-order mark and CRLF endings, load with exactly the rows of the original files."""
    from mpo_lib.method.data import load_tldr_sft, load_tldr_subset

    with gzip.open(DATA_DIR / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt", encoding="utf-8") as handle:
        cfg = copy_hh(tmp_path, "harmless-base", gzip.compress(windows_copy(handle.read()).encode()))
    plain = load_config(SMOKE, {"data": {"subsets": ["harmless-base"]}})
    assert load_hh_subset(cfg, "harmless-base", "test").rows == load_hh_subset(plain, "harmless-base", "test").rows

    comparisons = tmp_path / "tldr" / "comparisons" / "batch18.json"
    comparisons.parent.mkdir(parents=True)
    original = (DATA_DIR / "tldr" / "comparisons" / "batch18.json").read_text(encoding="utf-8")
    comparisons.write_text(windows_copy(original), encoding="utf-8", newline="")
    posts = tmp_path / "tldr" / "sft" / "tldr_test_posts.csv"
    posts.parent.mkdir(parents=True)
    with open(DATA_DIR / "tldr" / "sft" / "tldr_test_posts.csv", newline="", encoding="utf-8") as source:
        reader = csv.DictReader(source)
        with open(posts, "w", newline="", encoding="utf-8-sig") as copy:  # csv ends records with CRLF
            writer = csv.DictWriter(copy, reader.fieldnames)
            writer.writeheader()
            writer.writerows(reader)
    assert posts.read_bytes().startswith(b"\xef\xbb\xbf") and b"\r\n" in posts.read_bytes()
    tldr = {"data": {"dataset": "tldr", "subsets": ["batch18"], "train_split": "test", "eval_split": "test"}}
    windows = load_config(SMOKE, {**tldr, "data": {**tldr["data"], "data_dir": str(tmp_path)}})
    upstream = load_config(SMOKE, tldr)
    assert load_tldr_subset(windows, "batch18", "test").rows == load_tldr_subset(upstream, "batch18", "test").rows
    assert load_tldr_sft(windows, "train") == load_tldr_sft(upstream, "train")
