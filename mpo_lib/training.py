"""What the TRL-based stages (SFT, reward, DPO) share: trainer arguments from params, and the
loss curve kept as metrics."""
from __future__ import annotations

from pathlib import Path

import torch

from .artifacts import write_json
from .config import Config, TrainConfig


def trainer_args(args_class, cfg: Config, section: TrainConfig, out_dir: Path, **extra):
    """TRL config from one params section. Gradient checkpointing is off (TRL defaults it on):
    at these sizes it costs time and saves little memory. Checkpoints are the stage's own job."""
    return args_class(
        output_dir=str(out_dir / "trainer"),
        learning_rate=section.learning_rate,
        per_device_train_batch_size=section.batch_size,
        gradient_accumulation_steps=section.grad_accum,
        max_steps=section.max_steps,
        num_train_epochs=section.num_epochs,
        warmup_steps=section.warmup_steps,
        weight_decay=section.weight_decay,
        max_length=section.max_length,
        bf16=cfg.model.bf16,
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
        **extra,
    )


def train_and_summarise(trainer, out_dir: Path) -> dict:
    """Train, keep the per-step log as log_history.json, return first/last values of the curve."""
    result = trainer.train()
    history = trainer.state.log_history
    write_json(out_dir / "log_history.json", history)
    steps = [entry for entry in history if "loss" in entry]
    return {
        "optimizer_steps": trainer.state.global_step,
        "train_loss_first": steps[0]["loss"] if steps else None,
        "train_loss_last": steps[-1]["loss"] if steps else None,
        "train_loss_mean": result.training_loss,
        "train_seconds": round(result.metrics["train_runtime"], 1),
    }
