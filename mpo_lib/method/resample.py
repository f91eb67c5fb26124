"""Stages `resample` and `split` (Algorithm 1, the kit's own code).

resample: two completions per prompt from the SFT policy, sampled by the kit's own loop in
length-sorted batches with the KV cache (prompts encoded once, finished rows dropped at once),
from a separate copy of the weights in model.sample_dtype (bf16 sampling is ~1.9x faster on CPU),
stopped at the next "\\n\\nHuman:" turn, then scored by the reward model. Launched workers
(launch.num_processes > 1) each sample and score every world-th prompt, with their own seed.
split: a prompt whose two rewards differ by more than gamma goes to the easy set D^e as
(prompt, preferred, dispreferred); every other prompt goes to the hard set D^h.
Both write plain JSON (resample/pairs.json, split/easy.json and hard.json): readable without the
datasets library, which the PPO workers then do not import (~85 MB resident each).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from mpo_lib.method.data import truncate_prompt
from mpo_lib.method.reward import score
from mpo_lib.runtime.artifacts import Run, read_json, write_json
from mpo_lib.runtime.config import ConfigError
from mpo_lib.runtime.distributed import gather_objects, rank_and_world
from mpo_lib.runtime.launch import run_stage
from mpo_lib.runtime.models import DTYPES, load_stage_model, load_tokenizer, to_device


def positions(attention_mask):
    """Position ids that skip left padding; every forward pass over a sampled sequence must see
    the positions its tokens were sampled at."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def _next_tokens(logits, temperature: float, top_p: float):
    if temperature == 0:  # greedy (evaluation)
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1.0:  # nucleus: keep the smallest set of tokens whose mass reaches top_p
        sorted_probs, order = probs.sort(-1, descending=True)
        sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) > top_p] = 0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1).squeeze(-1)


def penalise_repeats(logits, generated, penalty: float):
    """CTRL's repetition penalty (Keskar et al., 2019; transformers' RepetitionPenaltyLogitsProcessor) over the
    response so far: the logit of a token already generated is divided by `penalty` if positive, multiplied
    if negative. The prompt is not penalised: an answer may repeat the question's words."""
    seen = logits.gather(1, generated)
    return logits.scatter(1, generated, torch.where(seen > 0, seen / penalty, seen * penalty))


@torch.no_grad()
def sample_batch(model, tokenizer, prompts: list[str], num_samples: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, stop: str | None = None,
                 repetition_penalty: float = 1.0):
    """num_samples completions of each prompt with the KV cache. Each prompt is encoded once and
    its cache copied per sample; a sequence leaves the batch as soon as it ends (EOS or `stop`),
    so the remaining steps run on fewer rows (generate() keeps finished rows to the last step).
    Returns (prompt + response ids, padded with pad after each end; prompt attention mask;
    padded prompt length)."""
    model.eval()
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    # the last position by index, not logits_to_keep=1: that slice is a strided view, and a frozen bf16 linear layer
    # on a strided 3-D input runs hundreds of times slower on a CPU (48 prompts' LM head: 2.9 s against 6 ms)
    last = torch.tensor([batch["input_ids"].shape[1] - 1], device=model.device)
    out = model(**batch, position_ids=positions(batch["attention_mask"]), use_cache=True, logits_to_keep=last)
    cache, logits = out.cache, out.logits[:, -1].repeat_interleave(num_samples, 0)
    cache.batch_repeat_interleave(num_samples)
    attention = batch["attention_mask"].repeat_interleave(num_samples, 0)
    prompt_mask = attention.clone()
    rows = torch.arange(len(attention), device=model.device)  # batch row -> output row
    responses = torch.full((len(rows), max_new_tokens), tokenizer.pad_token_id, device=model.device)
    stop_window = len(tokenizer(stop, add_special_tokens=False)["input_ids"]) + 2 if stop else 0
    for step in range(max_new_tokens):
        if repetition_penalty != 1.0 and step:
            logits = penalise_repeats(logits, responses[rows, :step], repetition_penalty)
        tokens = _next_tokens(logits, temperature, top_p)
        responses[rows, step] = tokens
        ended = tokens == tokenizer.eos_token_id
        if stop:
            tails = tokenizer.batch_decode(responses[rows, max(0, step + 1 - stop_window):step + 1])
            ended |= torch.tensor([stop in tail for tail in tails], device=model.device)
        if ended.all() or step + 1 == max_new_tokens:
            break
        if ended.any():
            keep = (~ended).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, tokens, attention = rows[keep], tokens[keep], attention[keep]
        attention = torch.cat([attention, attention.new_ones(len(rows), 1)], 1)
        logits = model(input_ids=tokens[:, None], attention_mask=attention, cache=cache, use_cache=True,
                       position_ids=positions(attention)[:, -1:]).logits[:, -1]
    prompt_ids = batch["input_ids"].repeat_interleave(num_samples, 0)
    return torch.cat([prompt_ids, responses], 1), prompt_mask, prompt_ids.shape[1]


def decode_responses(tokenizer, output, prompt_length: int, stop: str | None) -> tuple[list[str], list[bool]]:
    """The response texts, cut at `stop`, and whether `stop` is what ended each one."""
    texts = tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
    stopped = [bool(stop) and stop in text for text in texts]
    return [text.split(stop)[0] if cut else text for text, cut in zip(texts, stopped)], stopped


def generate(model, tokenizer, prompts: list[str], num_samples: int, max_new_tokens: int,
             batch_size: int, temperature: float = 1.0, top_p: float = 1.0, stop: str | None = None,
             seed: int = 0, repetition_penalty: float = 1.0) -> list[list[str]]:
    """num_samples sampled completions per prompt. Prompts are sorted by length so that a batch
    pads little; generation stops at EOS or at `stop`, and the text is cut there."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[str]] = [[] for _ in prompts]
    torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        output, _, prompt_length = sample_batch(model, tokenizer, [prompts[i] for i in chunk], num_samples,
                                                max_new_tokens, temperature, top_p, stop, repetition_penalty)
        for k, text in enumerate(decode_responses(tokenizer, output, prompt_length, stop)[0]):
            results[chunk[k // num_samples]].append(text)
    return results


def resample_prompts(cfg, rows: list[dict]) -> list[str]:
    prompts = sorted({r["prompt"] for r in rows})
    random.Random(cfg.seed).shuffle(prompts)
    return prompts[: cfg.resample.num_prompts]


def sample_and_score(run: Run, stage: str, prompts: list[str], num_samples: int, spec, score_batch_size: int,
                     repetition_penalty: float = 1.0) -> dict:
    """num_samples answers to each prompt from `stage`'s policy, decoded as `spec` (the resample or eval
    section: max_new_tokens, batch_size, temperature, top_p) and repetition_penalty say (the kit's sampler,
    or vLLM with launch.generation_backend: vllm), each scored by the run's RM. Launched workers each take every
    world-th prompt, with their own seed; every worker gets the results back in prompt order:
    {"samples": [[text] * num_samples], "rewards": [[float] * num_samples], "new_tokens", "seconds"}."""
    cfg = run.cfg
    tokenizer = load_tokenizer(run)
    rank, world = rank_and_world()
    mine, seed = prompts[rank::world], cfg.seed + rank
    started = time.time()
    if cfg.launch.generation_backend == "vllm":
        from mpo_lib.runtime.vllm_backend import vllm_generate
        samples = vllm_generate(run, stage, mine, num_samples, spec.max_new_tokens, spec.temperature, spec.top_p,
                                cfg.resample.stop, seed, repetition_penalty)
    else:
        policy = to_device(load_stage_model(run, stage), DTYPES[cfg.model.sample_dtype])
        samples = generate(policy, tokenizer, mine, num_samples, spec.max_new_tokens, spec.batch_size,
                           spec.temperature, spec.top_p, cfg.resample.stop, seed, repetition_penalty)
        del policy
    seconds = time.time() - started
    new_tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for row in samples for text in row)
    reward_model = to_device(load_stage_model(run, "rm", head="score"))
    by_sample = [score(reward_model, tokenizer, mine, [row[k] for row in samples], score_batch_size,
                       cfg.rm.max_length, cfg.model.bf16) for k in range(num_samples)]
    shards = gather_objects({"samples": samples, "rewards": [list(r) for r in zip(*by_sample)],
                             "tokens": new_tokens, "seconds": seconds})
    merged = {key: [None] * len(prompts) for key in ("samples", "rewards")}
    for r, shard in enumerate(shards):  # worker r holds prompts r, r + world, ...
        for key, rows in merged.items():
            rows[r::world] = shard[key]
    return {**merged, "new_tokens": sum(s["tokens"] for s in shards), "seconds": max(s["seconds"] for s in shards)}


def run_resample(run: Run, train_rows: list[dict]) -> dict:
    cfg = run.cfg
    spec = cfg.resample

    def build(out_dir: Path) -> dict:
        tokenizer = load_tokenizer(run)
        prompts = [truncate_prompt(tokenizer, p, cfg.data.max_prompt_tokens) for p in resample_prompts(cfg, train_rows)]
        result = sample_and_score(run, "sft", prompts, 2, spec, spec.score_batch_size)
        write_json(out_dir / "pairs.json", [  # the main worker writes
            {"prompt": prompt, "response_1": pair[0], "response_2": pair[1], "reward_1": r1, "reward_2": r2}
            for prompt, pair, (r1, r2) in zip(prompts, result["samples"], result["rewards"])])
        gaps = np.asarray([abs(r1 - r2) for r1, r2 in result["rewards"]])
        return {"prompts": len(prompts), "new_tokens": result["new_tokens"],
                "generation_seconds": round(result["seconds"], 1),
                "new_tokens_per_second": round(result["new_tokens"] / result["seconds"], 1),
                "reward_gap_mean": float(gaps.mean()), "reward_gap_median": float(np.median(gaps))}

    return run.reuse_or_build("resample", *resample_spec(cfg), build)


def resample_spec(cfg) -> tuple[dict, list[str]]:
    return {"resample": cfg.resample.model_dump(), "sample_dtype": cfg.model.sample_dtype,
            "max_prompt_tokens": cfg.data.max_prompt_tokens, "rm_max_length": cfg.rm.max_length,
            "seed": cfg.seed, **cfg.workers(), **cfg.generation()}, ["sft", "rm"]


def split_by_gap(pairs: list[dict], gamma: float) -> tuple[list[dict], list[dict]]:
    """Algorithm 1: |r1 - r2| > gamma -> easy (prompt, chosen, rejected); otherwise hard (prompt)."""
    easy, hard = [], []
    for pair in pairs:
        if abs(pair["reward_1"] - pair["reward_2"]) > gamma:
            first_wins = pair["reward_1"] > pair["reward_2"]
            easy.append({"prompt": pair["prompt"],
                         "chosen": pair["response_1"] if first_wins else pair["response_2"],
                         "rejected": pair["response_2"] if first_wins else pair["response_1"]})
        else:
            hard.append({"prompt": pair["prompt"]})
    return easy, hard


def load_pairs(run: Run) -> list[dict]:
    return read_json(run.require("resample") / "pairs.json")


def run_split(run: Run, name: str = "split", gamma: float | None = None) -> dict:
    """Stage `name`: D^e and D^h at `gamma` (split: split.gamma; split_gamma<g>: a further threshold)."""
    gamma = run.cfg.split.gamma if gamma is None else gamma

    def build(out_dir: Path) -> dict:
        pairs = load_pairs(run)
        easy, hard = split_by_gap(pairs, gamma)
        if not easy or not hard:
            key = "split.gamma" if name == "split" else "a split.gammas entry"
            raise ConfigError(empty_split_message(key, gamma, pairs, len(easy), len(hard)))
        write_json(out_dir / "easy.json", easy)
        write_json(out_dir / "hard.json", hard)
        return {"gamma": gamma, "prompts": len(pairs), "easy": len(easy), "hard": len(hard)}

    return run.reuse_or_build(name, *split_spec(gamma), build)


def split_spec(gamma: float) -> tuple[dict, list[str]]:
    # only gamma decides the sets; the reported gammas and figure bins do not re-run DPO and PPO
    return {"gamma": gamma}, ["resample"]


def sizes_by_gamma(run: Run, gammas: list[float]) -> dict[str, dict[str, int]]:
    """|D^e| and |D^h| for each threshold, from the same resampled pairs (Table 3: gamma 1 and 2)."""
    pairs = load_pairs(run)
    return {f"{g:g}": dict(zip(("easy", "hard"), map(len, split_by_gap(pairs, g)))) for g in gammas}


def gap_values(pairs: list[dict]) -> list[float]:
    return [abs(p["reward_1"] - p["reward_2"]) for p in pairs]


def empty_split_message(key: str, gamma: float, pairs: list[dict], easy: int, hard: int) -> str:
    """Which set is empty, and a gamma from the observed gaps: the median sends half the prompts each way."""
    quantiles = dict(zip(("min", "25%", "median", "75%", "max"),
                         np.quantile(gap_values(pairs), [0, 0.25, 0.5, 0.75, 1]).tolist()))
    return (f"{key}={gamma:g} leaves D^{'e' if not easy else 'h'} empty: |D^e|={easy}, |D^h|={hard} of "
            f"{len(pairs)} resampled prompts. Their reward gaps |r1 - r2|: "
            + ", ".join(f"{name} {value:.3g}" for name, value in quantiles.items())
            + f". A gamma between the 25% and 75% gaps puts prompts in both sets, e.g. {key}: "
            f"{quantiles['median']:.3g} (the median)")


def load_split(run: Run, side: str, stage: str = "split") -> list[dict]:
    """D^e ("easy") or D^h ("hard") of a split stage (split, or split_gamma<g>)."""
    return read_json(run.require(stage) / f"{side}.json")


def sample_pairs(run: Run) -> dict:
    """Algorithm 1, lines 3-4: two responses out1, out2 ~ pi^SFT(.|x) per training prompt, each scored by the RM."""
    return run_stage(run, "resample")


def split(run: Run, name: str = "split") -> dict:
    """Algorithm 1, lines 5-7: |score1 - score2| > gamma (the algorithm's theta; split.gamma, or a further
    threshold's split_gamma<g>) puts (x, preferred, dispreferred) in D^e, else x goes to D^h."""
    return run_stage(run, name)
