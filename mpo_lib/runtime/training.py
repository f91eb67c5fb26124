"""What the TRL-based stages (SFT, reward, DPO) share: trainer arguments from params, checkpoints
to resume from, and the loss curve kept as metrics."""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch

from mpo_lib.runtime.artifacts import announce_resume, write_json
from mpo_lib.runtime.config import Config, TrainConfig
from mpo_lib.runtime.distributed import is_main_process
from mpo_lib.runtime.models import save_stage_model
from mpo_lib.runtime.tracking import tensorboard_callbacks, trl_arguments
from mpo_lib.runtime.zero import in_deepspeed_workers


def weights_dtype(cfg: Config) -> torch.dtype:
    """What a TRL stage loads its models in. Under DeepSpeed with model.bf16, bf16: the engine casts the weights
    to bf16 before it makes its fp32 master copies, so loading them so changes nothing but halves what each
    worker holds while loading (whole models under ZeRO-2). Otherwise fp32, trained under bf16 autocast."""
    return torch.bfloat16 if cfg.model.bf16 and in_deepspeed_workers(cfg) else torch.float32


def trainer_args(args_class, cfg: Config, section: TrainConfig, stage: str, out_dir: Path, **extra):
    """TRL config from one params section. Gradient checkpointing only where the section asks for it
    (TRL defaults it on): at small sizes it costs time and saves little memory. A checkpoint every section.save_steps
    optimizer steps, only the last one kept, in <stage>.partial/trainer/: a killed stage resumes there.
    Logging as params `tracking` says (mpo_lib.runtime.tracking). Made before the stage's models are loaded: in launched
    workers under ZeRO-3, while it exists, transformers loads each model
    already partitioned (deepspeed.zero.Init), never whole on one worker."""
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
        gradient_checkpointing=section.gradient_checkpointing,
        logging_steps=1,
        save_strategy="steps",
        save_steps=section.save_steps,
        save_total_limit=1,
        **trl_arguments(cfg, stage),
        seed=cfg.seed,
        **({"optim": cfg.model.optimizer} if cfg.model.optimizer else {}),
        **extra,
    )


def last_checkpoint(folder: Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint-N in a TRL output folder, with its step. Transformers writes
    trainer_state.json last and in place, so a checkpoint without a readable one was cut short by a
    kill; it is removed, with the older ones, so that only the checkpoint resumed from remains."""
    complete = []
    for path in folder.glob("checkpoint-*"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            complete.append((json.loads((path / "trainer_state.json").read_text())["global_step"], path))
    newest = max(complete, default=None)
    for path in folder.glob("checkpoint-*") if is_main_process() else ():
        if newest is None or path != newest[1]:
            shutil.rmtree(path)
    return newest


def train_and_summarise(trainer, cfg: Config, out_dir: Path) -> dict:
    """Train (from the last checkpoint of an interrupted attempt, if there is one), keep the per-step
    log as log_history.json (and in TensorBoard, if tracked there), return first/last values of the curve."""
    for callback in tensorboard_callbacks(cfg, out_dir):
        trainer.add_callback(callback)
    resume = last_checkpoint(Path(trainer.args.output_dir))
    if resume:
        announce_resume(out_dir, *resume)
    result = trainer.train(resume_from_checkpoint=str(resume[1]) if resume else None)
    history = trainer.state.log_history  # restored from the checkpoint: the whole curve
    write_json(out_dir / "log_history.json", history)
    steps = [entry for entry in history if "loss" in entry]
    return {
        "optimizer_steps": trainer.state.global_step,
        "resumed_at_step": resume[0] if resume else 0,
        "train_loss_first": steps[0]["loss"] if steps else None,
        "train_loss_last": steps[-1]["loss"] if steps else None,
        # over the whole curve: result.training_loss covers only the steps since a resume
        "train_loss_mean": sum(s["loss"] for s in steps) / len(steps) if steps else result.training_loss,
        "train_seconds": round(result.metrics["train_runtime"], 1),
    }


def save_trained(trainer, out_dir: Path, base_stage: str, run) -> None:
    """Save the trainer's model as the stage's (models.save_stage_model). Under ZeRO-3, where each worker
    holds a shard of every weight, every worker calls this: they gather the shards together, layer by
    layer, and the main process writes the whole weights."""
    zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if zero3 else None
    save_stage_model(trainer.model, out_dir, base_stage, run, state_dict)
