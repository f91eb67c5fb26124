"""Stage `rm`: a Bradley-Terry reward model (Eq. 1) trained with TRL's RewardTrainer from the base
model (as DeepSpeed-Chat does), with the paper's 5% validation split, then scored on held-out
pairs for Table 2 (accuracy) and Fig. 2 left (precision per reward-difference bin)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mpo_lib.method.data import fit_row, truncate_prompt
from mpo_lib.runtime.artifacts import Run, write_json
from mpo_lib.runtime.launch import run_stage
from mpo_lib.runtime.models import is_adapter, load_stage_model, load_tokenizer, lora_config
from mpo_lib.runtime.training import save_trained, train_and_summarise, trainer_args, weights_dtype


@torch.no_grad()
def score(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int, max_length: int,
          bf16: bool = False) -> list[float]:
    """Reward of each (prompt, response), batched by length, in the format RewardTrainer trained on
    (text + EOS, right padding). Long texts keep their end: the head reads the last token."""
    model.eval()
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    texts = [p + r + tokenizer.eos_token for p, r in zip(prompts, responses)]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    scores = [0.0] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True,
                          truncation=True, max_length=max_length)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            values = model(**batch.to(model.device)).logits.squeeze(-1).float().tolist()
        for i, value in zip(chunk, values):
            scores[i] = value
    return scores


def rm_rows(cfg, rows: list[dict]) -> list[dict]:
    subsets = cfg.rm.subsets or cfg.data.subsets
    return [r for r in rows if r["subset"] in subsets]


def run_reward(run: Run, train_rows: list[dict], heldout_rows: list[dict]) -> dict:
    cfg = run.cfg
    train_rows = rm_rows(cfg, train_rows)[: cfg.rm.max_rows]
    heldout_rows = rm_rows(cfg, heldout_rows)[: cfg.rm.eval_rows]

    def build(out_dir: Path) -> dict:
        trainer, parts = reward_trainer(run, train_rows, out_dir)
        metrics = train_and_summarise(trainer, cfg, out_dir)
        metrics["validation"] = {k.removeprefix("eval_"): v for k, v in trainer.evaluate(parts["test"]).items()}
        save_trained(trainer, out_dir, "base", run)

        # under ZeRO-3 (full fine-tuning only) the held-out pairs are scored by every worker together, each
        # forward gathering the shards of one layer at a time
        # (a 4-bit base keeps its adapter unmerged: merged, NF4 would re-quantise the update away)
        merge = is_adapter(trainer.model) and cfg.model.quantization is None
        model = trainer.model.merge_and_unload() if merge else trainer.model
        tokenizer = trainer.processing_class
        prompts = [truncate_prompt(tokenizer, r["prompt"], cfg.data.max_prompt_tokens) for r in heldout_rows]
        chosen = score(model, tokenizer, prompts, [r["chosen"] for r in heldout_rows],
                       cfg.resample.score_batch_size, cfg.rm.max_length, cfg.model.bf16)
        rejected = score(model, tokenizer, prompts, [r["rejected"] for r in heldout_rows],
                         cfg.resample.score_batch_size, cfg.rm.max_length, cfg.model.bf16)
        write_json(out_dir / "heldout_scores.json", {"chosen": chosen, "rejected": rejected,
                                                     "subset": [r["subset"] for r in heldout_rows]})
        metrics["heldout"] = heldout_accuracy(chosen, rejected, heldout_rows)
        return {"train_rows": len(parts["train"]), "train_rows_used": len(trainer.train_dataset),
                "validation_rows": len(parts["test"]), **metrics}

    return run.reuse_or_build("rm", *rm_spec(cfg), build)


def reward_trainer(run: Run, train_rows: list[dict], out_dir: Path):
    """TRL's RewardTrainer on the RM's pairs, fitted to the length budget, with the paper's 5% held back
    for validation: (trainer, {"train": ..., "test": ...})."""
    # imported here: TRL and datasets (~300 MB resident with peft), which the resampling and PPO
    # processes, importing score() from this module, need not carry
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    cfg = run.cfg
    tokenizer = load_tokenizer(run)
    rows = [fit_row(tokenizer, cfg, r) for r in train_rows]
    grouping = {}
    if cfg.rm.length_grouped:  # the sampler's lengths in characters: they sort pairs as tokens would
        rows = [{**r, "length": len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"]))} for r in rows]
        # columns kept: the trainer would drop `length` before its sampler reads it; the collator ignores it
        grouping = {"train_sampling_strategy": "group_by_length", "remove_unused_columns": False}
    parts = Dataset.from_list(rows).train_test_split(test_size=cfg.rm.eval_fraction, seed=cfg.seed)
    args = trainer_args(RewardConfig, cfg, cfg.rm, "rm", out_dir, eval_strategy="no",  # first: see trainer_args
                        **grouping)
    trainer = RewardTrainer(model=untrained_reward_model(run), args=args, train_dataset=parts["train"],
                            processing_class=tokenizer, peft_config=lora_config(cfg, "SEQ_CLS"))
    return trainer, parts


def untrained_reward_model(run: Run):
    """The base model with a fresh score head, drawn from the params' seed: the head is the only
    randomly initialised part of the RM, and it would otherwise come from whatever the process drew before."""
    torch.manual_seed(run.cfg.seed)
    return load_stage_model(run, "base", head="score", dtype=weights_dtype(run.cfg))


def rm_spec(cfg) -> tuple[dict, list[str]]:
    return {"rm": cfg.rm.model_dump(), "lora": cfg.model.lora and cfg.model.lora.model_dump(),
            "bf16": cfg.model.bf16, "data": cfg.data.settings(), "seed": cfg.seed,
            **cfg.workers()}, ["base"]


def shorter_wins(chosen: str, rejected: str) -> float:
    """The length heuristic baseline: 1 if the chosen response is the shorter, 0.5 on a tie."""
    return 0.5 if len(chosen) == len(rejected) else float(len(chosen) < len(rejected))


def heldout_accuracy(chosen_scores, rejected_scores, rows) -> dict:
    """Pairwise accuracy (chosen scored above rejected), per subset and overall, beside the heuristic."""
    chosen_scores, rejected_scores = np.asarray(chosen_scores), np.asarray(rejected_scores)
    report = {}
    for subset in sorted({r["subset"] for r in rows}) + ["all"]:
        idx = [i for i, r in enumerate(rows) if subset in ("all", r["subset"])]
        report[subset] = {
            "pairs": len(idx),
            "rm_accuracy": float(np.mean(chosen_scores[idx] > rejected_scores[idx])),
            "shorter_wins_accuracy": float(np.mean([shorter_wins(rows[i]["chosen"], rows[i]["rejected"])
                                                    for i in idx])),
        }
    return report


def train(run: Run) -> dict:
    """Eq. 1: the Bradley-Terry reward model, loss -log sigmoid(r(x, y_w) - r(x, y_l)); in this process or
    on launched workers (params: launch). A finished stage with these settings is reused."""
    return run_stage(run, "rm")
