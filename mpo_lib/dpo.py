"""Stage `dpo` (MPO's first stage) and its baselines, with TRL's DPOTrainer (Eq. 2, sigmoid loss,
beta from params). The policy starts from SFT and the reference is SFT: with LoRA, the SFT
weights with the adapter disabled; in full fine-tuning, a separate frozen copy.

dpo.data chooses the pairs: easy (D^e, MPO) -> stage `dpo`; full (every resampled pair, the
higher-reward sample preferred) -> `dpo_full`; offline (the dataset's own pairs) -> `dpo_base`.
"""
from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from .artifacts import Run
from .data import fit_row
from .models import load_stage_model, load_tokenizer, lora_config, save_stage_model
from .resample import load_pairs, load_split, split_by_gap
from .training import train_and_summarise, trainer_args

STAGE_BY_DATA = {"easy": "dpo", "full": "dpo_full", "offline": "dpo_base"}


def dpo_stage_name(cfg) -> str:
    return STAGE_BY_DATA[cfg.dpo.data]


def dpo_pairs(run: Run, offline_rows: list[dict]) -> tuple[list[dict], list[str]]:
    """The training pairs and the stages they come from."""
    choice = run.cfg.dpo.data
    if choice == "easy":
        return load_split(run, "easy"), ["split"]
    if choice == "full":
        return split_by_gap(load_pairs(run), gamma=-1.0)[0], ["resample"]
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in offline_rows], []


def run_dpo(run: Run, offline_rows: list[dict]) -> dict:
    cfg = run.cfg
    pairs, sources = dpo_pairs(run, offline_rows)
    pairs = pairs[: cfg.dpo.max_rows]

    def build(out_dir: Path) -> dict:
        tokenizer = load_tokenizer(run, padding_side="left")
        data = Dataset.from_list([fit_row(tokenizer, cfg, p) for p in pairs])
        peft = lora_config(cfg, "CAUSAL_LM")
        trainer = DPOTrainer(
            model=load_stage_model(run, "sft"),
            ref_model=None if peft else load_stage_model(run, "sft"),
            args=trainer_args(DPOConfig, cfg, cfg.dpo, out_dir, beta=cfg.dpo.beta),
            train_dataset=data, processing_class=tokenizer, peft_config=peft)
        metrics = train_and_summarise(trainer, out_dir)
        steps = [e for e in trainer.state.log_history if "rewards/margins" in e]
        # the logged margins of a one-epoch run are on pairs not yet trained on; after training, the
        # margin over the same pairs says whether the policy moved towards the preferred responses
        after = trainer.evaluate(data)
        save_stage_model(trainer.model, out_dir, "sft", run)
        return {"pairs": len(pairs), "data": cfg.dpo.data, **metrics,
                "reward_margin_first": steps[0]["rewards/margins"] if steps else None,
                "reward_margin_last": steps[-1]["rewards/margins"] if steps else None,
                "reward_margin_after": after["eval_rewards/margins"],
                "reward_accuracy_after": after["eval_rewards/accuracies"]}

    settings = {"dpo": cfg.dpo.model_dump(), "lora": cfg.model.lora and cfg.model.lora.model_dump(),
                "bf16": cfg.model.bf16, "seed": cfg.seed, "data": cfg.data.model_dump(exclude={"data_dir"})}
    return run.run_stage(dpo_stage_name(cfg), settings, ["sft", *sources], build)
