"""`python -m mpo_lib pipeline --params X --dry-run`: what each stage of a run would do at scale,
before any GPU is booked. Per stage: how it is launched, the world size, the per-device batch,
gradient accumulation and effective global batch, the number of optimizer steps, the paper's
hyper-parameters under Table 8's names, and an estimate of memory per device.

Nothing is downloaded or trained. Parameter counts come from the model's config (built on the meta
device, so exact); a hub model that is not in the local cache uses its published config below.
Row counts come from the local data when params point there, else from the paper's Table 1; |D^e|
and |D^h| come from the run's split when it has finished, else from the paper's ratio (§4.2: 20K easy
and 60K hard of 80K prompts at gamma = 2), and say so.

Memory is an estimate, good to about ±30%: model states with the ZeRO paper's accounting for
mixed-precision AdamW (Rajbhandari et al., 2020: 2 bytes of bf16 weights, 2 of gradients (4 where
the DeepSpeed JSON accumulates them in fp32) and 12 of fp32 master weights and moments per
parameter, ZeRO-1/2/3 partitioning the optimizer states, then the gradients, then the weights,
across the processes); activations per micro-batch after Korthikanti et al. (2022) with fused
attention (34 bytes x sequence x hidden per layer, 2 per layer and one layer's worth with gradient
checkpointing) plus the logits; the KV cache for generation (PPO under ZeRO-3: with the policy's
weights, gathered whole to generate).
LoRA trains only its adapters (fp32 weights, gradients and moments: 16 bytes a parameter; 10 with
the paged 8-bit optimizer); a 4-bit base holds about 0.52 bytes a parameter (NF4 with double
quantisation).
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

import torch

from mpo_lib.reporting import paper
from mpo_lib.runtime import stages as registry
from mpo_lib.runtime.config import Config, ConfigError

GB = 2**30
# config.json of models a dry run may plan for without the hub (public values)
PUBLISHED_CONFIGS = {
    "meta-llama/Llama-2-7b-hf": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                                 "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                                 "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False},
    "smollm2-135m-instruct": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
                              "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                              "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": True},
}
# Table 1: training rows per subset, for a dry run that cannot read the data


@dataclass
class Architecture:
    params: int          # causal LM, tied embeddings counted once
    embedding_params: int  # input embeddings and LM head (bitsandbytes leaves them unquantised)
    largest_layer: int   # the largest module's own parameters (ZeRO-3 gathers one at a time)
    lora_params: int     # the adapter's parameters for model.lora (0 without LoRA)
    hidden: int
    layers: int
    kv_width: int        # key/value heads x head dimension
    vocab: int
    max_position: int


def architecture(cfg: Config) -> Architecture:
    from transformers import AutoConfig, LlamaConfig

    name = cfg.model.name
    if name == "tiny":
        tiny = cfg.model.tiny
        config = LlamaConfig(vocab_size=tiny.vocab_size, hidden_size=tiny.hidden_size,
                             intermediate_size=4 * tiny.hidden_size, num_hidden_layers=tiny.num_layers,
                             num_attention_heads=tiny.num_heads, max_position_embeddings=tiny.max_position_embeddings)
    elif name in PUBLISHED_CONFIGS:
        config = AutoConfig.for_model(**PUBLISHED_CONFIGS[name])
    else:
        try:
            config = AutoConfig.from_pretrained(name)
        except OSError:
            raise ConfigError(f"model.name {name!r}: no config.json in a local folder or the hub cache, and not one "
                              f"of the published configs the dry run knows ({', '.join(PUBLISHED_CONFIGS)})") from None
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    lora = cfg.model.lora
    lora_params = 0
    if lora is not None:
        targets = lora.target_modules
        for path, module in model.named_modules():
            leaf = path.rsplit(".", 1)[-1]
            chosen = leaf != "lm_head" if targets == "all-linear" else leaf in targets
            if isinstance(module, torch.nn.Linear) and chosen:
                lora_params += lora.r * (module.in_features + module.out_features)
    heads = config.num_attention_heads
    embeddings = {id(p): p.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())
                  for p in m.parameters()}
    return Architecture(
        params=sum(p.numel() for p in model.parameters()), embedding_params=sum(embeddings.values()),
        largest_layer=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
        lora_params=lora_params, hidden=config.hidden_size, layers=config.num_hidden_layers,
        kv_width=getattr(config, "num_key_value_heads", heads) * (config.hidden_size // heads),
        vocab=config.vocab_size, max_position=config.max_position_embeddings)


# ------------------------------------------------------------------------------- memory

def model_states(arch: Architecture, cfg: Config, trained: bool, zero: int, eight_bit_adam: bool) -> dict[str, float]:
    """Bytes per device for one model's weights, gradients and optimizer states under ZeRO stage `zero`."""
    world = cfg.launch.num_processes
    shard = lambda level: world if zero >= level else 1
    if cfg.model.quantization == "4bit":  # the kit loads what stays unquantised in fp32
        weights = (arch.params - arch.embedding_params) * 0.52 + arch.embedding_params * 4
    else:  # DeepSpeed holds bf16 weights (the fp32 masters are optimizer state); the kit loads fp32
        weights = arch.params * (2 if zero else 4)
    states = {"weights": weights / shard(3), "gradients": 0.0, "optimizer": 0.0}
    if not trained:
        return states
    adam = 2 if eight_bit_adam else 8  # two moments, 8-bit or fp32
    if cfg.model.lora is not None:
        states["weights"] += arch.lora_params * 4
        states["gradients"] = arch.lora_params * 4
        states["optimizer"] = arch.lora_params * adam
    elif zero:  # bf16 gradients, or fp32 where the DeepSpeed JSON accumulates them so (data_types)
        fp32_accumulation = cfg.launch.deepspeed().get("data_types", {}).get("grad_accum_dtype") == "fp32"
        states["gradients"] = arch.params * (4 if fp32_accumulation else 2) / shard(2)
        states["optimizer"] = arch.params * (4 + adam) / shard(1)
    else:
        states["gradients"] = arch.params * 4
        states["optimizer"] = arch.params * adam
    return states


def activations(arch: Architecture, sequences: int, length: int, checkpointing: bool, lm_head: bool = True) -> float:
    """Bytes kept for backward by one micro-batch: the layers, and (a language model's) logits: their bf16
    copy, fp32 loss input and fp32 gradient."""
    per_layer = 34 * sequences * length * arch.hidden
    if checkpointing:  # each layer's input, and one layer recomputed at a time
        layers = 2 * sequences * length * arch.hidden * arch.layers + per_layer
    else:
        layers = per_layer * arch.layers
    return layers + (10 * sequences * length * arch.vocab if lm_head else 0)


def kv_cache(arch: Architecture, sequences: int, length: int) -> float:
    return 2 * arch.layers * sequences * length * arch.kv_width * 2


def memory_gb(arch: Architecture, cfg: Config, trained: int, frozen: int, extra: float, zero: int,
              eight_bit_adam: bool = False, one_backbone: bool = False) -> dict[str, float]:
    """Per device: `trained` models with their optimizer states, `frozen` ones (weights only), plus
    `extra` bytes (activations or KV cache). one_backbone: the models are adapters over one copy of
    the base weights (LoRA PPO)."""
    totals = {"weights": 0.0, "gradients": 0.0, "optimizer": 0.0}
    for count, is_trained in ((trained, True), (frozen, False)):
        for key, value in model_states(arch, cfg, is_trained, zero, eight_bit_adam).items():
            totals[key] += count * value
    if one_backbone:
        totals["weights"] -= (trained + frozen - 1) * model_states(arch, cfg, False, zero, eight_bit_adam)["weights"]
    totals["activations"] = extra
    totals["total"] = sum(totals.values())
    return {key: round(value / GB, 2) for key, value in totals.items()}


# ---------------------------------------------------------------------------- rows and steps

def training_rows(cfg: Config, run=None) -> tuple[dict[str, int], str]:
    """Rows for SFT, RM, resampling (prompts) and |D^e| of each split stage, and where the counts come from."""
    subsets = cfg.data.subsets
    if cfg.data.source == "local":
        from mpo_lib.method.data import load_preferences, sft_rows
        splits = load_preferences(cfg)
        preference = {s: sum(r["subset"] == s for r in splits.train) for s in subsets}
        sft = len(sft_rows(cfg, splits))
        source = "counted in the local data"
    else:
        preference = {s: paper.TRAIN_ROWS[s] for s in subsets}
        sft = paper.TRAIN_ROWS["tldr-sft"] if cfg.data.dataset == "tldr" else sum(preference.values())
        source = "the paper's Table 1"
        if cfg.data.dataset == "tldr":  # several comparisons per post; the hub's posts cannot be counted offline
            source += " (TL;DR prompts: comparison rows, an upper bound on the distinct posts the run resamples " \
                      "and each PPO pass takes, which the run counts)"
    if cfg.data.max_train_rows:
        preference = {s: min(n, cfg.data.max_train_rows) for s, n in preference.items()}
    rm_rows = sum(n for s, n in preference.items() if s in (cfg.rm.subsets or subsets))
    prompts = min(cfg.resample.num_prompts or sum(preference.values()), sum(preference.values()))
    easy, sources = {}, set()
    for split in registry.of_kind(cfg, registry.SPLIT):
        if run is not None and run.is_complete(split.name):
            easy[split.name] = run.metrics(split.name)["easy"]
            sources.add("the run's split")
        else:
            easy[split.name] = round(prompts * paper.EASY_FRACTION.get(split.gamma, paper.EASY_FRACTION[2.0]))
            sources.add("estimated at the paper's fractions (1/4 at gamma 2, 1/2 at gamma 1; 1/4 otherwise)")
    # datasets' train_test_split holds out ceil(fraction x rows)
    return ({"sft": sft, "pairs": sum(preference.values()), "rm": rm_rows - math.ceil(rm_rows * cfg.rm.eval_fraction),
             "prompts": prompts, "easy": easy}, f"rows: {source}; |D^e|, |D^h|: {'; '.join(sorted(sources))}")


def optimizer_steps(rows: int, per_device: int, accum: int, world: int, epochs: float, max_steps: int) -> int:
    """As transformers' Trainer counts them: batches per process, then accumulations (a last partial one counts)."""
    if max_steps > 0:
        return max_steps
    per_epoch = max(math.ceil(math.ceil(rows / (per_device * world)) / accum), 1)
    return math.ceil(epochs * per_epoch)


# ---------------------------------------------------------------------------- the plan

def through_vllm(cfg: Config, stage: str) -> bool:
    """Through vLLM in one process: the generating stages (`eval` is this table's row for every eval_<policy>)."""
    return cfg.launch.generation_backend == "vllm" and (stage == "eval" or registry.stage(cfg, stage).kind.generates)


def launch_command(cfg: Config, stage: str, params: str) -> str:
    from mpo_lib.runtime.launch import stage_command
    if through_vllm(cfg, stage):
        return f"in-process through vLLM (tensor parallel over {cfg.launch.vllm_tensor_parallel} GPU(s))"
    if cfg.launch.num_processes == 1:
        return "in-process (the notebook's kernel)"
    return shlex.join(stage_command(cfg, "eval_<policy>" if stage == "eval" else stage, params, f"runs/{cfg.run_name}"))


def world_size(cfg: Config, stage: str) -> int:
    return 1 if through_vllm(cfg, stage) else cfg.launch.num_processes


def trl_stage(cfg, arch, section, rows: int, sequences_per_row: int, frozen: int, hyper: dict) -> dict:
    """SFT, RM or DPO (a pair is two sequences), with `frozen` reference models beside the trained one."""
    world = cfg.launch.num_processes
    rows = min(rows, section.max_rows or rows)
    extra = activations(arch, section.batch_size * sequences_per_row, section.max_length,
                        section.gradient_checkpointing, lm_head=section is not cfg.rm)
    zero = cfg.launch.zero_stage()
    return {"zero_stage": zero, "per_device_batch": section.batch_size, "grad_accum": section.grad_accum,
            "global_batch": section.batch_size * section.grad_accum * world, "rows": rows,
            "optimizer_steps": optimizer_steps(rows, section.batch_size, section.grad_accum, world,
                                               section.num_epochs, section.max_steps),
            "sequence_length": section.max_length, "hyper": hyper,
            "memory_gb": memory_gb(arch, cfg, 1, frozen, extra, zero, cfg.model.optimizer is not None)}


def ppo_stage(cfg, arch, variant, prompts: int) -> dict:
    spec, world = cfg.ppo, cfg.launch.num_processes
    length = cfg.data.max_prompt_tokens + spec.max_new_tokens
    # LoRA: all four roles are adapters over one backbone (the frozen stage adapters are not counted), the
    # workers all-reduce the adapters' gradients, no ZeRO. Full fine-tuning: four models; on several workers,
    # DeepSpeed engines under the config's ZeRO stage (mpo_lib/runtime/zero.py), the frozen models partitioned under
    # ZeRO-3 only, and a rollout generating from the policy gathered whole.
    zero = cfg.launch.zero_stage() if cfg.model.lora is None and world > 1 else 0
    update = activations(arch, spec.micro_batch, length, spec.gradient_checkpointing)
    rollout = kv_cache(arch, spec.rollout_batch_size // world, length) + (arch.params * 2 if zero == 3 else 0)
    memory = memory_gb(arch, cfg, 2, 2, max(update, rollout), zero=zero, one_backbone=cfg.model.lora is not None)
    accum = spec.mini_batch_size // (spec.micro_batch * world)
    return {"zero_stage": zero, "per_device_batch": spec.micro_batch, "grad_accum": accum,
            "global_batch": spec.mini_batch_size, "rollout_batch": spec.rollout_batch_size, "rows": prompts,
            "optimizer_steps": spec.steps(variant, prompts) * spec.updates_per_step,
            "sequence_length": length,
            "hyper": {"per_device_train_batch_size": spec.micro_batch,
                      "gradient_accumulation_steps": accum,
                      "actor_lr": spec.actor_lr, "critic_lr": spec.critic_lr,
                      "actor_weight_decay": spec.actor_weight_decay, "critic_weight_decay": spec.critic_weight_decay,
                      "num_warmup_steps": spec.warmup_steps, "init_kl_coef": spec.init_kl_coef},
            "memory_gb": memory}


def generation_stage(cfg, arch, prompts: int, batch: int, new_tokens: int, world: int) -> dict:
    """Sampling (the policy) then scoring (the RM, loaded once the policy is freed), `batch` sequences at a
    time on each of `world` devices."""
    length = cfg.data.max_prompt_tokens + new_tokens
    return {"zero_stage": 0, "per_device_batch": batch, "grad_accum": None, "global_batch": batch * world,
            "rows": prompts,
            "optimizer_steps": 0, "sequence_length": length, "hyper": {},
            "memory_gb": memory_gb(arch, cfg, 0, 1, kv_cache(arch, batch, length), zero=0)}


def check_lengths(cfg: Config, arch: Architecture) -> list[str]:
    """Sequence lengths above the model's context."""
    lengths = {f"{s}.max_length": getattr(cfg, s).max_length for s in ("sft", "rm", "dpo")}
    for section in ("resample", "ppo") if cfg.ppo else ("resample",):
        lengths[f"data.max_prompt_tokens + {section}.max_new_tokens"] = (cfg.data.max_prompt_tokens
                                                                          + getattr(cfg, section).max_new_tokens)
    return [f"{key}={value} exceeds the context of {cfg.model.name} ({arch.max_position} tokens)"
            for key, value in lengths.items() if value > arch.max_position]


def dry_run(cfg: Config, params: str, run=None) -> list[dict]:
    """One row per training or generation stage of a full pipeline run; ConfigError on a combination
    that cannot run (load_config has rejected the others already)."""
    arch = architecture(cfg)
    if problems := check_lengths(cfg, arch):
        raise ConfigError(f"{params}: " + "; ".join(problems))
    rows, source = training_rows(cfg, run)
    stages = {
        "sft": trl_stage(cfg, arch, cfg.sft, rows["sft"], 1, 0, {
            "learning_rate": cfg.sft.learning_rate, "per_device_train_batch_size": cfg.sft.batch_size,
            "num_warmup_steps": cfg.sft.warmup_steps}),
        "rm": trl_stage(cfg, arch, cfg.rm, rows["rm"], 2, 0, {
            "learning_rate": cfg.rm.learning_rate, "per_device_train_batch_size": cfg.rm.batch_size,
            "weight_decay": cfg.rm.weight_decay, "num_warmup_steps": cfg.rm.warmup_steps}),
        "resample": generation_stage(cfg, arch, rows["prompts"], cfg.resample.batch_size * 2,  # two samples a prompt
                                     cfg.resample.max_new_tokens, world_size(cfg, "resample")),
    }
    dpo_hyper = {"learning_rate": cfg.dpo.learning_rate, "per_device_train_batch_size": cfg.dpo.batch_size,
                 "weight_decay": cfg.dpo.weight_decay, "beta": cfg.dpo.beta,
                 "gradient_accumulation_steps": cfg.dpo.grad_accum, "num_warmup_steps": cfg.dpo.warmup_steps}
    def trained_on(variant, data: str) -> int:  # DPO's pairs (variant.data) or PPO's prompts (variant.prompts)
        easy = rows["easy"][variant.split]
        return {"easy": easy, "hard": rows["prompts"] - easy, "full": rows["prompts"], "all": rows["prompts"],
                "offline": rows["pairs"]}[data]

    for dpo in registry.of_kind(cfg, registry.DPO):
        name, variant = dpo.name, dpo.variant
        # the reference: a frozen copy in full fine-tuning; with LoRA the start with its adapter off, if it is the start
        frozen = int(cfg.model.lora is None or variant.reference != variant.init)
        stages[name] = trl_stage(cfg, arch, cfg.dpo, trained_on(variant, variant.data), 2, frozen, dpo_hyper)
    for ppo in registry.of_kind(cfg, registry.PPO):
        stages[ppo.name] = ppo_stage(cfg, arch, ppo.variant, trained_on(ppo.variant, ppo.variant.prompts))
    stages["eval"] = generation_stage(cfg, arch, cfg.eval.num_prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                                      world_size(cfg, "eval"))
    # every stage goes through the launcher (mpo_lib/runtime/launch.py); with vLLM, resample and eval run in the kernel
    return [{"stage": name, "launch": launch_command(cfg, name, params), "world_size": world_size(cfg, name),
             "fits": cfg.launch.device_memory_gb is None or stage["memory_gb"]["total"] <= cfg.launch.device_memory_gb,
             "counts": source, **stage} for name, stage in stages.items()]


def print_dry_run(rows: list[dict]) -> None:
    print(f"{'stage':<16}{'world':>6}{'ZeRO':>5}{'batch/dev':>10}{'accum':>6}{'global':>8}{'rows':>9}{'steps':>8}"
          f"{'seq':>6}{'weights':>9}{'grads':>7}{'optim':>7}{'activ':>7}{'total GB':>9}")
    for row in rows:
        m = row["memory_gb"]
        print(f"{row['stage']:<16}{row['world_size']:>6}{row['zero_stage']:>5}{row['per_device_batch']:>10}"
              f"{row['grad_accum'] or '-':>6}{row['global_batch']:>8}{row['rows']:>9}{row['optimizer_steps']:>8}"
              f"{row['sequence_length']:>6}{m['weights']:>9.1f}{m['gradients']:>7.1f}{m['optimizer']:>7.1f}"
              f"{m['activations']:>7.1f}{m['total']:>9.1f}"
              + ("" if row["fits"] else "  exceeds launch.device_memory_gb"))
    print(rows[0]["counts"])
    for row in rows:
        print(f"{row['stage']}: {row['launch']}")
        if row["hyper"]:
            print("    " + ", ".join(f"{k}={v:g}" for k, v in row["hyper"].items()))


# ---------------------------------------------------------------------------- the protocol check

def protocol(cfg: Config) -> list[tuple[str, str | None]]:
    """Each row of the paper's Tables 2-6 and bar of Fig. 2 and Fig. 4 that these params' dataset has,
    with what produces it (a stage, or the judge / human sheets on two evaluated stages), None if nothing."""
    names = {stage.name for stage in registry.catalogue(cfg)}
    made = lambda stage: stage if stage in names else None
    evaluated = lambda policy: made(f"eval_{policy}") if policy else None
    mpo1, mpo2 = registry.mpo_at(cfg, 1.0), registry.mpo_at(cfg, 2.0)
    rows = [("Table 2: RM accuracy on held-out pairs", made("rm")),
            ("Table 3: SFT", evaluated("sft")), ("Table 3: DPO", evaluated("dpo_full")),
            ("Table 3 (text): DPO-base", evaluated("dpo_base")), ("Table 3: PPO", evaluated("ppo_full")),
            ("Table 3: MPO (γ=1)", evaluated(mpo1)), ("Table 3: MPO (γ=2)", evaluated(mpo2))]
    judged = mpo2 is not None and tuple(cfg.eval.compare) == (mpo2, "ppo_full") and evaluated(mpo2)
    rows.append(("Table 4: GPT-4 judge, MPO (γ=2) vs PPO", "eval.judges openai on " + " vs ".join(cfg.eval.compare)
                 if judged and "openai" in cfg.eval.judges else None))
    if cfg.data.dataset != "hh":  # Fig. 2, Fig. 4, Tables 5 and 6 are HH-RLHF's only
        return rows
    rows += [("Fig. 2 left: RM precision per reward range", made("rm")),
             ("Fig. 2 right: resampled pairs per reward-difference bin", made("resample"))]
    for subset in ("helpful", "harmless"):
        sheets = judged and f"{subset}-base" in cfg.data.subsets and cfg.eval.human_eval_items >= 50
        rows.append((f"Table 5: human evaluation, {subset}", "human_eval sheets, 50 items" if sheets else None))
    at_two = cfg.split.gamma == 2.0  # Fig. 4 and Table 6 split at gamma 2
    for method, sides in (("DPO", ("dpo", "dpo_hard", "dpo_full")), ("PPO", ("ppo_easy", "ppo_hard", "ppo_full"))):
        for side, policy in zip(("D^e", "D^h", "everything"), sides, strict=True):
            rows.append((f"Fig. 4: {method} on {side} (γ=2)", evaluated(policy) if at_two else None))
    for label, policy in (("MPO", mpo2), ("PPO", "ppo_full"), ("MPO-reverse", "mpo_reverse"),
                          ("MPO-sft-kl", "mpo_sft_kl"), ("MPO-reverse-sft", "mpo_reverse_sft")):
        rows.append((f"Table 6: {label}", evaluated(policy) if at_two else None))
    return rows


def print_protocol(cfg: Config) -> None:
    print("The paper's rows and what produces them:")
    for row, producer in protocol(cfg):
        print(f"  {row:<58}{producer or 'NOT PRODUCED by these params'}")
