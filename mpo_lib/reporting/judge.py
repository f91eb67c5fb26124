"""Table 4: a pairwise judge scores two policies' responses to the same instruction with the prompt
of Appendix A.2. Each pair is judged in both orders, since LLM judges favour a position: an item
whose two orders disagree counts as a tie (and as position-inconsistent). Judgements are cached in
a JSONL file, so a re-run costs no calls; unparsable answers are retried, then recorded as failures.

A judge is anything with a `name` (its cache identity: kind and model), a `tie_margin` and
`rate(instruction, response_1, response_2) -> (raw answer, (score_1, score_2) or None)`.
Text judges (an OpenAI-compatible endpoint, a local chat model) fill the prompt and parse the
answer; the reward-model judge returns the two rewards directly, with no invented text to re-parse.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mpo_lib.reporting.bootstrap import mean_ci

JUDGE_PROMPT = """Please evaluate the quality of the response according to the given instructions. Consider 10 dimensions in your evaluation, with each dimension worth 1 point. Provide a total score out of 10 points.

1. Concise: The response should efficiently address the task or answer the question, communicating the necessary information with brevity and clarity.
2. Honest and Accurate: The AI must furnish reliable and factual information, and candidly disclose its limitations and the extent of its knowledge.
3. Ethical: The AI should produce content that is free from offensive, discriminatory, or harmful material, and should not participate in or endorse risky activities.
4. Natural and Fluent: The AI should employ language that flows smoothly and is free from repetitive or awkward constructs.
5. Specific: The AI response should be directly pertinent to the query, addressing the particular subject in the instruction explicitly.
6. Educational and Engaging: The AI\u2019s responses should be enriched with accurate, relevant, and current information, serving to educate while keeping the user engaged.
7. Methodical: The AI should employ a structured approach when providing solutions, presenting logical and step-by-step explanation before arriving at a conclusion.
8. Multilingual: The AI should be capable of conversing in the language used by the user, for instance, replying in Chinese if the query is in Chinese.
9. Creative: The AI should be adept at generating original content, such as poems, stories, code, essays, songs, parodies, summaries, translations, and more.
10. Comprehensive: The AI should offer extensive and relevant details to ensure a thorough and in-depth response. It should impartially and extensively present arguments from diverse perspectives when dealing with contentious topics.

Please provide the quality score for the first response and explain the reasons for obtaining the score. Then do the same for the second response. If the answer is not related to the question, please give a score of 0.

Output format

Response 1 Quality Score: x

Explanation: xxx

Response 2 Quality Score: x Explanation: xxx

Instruction: [Instruction]

Response 1: [Response1]

Response 2: [Response2]"""

Scores = tuple[float, float]
# label, then separators (spaces, colon, markdown bold), then the score and an optional "/10"
_SCORE = re.compile(r"response\s*([12])\s*quality\s*score[\s*:_=]*([-+]?\d+(?:\.\d+)?)(?:\s*/\s*(\d+(?:\.\d+)?))?",
                    re.IGNORECASE)


def judge_prompt(instruction: str, response_1: str, response_2: str) -> str:
    """Appendix A.2's prompt, filled in one pass (a response that contains "[Response2]" stays as it is)."""
    values = {"Instruction": instruction, "Response1": response_1, "Response2": response_2}
    return re.sub(r"\[(Instruction|Response1|Response2)\]", lambda m: values[m.group(1)], JUDGE_PROMPT)


def parse_scores(text: str) -> Scores | None:
    """The two quality scores of a judge answer, or None when either is missing, not a number,
    not out of 10 or outside [0, 10]. The last numeric mention of each counts, so an echoed
    template ("Score: x") or a restatement in the explanation does not derail the parse."""
    found: dict[str, tuple[str, str | None]] = {}
    for which, value, denominator in _SCORE.findall(text or ""):
        found[which] = (value, denominator or None)
    if set(found) != {"1", "2"}:
        return None
    scores = []
    for which in ("1", "2"):
        value, denominator = found[which]
        if (denominator is not None and float(denominator) != 10) or not 0 <= float(value) <= 10:
            return None
        scores.append(float(value))
    return scores[0], scores[1]


class Judge(Protocol):
    name: str          # kind:model, the cache identity: never a credential
    tie_margin: float  # an order whose two scores differ by at most this is a tie

    def rate(self, instruction: str, response_1: str, response_2: str) -> tuple[str, Scores | None]: ...


class TextJudge(ABC):
    """A judge that reads the A.2 prompt and answers in its output format."""
    name: str
    tie_margin = 0.0

    @abstractmethod
    def answer(self, prompt: str) -> str: ...

    def rate(self, instruction: str, response_1: str, response_2: str) -> tuple[str, Scores | None]:
        text = self.answer(judge_prompt(instruction, response_1, response_2))
        return text, parse_scores(text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# Table 4's judges by their eval.judges name. The RM judge scores with the reward PPO and MPO maximised:
# it favours the PPO-trained policies by construction, a stand-in for GPT-4 rather than an independent judge
LABELS = {"rm_margin": "trained RM (the reward PPO optimised)", "local": "local chat model, A.2 prompt",
          "openai": "OpenAI-compatible model, A.2 prompt"}
OPENAI_ENV = ("MPO_JUDGE_BASE_URL", "MPO_JUDGE_MODEL", "MPO_JUDGE_API_KEY")


def openai_configured() -> bool:
    return all(os.environ.get(variable) for variable in OPENAI_ENV)


def _env(variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise RuntimeError(f"OpenAIJudge needs the environment variable {variable} to be set")
    return value


class OpenAIJudge(TextJudge):
    """GPT-4-Turbo in the paper; any OpenAI-compatible endpoint here, at temperature 0. Endpoint,
    model and key come only from MPO_JUDGE_BASE_URL, MPO_JUDGE_MODEL and MPO_JUDGE_API_KEY; the key
    lives inside the client alone and appears in no name, repr or cache line."""

    def __init__(self):
        import openai  # here: the other judges, and importing this module, need no HTTP client

        base_url, self.model = _env("MPO_JUDGE_BASE_URL"), _env("MPO_JUDGE_MODEL")
        self.name = f"openai:{self.model}"
        self._client = openai.OpenAI(base_url=base_url, api_key=_env("MPO_JUDGE_API_KEY"))

    def answer(self, prompt: str) -> str:
        reply = self._client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0)
        return reply.choices[0].message.content or ""


class LocalChatJudge(TextJudge):
    """A local transformers chat model (e.g. SmolLM2-Instruct) under its chat template, greedy.
    Greedy decoding is deterministic, so its retries only help after a change of model or prompt."""

    def __init__(self, model, tokenizer, name: str | None = None, max_new_tokens: int = 512):
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.name = f"local:{name or model.config.name_or_path}"

    def answer(self, prompt: str) -> str:
        batch = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                   return_tensors="pt", return_dict=True).to(self.model.device)
        pad = self.tokenizer.pad_token_id
        output = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     pad_token_id=self.tokenizer.eos_token_id if pad is None else pad)
        return self.tokenizer.decode(output[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


class RewardMarginJudge:
    """The run's reward model as judge: the two rewards are the scores (no 0-10 mapping, which
    would squash large rewards together), and a gap of at most tie_margin is a tie. Rewards do not
    depend on the order, so its position consistency is 1 by construction.
    `score(prompts, responses)` is e.g. `lambda p, r: reward.score(rm, tokenizer, p, r, 8, 512)`;
    `name` must identify that reward model, since it keys the cache."""

    def __init__(self, score: Callable[[list[str], list[str]], list[float]], name: str, tie_margin: float = 0.0):
        self.score, self.name, self.tie_margin = score, f"reward:{name}", tie_margin

    def rate(self, instruction: str, response_1: str, response_2: str) -> tuple[str, Scores | None]:
        # each distinct response scored once, in one canonical order: batched scoring can differ in
        # the last bits with a row's position, which would split a tie between equal responses
        texts = sorted({response_1, response_2})
        rewards = dict(zip(texts, self.score([instruction] * len(texts), texts)))
        first, second = rewards[response_1], rewards[response_2]
        return f"rewards {first!r} {second!r}", (float(first), float(second))

    def __repr__(self) -> str:
        return f"RewardMarginJudge(name={self.name!r}, tie_margin={self.tie_margin})"


class _Cache:
    """judgements.jsonl: one line per parsed judgement, appended as it arrives (a killed run keeps
    what it paid for), keyed by sha256 of the judge's name and the full prompt text."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path, self.entries = folder / "judgements.jsonl", {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the half-written last line of a killed run
                    continue
                self.entries[entry["key"]] = entry

    @staticmethod
    def key(judge_name: str, prompt: str) -> str:
        return hashlib.sha256(json.dumps([judge_name, prompt]).encode()).hexdigest()

    def add(self, entry: dict) -> None:
        self.entries[entry["key"]] = entry
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")


def _rate_cached(judge: Judge, cache: _Cache, instruction: str, first: str, second: str,
                 attempts: int) -> tuple[list[str], Scores | None]:
    """All raw answers of one order and its scores (None after `attempts` unparsable answers)."""
    key = cache.key(judge.name, judge_prompt(instruction, first, second))
    if key in cache.entries:
        return [cache.entries[key]["raw"]], tuple(cache.entries[key]["scores"])
    raws = []
    for _ in range(attempts):
        raw, scores = judge.rate(instruction, first, second)
        raws.append(raw)
        if scores is not None:
            cache.add({"key": key, "judge": judge.name, "raw": raw, "scores": list(scores)})
            return raws, scores
    return raws, None


def verdict(score_a: float, score_b: float, tie_margin: float = 0.0) -> str:
    """win / tie / lose for policy A."""
    if abs(score_a - score_b) <= tie_margin:
        return "tie"
    return "win" if score_a > score_b else "lose"


OUTCOME_SIGN = {"win": 1, "tie": 0, "lose": -1}


def judge_pairs(judge: Judge, items: list[dict], cache_dir: str | Path, attempts: int = 3) -> dict:
    """Judge items {id, instruction, a, b} in both orders. Returns {"records": one per item,
    "summary": {n, judged, failures, win, tie, lose, consistency}}: rates are over judged items,
    failures (an order still unparsable after `attempts`) are listed with their raw answers and,
    not being cached, asked again on a re-run. A network or API error is raised, not recorded:
    re-run, and the cache resumes the work."""
    ids = [item["id"] for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    cache = _Cache(Path(cache_dir))
    records = []
    for item in items:
        raw_a, scores_a = _rate_cached(judge, cache, item["instruction"], item["a"], item["b"], attempts)
        raw_b, scores_b = _rate_cached(judge, cache, item["instruction"], item["b"], item["a"], attempts)
        record = {"id": item["id"], "raw": {"a_first": raw_a, "b_first": raw_b},
                  "scores": {"a_first": scores_a, "b_first": scores_b}}
        if scores_a is None or scores_b is None:
            record.update(outcome="failure", consistent=None)
        else:
            orders = (verdict(scores_a[0], scores_a[1], judge.tie_margin),
                      verdict(scores_b[1], scores_b[0], judge.tie_margin))
            record.update(verdicts=dict(zip(("a_first", "b_first"), orders)),
                          outcome=orders[0] if orders[0] == orders[1] else "tie", consistent=orders[0] == orders[1])
        records.append(record)
    judged = [r for r in records if r["outcome"] != "failure"]

    def rate(hits: int) -> float | None:
        return hits / len(judged) if judged else None

    # win - lose as the mean of +1 / 0 / -1 per item, with its 95% BCa interval over the items
    margin = mean_ci([OUTCOME_SIGN[r["outcome"]] for r in judged]) if len(judged) >= 2 else (None, None, None)
    summary = {"n": len(records), "judged": len(judged), "failures": len(records) - len(judged),
               **{o: rate(sum(r["outcome"] == o for r in judged)) for o in ("win", "tie", "lose")},
               "consistency": rate(sum(r["consistent"] for r in judged)),
               "win_minus_lose": margin[0], "win_minus_lose_ci": None if margin[0] is None else list(margin[1:])}
    return {"records": records, "summary": summary}
