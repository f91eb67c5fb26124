"""PPO's four models under DeepSpeed ZeRO (launch.deepspeed_config, full fine-tuning, launched workers),
as DeepSpeed-Chat's step 3 holds them: actor and critic are DeepSpeed engines with the config's ZeRO stage
(ZeRO-2: gradients and optimizer states partitioned; ZeRO-3: the weights too), the reference and the
reward model are engines without an optimizer, partitioned under ZeRO-3 and whole (stage 0) otherwise.

The kit's PPO loop stays the same: each micro-batch's loss is already weighted so that the gradients,
summed over micro-batches and workers, are the mini-batch's token mean (mpo_lib/method/ppo.py). DeepSpeed
averages over the workers instead of summing, so the loss is scaled by the world size; it clips the
gradient norm to 1 and steps the optimizer at the mini-batch's last micro-batch. The kit's cosine
schedule steps the optimizer's learning rates itself, once per optimizer step. EngineUpdate and PlainUpdate
are the two ways a trained role's loss becomes an update, behind one interface the PPO loop calls.

LoRA PPO (one backbone for four roles) does not use ZeRO: its trainable adapters are small, and the
workers sum their gradients with a plain all-reduce.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from mpo_lib.runtime.config import Config
from mpo_lib.runtime.distributed import all_reduce, rank_and_world


class EngineUpdate:
    """A role trained through its DeepSpeed engine."""

    def __init__(self, engine):
        self.engine = engine

    def backward(self, loss) -> None:
        self.engine.backward(loss * rank_and_world()[1], scale_wrt_gas=False)  # DeepSpeed averages over workers
        self.engine.step()  # an optimizer step at the mini-batch's last micro-batch only

    def step(self) -> None:
        """Nothing left: the engine stepped at the mini-batch's last micro-batch."""


class PlainUpdate:
    """A role trained by plain torch: gradients summed over the workers, norm clipped to 1, one AdamW step."""

    def __init__(self, params: list, optimizer):
        self.params, self.optimizer = params, optimizer

    def backward(self, loss) -> None:
        loss.backward()

    def step(self) -> None:
        for param in self.params:  # each worker holds its share of the token-mean gradient: the sum is the whole
            if param.grad is not None:  # the same parameters get gradients on every worker
                all_reduce(param.grad)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def in_deepspeed_workers(cfg: Config) -> bool:
    """Launched workers with a DeepSpeed config (one process never starts DeepSpeed)."""
    return cfg.launch.zero_stage() > 0 and rank_and_world()[1] > 1


def ppo_uses_zero(cfg: Config) -> bool:
    """Full-fine-tuning PPO in launched workers with a DeepSpeed config."""
    return in_deepspeed_workers(cfg) and cfg.model.lora is None


def engine_config(cfg: Config, trained: bool) -> dict:
    """The params' DeepSpeed JSON with its "auto" values filled from ppo (micro-batch, accumulation over a
    mini-batch, clipping at 1) and model.bf16; frozen models get no optimizer and,
    unless the config is ZeRO-3, no partitioning."""
    spec, world = cfg.ppo, rank_and_world()[1]
    config = cfg.launch.deepspeed()
    config.pop("train_batch_size", None)  # micro-batch x accumulation x workers: DeepSpeed works it out
    config.update({"train_micro_batch_size_per_gpu": spec.micro_batch,
                   "gradient_accumulation_steps": spec.mini_batch_size // (spec.micro_batch * world),
                   "gradient_clipping": 1.0,
                   "bf16": {"enabled": cfg.model.bf16},
                   "zero_allow_untested_optimizer": True})  # the kit's torch AdamW, as without ZeRO
    for key in ("optimizer", "scheduler"):  # the kit's own, with Table 8's actor and critic settings
        config.pop(key, None)
    zero = config.setdefault("zero_optimization", {})
    if not trained:
        zero.pop("offload_optimizer", None)
        if zero.get("stage") != 3:
            zero["stage"] = 0
    if unfilled := [key for key, value in zero.items() if value == "auto"]:
        raise ValueError(f"launch.deepspeed_config {cfg.launch.deepspeed_config}: zero_optimization "
                         f"{', '.join(unfilled)} is 'auto', which the kit's PPO cannot fill: give a number")
    return config


@contextlib.contextmanager
def partitioned_loading(cfg: Config):
    """Under ZeRO-3, models loaded inside this block come partitioned across the workers
    (transformers' deepspeed.zero.Init), never whole on one worker."""
    if cfg.launch.zero_stage() != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    active = HfDeepSpeedConfig(engine_config(cfg, trained=True))  # transformers holds a weak reference
    yield
    del active


def engines(cfg: Config, models: dict, optimizers: dict) -> dict:
    """role -> DeepSpeed engine, for the four PPO roles (the trained ones with their optimizers)."""
    import deepspeed

    wrapped = {}
    for role, model in models.items():
        optimizer = optimizers.get(role)
        wrapped[role], *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                 config=engine_config(cfg, optimizer is not None))
    return wrapped


@contextlib.contextmanager
def generation_model(model):
    """The module to sample from: `model` itself, or an engine's module; under ZeRO-3 with every weight
    gathered on every worker and the per-layer hooks removed (TRL's recipe for generation): a rollout runs
    as many forwards as its longest answer, which differs between the workers."""
    engine = model if hasattr(model, "zero_optimization_partition_weights") else None
    if engine is None or not engine.zero_optimization_partition_weights():
        yield model if engine is None else engine.module
        return
    import deepspeed
    from trl.models.utils import add_hooks, remove_hooks

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        remove_hooks(engine)
        try:
            yield engine.module
        finally:
            add_hooks(engine)


def state_dict_to_save(engine) -> dict | None:
    """The whole weights, gathered by every worker together (rank 0 receives them), under ZeRO-3; None
    otherwise: each worker's module holds them."""
    return engine._zero3_consolidated_16bit_state_dict() if engine.zero_optimization_partition_weights() else None


def save_engines(trained: dict, folder: Path, tag: str) -> None:
    """Every worker writes its partitions of weights and optimizer states, under folder/<role>/<tag>."""
    for role, engine in trained.items():
        engine.save_checkpoint(str(folder / role), tag=tag)


def load_engines(trained: dict, folder: Path, tag: str) -> None:
    for role, engine in trained.items():
        path, _ = engine.load_checkpoint(str(folder / role), tag=tag, load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"PPO checkpoint {folder}: no DeepSpeed checkpoint {tag} for the {role}")
