"""Stage `sft`: supervised fine-tuning with TRL's SFTTrainer on (prompt, completion) rows, the loss
on completion tokens only (HH: the chosen response; TL;DR: the reference summary)."""
from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from mpo_lib.method.data import fit_row
from mpo_lib.runtime.artifacts import Run
from mpo_lib.runtime.launch import run_stage
from mpo_lib.runtime.lm_head import use_labelled_tokens_head
from mpo_lib.runtime.models import load_stage_model, load_tokenizer, lora_config
from mpo_lib.runtime.training import save_trained, train_and_summarise, trainer_args, weights_dtype


def run_sft(run: Run, rows: list[dict]) -> dict:
    cfg = run.cfg
    rows = rows[: cfg.sft.max_rows]

    def build(out_dir: Path) -> dict:
        tokenizer = load_tokenizer(run)
        data = Dataset.from_list([fit_row(tokenizer, cfg, r) for r in rows])
        args = trainer_args(SFTConfig, cfg, cfg.sft, "sft", out_dir, completion_only_loss=True)  # first: see trainer_args
        trainer = SFTTrainer(
            model=load_stage_model(run, "base", dtype=weights_dtype(cfg)), args=args,
            train_dataset=data, processing_class=tokenizer, peft_config=lora_config(cfg, "CAUSAL_LM"))
        use_labelled_tokens_head(trainer)
        metrics = train_and_summarise(trainer, cfg, out_dir)
        save_trained(trainer, out_dir, "base", run)
        return {"rows": len(rows), "rows_used": len(trainer.train_dataset), **metrics}

    return run.reuse_or_build("sft", *sft_spec(cfg), build)


def sft_spec(cfg) -> tuple[dict, list[str]]:
    return {"sft": cfg.sft.model_dump(), "lora": cfg.model.lora and cfg.model.lora.model_dump(),
            "bf16": cfg.model.bf16, "data": cfg.data.settings(), "seed": cfg.seed,
            # locally the evaluated TL;DR-SFT posts are left out of SFT: how many, decides which it trains on
            **({"evaluated_posts": cfg.eval.num_prompts} if cfg.data.eval_prompts == "tldr_sft_test" else {}),
            **cfg.workers()}, ["base"]


def train(run: Run) -> dict:
    """§3.1: pi^SFT, fine-tuned on the chosen responses (TL;DR: the reference summaries); in this
    process or on launched workers (params: launch). A finished stage with these settings is reused."""
    return run_stage(run, "sft")
