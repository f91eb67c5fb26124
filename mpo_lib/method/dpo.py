"""Stage `dpo` (MPO's first stage) and the DPO ablations, with TRL's DPOTrainer (Eq. 2, sigmoid
loss, beta from params). Stage `dpo` starts from SFT with SFT as reference, on D^e;
an ablation (stages.ABLATIONS) names its own start, reference and pairs. With LoRA a reference
equal to the start is the start's weights with the adapter disabled; any other reference, every
reference in full fine-tuning and every reference of a 4-bit run (whose start is a stack of frozen
adapters) is a separate frozen copy.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from mpo_lib.method.data import fit_row
from mpo_lib.method.resample import load_pairs, load_split, split_by_gap
from mpo_lib.runtime import stages
from mpo_lib.runtime.artifacts import Run
from mpo_lib.runtime.config import DPOVariant
from mpo_lib.runtime.launch import run_stage
from mpo_lib.runtime.lm_head import use_labelled_tokens_head
from mpo_lib.runtime.models import is_adapter, load_stage_model, load_tokenizer, lora_config
from mpo_lib.runtime.training import save_trained, train_and_summarise, trainer_args, weights_dtype


def dpo_variant(run: Run, name: str) -> DPOVariant:
    found = stages.stage(run.cfg, name)
    if found.kind is not stages.DPO:
        raise ValueError(f"{name!r} is not a DPO stage of these params (dpo, or a DPO ablation in `ablations`)")
    return found.variant


def pair_sources(variant: DPOVariant) -> list[str]:
    """The stages a variant's pairs come from."""
    return {"easy": [variant.split], "offline": [], "full": ["resample"],
            "hard": [variant.split, "resample"]}[variant.data]


def dpo_pairs(run: Run, variant: DPOVariant, offline_rows: list[dict]) -> list[dict]:
    """The training pairs; resampled pairs prefer the higher reward."""
    data = variant.data
    if data == "easy":
        return load_split(run, "easy", variant.split)
    if data == "offline":
        return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in offline_rows]
    ordered = split_by_gap(load_pairs(run), gamma=-1.0)[0]
    if data == "full":
        return ordered
    hard = {row["prompt"] for row in load_split(run, "hard", variant.split)}
    return [pair for pair in ordered if pair["prompt"] in hard]


def with_trained_adapter(stacked, peft):
    """A stacked stage model (models.load_stage_model of a 4-bit run) with a new trainable adapter ("default",
    what save_stage_model keeps) active on top of its frozen ones. The reference is then a separate copy: TRL's
    own adapter reference (its "ref" copy of "default" alone) would drop the frozen chain."""
    frozen = list(stacked.peft_config)
    stacked.add_adapter("default", peft)
    stacked.base_model.set_adapter([*frozen, "default"], inference_mode=True)  # all frozen, then the new one on
    for name, param in stacked.named_parameters():
        param.requires_grad_(".default." in name)
    return stacked


def run_dpo(run: Run, offline_rows: list[dict], name: str = "dpo") -> dict:
    cfg = run.cfg
    variant = dpo_variant(run, name)
    pairs = dpo_pairs(run, variant, offline_rows)[: cfg.dpo.max_rows]
    if not pairs:
        raise ValueError(f"stage {name}: no {variant.data} pairs to train on (see the split stage's sizes)")

    def build(out_dir: Path) -> dict:
        tokenizer = load_tokenizer(run, padding_side="left")
        data = Dataset.from_list([fit_row(tokenizer, cfg, p) for p in pairs])
        peft = lora_config(cfg, "CAUSAL_LM")
        args = trainer_args(DPOConfig, cfg, cfg.dpo, name, out_dir, beta=cfg.dpo.beta)  # first: see trainer_args
        load = partial(load_stage_model, run, dtype=weights_dtype(cfg))
        model = load(variant.init)
        if is_adapter(model):  # a 4-bit run's chain, unmerged: the new adapter trains on top of its frozen ones
            model = with_trained_adapter(model, peft)
            peft = None
        adapter_is_reference = peft is not None and variant.reference == variant.init
        reference = None if adapter_is_reference else load(variant.reference)
        if is_adapter(reference):  # TRL calls a reference as a transformers model: the stack's layers live in it
            reference = reference.get_base_model()
        trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer,
                             peft_config=peft)
        use_labelled_tokens_head(trainer)
        metrics = train_and_summarise(trainer, cfg, out_dir)
        steps = [e for e in trainer.state.log_history if "rewards/margins" in e]
        # the logged margins of a one-epoch run are on pairs not yet trained on; after training, the
        # margin over the same pairs says whether the policy moved towards the preferred responses
        after = trainer.evaluate(data.select(range(min(len(data), cfg.dpo.eval_pairs))))
        save_trained(trainer, out_dir, variant.init, run)
        return {"pairs": len(pairs), "variant": variant.model_dump(), **metrics,
                "reward_margin_first": steps[0]["rewards/margins"] if steps else None,
                "reward_margin_last": steps[-1]["rewards/margins"] if steps else None,
                "reward_margin_after": after["eval_rewards/margins"],
                "reward_accuracy_after": after["eval_rewards/accuracies"]}

    return run.reuse_or_build(name, *dpo_spec(run, name), build)


def dpo_spec(run: Run, name: str) -> tuple[dict, list[str]]:
    cfg, variant = run.cfg, dpo_variant(run, name)
    settings = {"dpo": cfg.dpo.model_dump(), "variant": variant.model_dump(),
                "lora": cfg.model.lora and cfg.model.lora.model_dump(), "bf16": cfg.model.bf16, "seed": cfg.seed,
                "data": cfg.data.settings(), **cfg.workers()}
    return settings, sorted({variant.init, variant.reference, *pair_sources(variant)})


def train(run: Run, name: str = "dpo") -> dict:
    """Eq. 2: DPO, loss -log sigmoid(beta log pi(y_w|x)/pi_ref(y_w|x) - beta log pi(y_l|x)/pi_ref(y_l|x));
    `dpo` is MPO's first stage (D^e, from and against pi^SFT), any other name a DPO ablation."""
    return run_stage(run, name)
