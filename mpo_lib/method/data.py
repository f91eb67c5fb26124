"""HH-RLHF and TL;DR as (prompt, chosen, rejected) rows, from the hub or a local copy in the
upstream layout (data.data_dir or $MPO_DATA_DIR). Rows that cannot be used are counted per
reason and reported, never dropped silently.
"""
from __future__ import annotations

import csv
import gzip
import json
import random
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mpo_lib.runtime.config import Config

ASSISTANT = "\n\nAssistant:"


class DataError(ValueError):
    """A data file or row that cannot be read; the message names the file and line."""


def split_dialogue(dialogue: str) -> tuple[str, str] | None:
    """HH dialogue -> (prompt up to and including the last "\\n\\nAssistant:", the last assistant turn).
    None when there is no assistant turn."""
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        return None
    cut += len(ASSISTANT)
    return dialogue[:cut], dialogue[cut:]


@dataclass
class Loaded:
    """The usable rows of one file, and what was dropped: a count per reason, and the first lines."""
    source: str
    rows: list[dict] = field(default_factory=list)
    read: int = 0
    dropped: Counter = field(default_factory=Counter)
    dropped_lines: dict[str, list[int]] = field(default_factory=dict)

    def drop(self, reason: str, line_no: int) -> None:
        self.dropped[reason] += 1
        if len(lines := self.dropped_lines.setdefault(reason, [])) < 10:  # enough to find the pattern
            lines.append(line_no)


def parse_hh_rows(records, subset: str, where: str) -> Loaded:
    """A malformed record is an error. A well-formed dialogue that makes no preference pair (the HH
    test files hold 8 with an empty response) is dropped, counted, and its line kept."""
    out = Loaded(where)
    for line_no, record in records:
        out.read += 1
        if not isinstance(record.get("chosen"), str) or not isinstance(record.get("rejected"), str):
            raise DataError(f"{where}:{line_no}: 'chosen' and 'rejected' must be strings")
        chosen, rejected = split_dialogue(record["chosen"]), split_dialogue(record["rejected"])
        if chosen is None or rejected is None:
            out.drop("no_assistant_turn", line_no)
        elif chosen[0] != rejected[0]:
            out.drop("prompts_differ", line_no)
        elif not chosen[1].strip() or not rejected[1].strip():
            out.drop("empty_response", line_no)
        else:
            out.rows.append({"prompt": chosen[0], "chosen": chosen[1], "rejected": rejected[1], "subset": subset})
    return out


def _read_jsonl(path: Path):
    """(line number, record) per non-blank line. utf-8-sig drops a byte-order mark and text mode reads
    CRLF endings: what Windows editors and spreadsheet tools write is valid JSONL too."""
    opener = gzip.open if path.suffix == ".gz" else open
    line_no = 0
    try:
        with opener(path, "rt", encoding="utf-8-sig") as handle:
            for line_no, line in enumerate(handle, 1):
                if line.strip():
                    yield line_no, json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{line_no}: not a JSON line ({exc.msg})") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read after line {line_no}: {exc}") from None


def load_hh_subset(cfg: Config, subset: str, split: str) -> Loaded:
    data_dir = cfg.data_dir()
    if data_dir is None:
        import datasets
        hub = datasets.load_dataset("Anthropic/hh-rlhf", data_dir=subset, split=split)
        return parse_hh_rows(enumerate(hub, 1), subset, f"Anthropic/hh-rlhf/{subset}/{split}")
    path = data_dir / "hh-rlhf" / subset / f"{split}.jsonl.gz"
    if not path.exists():
        raise DataError(f"{path}: missing (data.subsets has {subset!r}, split {split!r}; "
                        f"expected the upstream layout hh-rlhf/<subset>/<split>.jsonl.gz)")
    return parse_hh_rows(_read_jsonl(path), subset, str(path))


def tldr_prompt(info: dict) -> str:
    return f"SUBREDDIT: r/{info['subreddit']}\n\nTITLE: {info['title']}\n\nPOST: {info['post']}\n\nTL;DR:"


def load_tldr_subset(cfg: Config, subset: str, split: str) -> Loaded:
    """OpenAI's comparisons (info, summaries[2], choice). Local: tldr/comparisons/<subset>.json
    in OpenAI's raw layout; hub: openai/summarize_from_feedback, config "comparisons", split `split`."""
    data_dir = cfg.data_dir()
    if data_dir is None:
        import datasets
        records = enumerate(datasets.load_dataset("openai/summarize_from_feedback", "comparisons", split=split), 1)
        where = f"openai/summarize_from_feedback/{split}"
    else:
        path = data_dir / "tldr" / "comparisons" / f"{subset}.json"
        if not path.exists():
            raise DataError(f"{path}: missing (data.subsets has {subset!r}; expected tldr/comparisons/<batch>.json)")
        records, where = _read_jsonl(path), str(path)
    out = Loaded(where)
    for line_no, record in records:
        out.read += 1
        if not record.get("info", {}).get("post"):  # the hub's validation split mixes in CNN/DM articles
            out.drop("no_reddit_post", line_no)
            continue
        try:
            texts = [summary["text"].strip() for summary in record["summaries"]]
            chosen, rejected = texts[record["choice"]], texts[1 - record["choice"]]
            prompt = tldr_prompt(record["info"])
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise DataError(f"{where}:{line_no}: not a comparison record ({exc!r})") from None
        if not chosen or not rejected:
            out.drop("empty_response", line_no)
        else:
            out.rows.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected, "subset": subset})
    return out


def load_tldr_sft(cfg: Config, split: str) -> list[dict]:
    """TL;DR-SFT posts with their human reference summaries. Hub: trl-lib/tldr's `split` (train: SFT, test: the
    paper's evaluation posts); local: tldr/sft/tldr_test_posts.csv, the test posts, whatever the split."""
    data_dir = cfg.data_dir()
    if data_dir is None:
        import datasets
        return [{"prompt": r["prompt"], "completion": r["completion"]}
                for r in datasets.load_dataset("trl-lib/tldr", split=split)]
    path = data_dir / "tldr" / "sft" / "tldr_test_posts.csv"
    with open(path, newline="", encoding="utf-8-sig") as handle:  # csv reads CRLF rows itself
        return [{"prompt": row["query"], "completion": " " + row["reference_responses"].strip()}
                for row in csv.DictReader(handle)]


def tldr_sft_test_posts(cfg: Config) -> list[dict]:
    """The evaluation posts of data.eval_prompts 'tldr_sft_test': the hub's TL;DR-SFT test split, or locally
    eval.num_prompts posts of the local file, drawn with the run's seed (SFT trains on the others)."""
    posts = load_tldr_sft(cfg, "test")
    if cfg.data_dir() is not None:
        posts = _shuffled(posts, cfg.seed)[: cfg.eval.num_prompts]
    return [{"prompt": post["prompt"], "subset": "tldr-sft-test"} for post in posts]


@dataclass
class Splits:
    """Training and held-out preference rows of a run, with what was read and dropped per subset, and the rows
    the evaluation prompts come from (data.eval_prompts: the held-out rows, or TL;DR-SFT test posts)."""
    train: list[dict]
    heldout: list[dict]
    report: dict
    evaluation: list[dict]


def load_preferences(cfg: Config) -> Splits:
    load_subset = load_tldr_subset if cfg.data.dataset == "tldr" else load_hh_subset
    train, heldout, loaded = [], [], {}
    for subset in cfg.data.subsets:
        part = _usable(load_subset(cfg, subset, cfg.data.train_split))
        loaded[f"{subset}/{cfg.data.train_split}"] = part
        if cfg.data.train_split == cfg.data.eval_split:
            rows, held = _holdout(part.rows, cfg, cfg.data.holdout)
        else:
            rows = _shuffled(part.rows, cfg.seed)
            evaluation = _usable(load_subset(cfg, subset, cfg.data.eval_split))
            loaded[f"{subset}/{cfg.data.eval_split}"] = evaluation
            held = evaluation.rows[: cfg.data.holdout or None]
        train += rows[: cfg.data.max_train_rows]
        heldout += held
    # mixed across subsets, so that a cap on rows later (sft.max_rows, ...) samples every subset
    heldout = _shuffled(heldout, cfg.seed)
    if cfg.data.eval_prompts == "tldr_sft_test":  # no stage trains on a post a policy is evaluated on
        evaluation = tldr_sft_test_posts(cfg)
        evaluated = {row["prompt"] for row in evaluation}
        train = [row for row in train if row["prompt"] not in evaluated]
    else:
        evaluation = heldout
    return Splits(_shuffled(train, cfg.seed), heldout, _report(loaded), evaluation)


def _usable(part: Loaded) -> Loaded:
    if not part.rows:
        raise DataError(f"{part.source}: no usable rows ({part.read} read"
                        + "".join(f"; {n} dropped as {reason}, lines {part.dropped_lines[reason]}"
                                  for reason, n in part.dropped.items()) + ")")
    return part


def _shuffled(rows: list[dict], seed: int) -> list[dict]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows


def _holdout(rows: list[dict], cfg: Config, size: int) -> tuple[list[dict], list[dict]]:
    """`size` held-out rows, and the training rows whose prompt is none of theirs: TL;DR compares several
    summary pairs of one post, and a held-out post must not be trained on by any stage."""
    rows = _shuffled(rows, cfg.seed)
    if size >= len(rows):
        raise DataError(f"data.holdout={size} leaves no training rows (only {len(rows)} usable rows)")
    held = {row["prompt"] for row in rows[:size]}
    return [row for row in rows[size:] if row["prompt"] not in held], rows[:size]


def _report(loaded: dict[str, Loaded]) -> dict:
    """Per file: rows read, kept and dropped, and the distinct prompts kept (TL;DR compares several summary
    pairs of one post: its prompts are fewer than its rows, and resampling draws one pair per prompt)."""
    return {name: {"file": part.source, "read": part.read, "kept": len(part.rows),
                   "unique_prompts": len({row["prompt"] for row in part.rows}), "dropped": dict(part.dropped),
                   "first_dropped_lines": part.dropped_lines} for name, part in loaded.items()}


def sft_rows(cfg: Config, splits: Splits) -> list[dict]:
    """SFT targets: HH chosen responses (the paper's choice); TL;DR reference summaries of the TL;DR-SFT posts,
    leaving out every post a policy is evaluated on or the RM is tested on."""
    if cfg.data.dataset == "tldr":
        evaluated = {row["prompt"] for row in splits.heldout + splits.evaluation}
        return [row for row in load_tldr_sft(cfg, "train") if row["prompt"] not in evaluated]
    return [{"prompt": row["prompt"], "completion": row["chosen"]} for row in splits.train]


def _truncate(tokenizer, text: str, max_tokens: int, keep_end: bool) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[-max_tokens:] if keep_end else ids[:max_tokens])


def truncate_prompt(tokenizer, prompt: str, max_tokens: int) -> str:
    """Keep the end of a long dialogue: the last turns are what the response answers."""
    return _truncate(tokenizer, prompt, max_tokens, keep_end=True)


def fit_row(tokenizer, cfg: Config, row: dict) -> dict:
    """A training row within data.max_prompt_tokens / max_response_tokens (A.1's context and answer
    lengths). TRL's reward trainer drops, rather than truncates, a pair longer than its max_length."""
    fitted = {"prompt": truncate_prompt(tokenizer, row["prompt"], cfg.data.max_prompt_tokens)}
    for key in ("chosen", "rejected", "completion"):
        if key in row:
            fitted[key] = _truncate(tokenizer, row[key], cfg.data.max_response_tokens, keep_end=False)
    return fitted


def length_stats(tokenizer, splits: Splits) -> dict[str, list[int]]:
    """Token lengths of prompts and responses (chosen and rejected) over every usable row."""
    rows = splits.train + splits.heldout
    encode = lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return {"prompt": encode([r["prompt"] for r in rows]),
            "response": encode([r["chosen"] for r in rows] + [r["rejected"] for r in rows])}


def corpus(cfg: Config, splits: Splits) -> list[str]:
    """The run's own text, on which the smoke profile trains its tokenizer."""
    return [row["prompt"] + row["completion"] for row in sft_rows(cfg, splits)]
