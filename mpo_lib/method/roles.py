"""PPO's four roles (Eq. 3): the policy and the critic it trains, the frozen reference and reward model.

Full fine-tuning: four separate models. LoRA: four views of one backbone, the pretrained base with every
finished stage's adapter loaded unmerged (models.load_frozen_adapters) and two new adapters, the policy's
and the value model's; `Roles.use(role)` switches on that role's adapters."""
from __future__ import annotations

import contextlib
import copy

import torch

from mpo_lib.runtime import zero
from mpo_lib.runtime.artifacts import Run
from mpo_lib.runtime.config import PPOVariant
from mpo_lib.runtime.models import load_frozen_adapters, load_stage_model, load_tokenizer, lora_config, stage_chain, to_device


class Roles:
    """The four PPO roles: policy and critic (trained), reference and reward (frozen).

    Full fine-tuning: four separate models. LoRA: four views of one backbone, the root stage's weights
    (the pretrained base) with every stage adapter they need loaded unmerged, and two new adapters,
    the policy's ("default") and the value model's ("value"); use(role) switches on that role's own
    adapters. The critic and the reward share the backbone through sequence-classification views
    (transformers' last-token pooling) that differ only in their score head."""

    def __init__(self, models: dict, trainable: dict, lora=None, adapters: dict | None = None):
        self.models = models        # role -> the module to call
        self.trainable = trainable  # "policy" / "critic" -> {name: parameter}
        self.lora, self.adapters = lora, adapters  # the shared backbone, role -> its active adapters

    @contextlib.contextmanager
    def use(self, role: str):
        """The module playing `role`; on the shared backbone, with that role's adapters active. A
        backward pass belongs inside the block: gradient checkpointing recomputes with them."""
        if self.lora is not None:
            self.lora.base_model.set_adapter(self.adapters[role], inference_mode=True)  # all frozen, then
            for param in self.trainable.get(role, {}).values():                       # the role's own on
                param.requires_grad_(True)
        yield self.models[role]


def build_roles(run: Run, variant: PPOVariant, shared: bool | None = None) -> Roles:
    """LoRA: the four roles on one backbone. Full fine-tuning (or shared=False): four separate models."""
    shared = run.cfg.model.lora is not None if shared is None else shared
    if shared:
        return shared_backbone_roles(run, variant)
    from peft import get_peft_model

    cfg = run.cfg
    if zero.ppo_uses_zero(cfg):  # DeepSpeed places them (under ZeRO-3: loaded partitioned), in the training dtype
        dtype = torch.bfloat16 if cfg.model.bf16 else torch.float32
        load = lambda stage, head="lm": load_stage_model(run, stage, head, dtype)
        loading = zero.partitioned_loading(cfg)
    else:
        load = lambda stage, head="lm": to_device(load_stage_model(run, stage, head))
        loading = contextlib.nullcontext()
    with loading:
        policy, reference = load(variant.init), load(variant.reference)
        critic, reward = load("rm", "score"), load("rm", "score")
    if cfg.model.lora is not None:
        policy = get_peft_model(policy, lora_config(cfg, "CAUSAL_LM"))
        critic = get_peft_model(critic, lora_config(cfg, "SEQ_CLS"))
    trainable = lambda model: {n: p for n, p in model.named_parameters() if p.requires_grad}
    return Roles({"policy": policy, "reference": reference.eval(), "critic": critic, "reward": reward.eval()},
                 {"policy": trainable(policy), "critic": trainable(critic)})


def shared_backbone_roles(run: Run, variant: PPOVariant) -> Roles:
    from peft import get_peft_model
    from safetensors.torch import load_file

    cfg = run.cfg
    if cfg.model.lora is None:
        raise ValueError("the shared-backbone layout needs model.lora: full fine-tuning keeps four models")
    chains = {role: stage_chain(run, stage)
              for role, stage in (("policy", variant.init), ("reference", variant.reference), ("reward", "rm"))}
    roots = {root for root, _ in chains.values()}
    if len(roots) > 1:
        raise ValueError(f"the PPO roles rest on different full-weight stages {sorted(roots)}: one backbone "
                         "holds them only when every stage is an adapter on the same base")
    lora = get_peft_model(to_device(load_stage_model(run, roots.pop())), lora_config(cfg, "CAUSAL_LM"))
    lora.add_adapter("value", lora_config(cfg, "CAUSAL_LM"))
    load_frozen_adapters(lora, run, sorted({stage for _, chain in chains.values() for stage in chain}))
    adapters = {role: [f"stage_{stage}" for stage in chain] for role, (_, chain) in chains.items()}
    adapters["policy"].append("default")
    adapters["critic"] = adapters["reward"] + ["value"]
    rm_weights = load_file(run.stage_dir("rm") / "adapter" / "adapter_model.safetensors")
    head = next(w for name, w in rm_weights.items() if name.endswith("score.weight"))
    pad_id = load_tokenizer(run).pad_token_id
    reward, critic = (score_view(lora.get_base_model(), head, pad_id) for _ in range(2))
    reward.score.requires_grad_(False)
    policy_params = {n: p for n, p in lora.named_parameters() if ".default." in n}
    critic_params = {**{n: p for n, p in lora.named_parameters() if ".value." in n},
                     **{f"value_head.{n}": p for n, p in critic.score.named_parameters()}}
    return Roles({"policy": lora, "reference": lora, "critic": critic, "reward": reward},
                 {"policy": policy_params, "critic": critic_params}, lora, adapters)


def score_view(causal_lm, head: torch.Tensor, pad_id: int):
    """A sequence-classification model whose transformer is causal_lm's own (shared, not copied) and
    whose score head is a copy of `head`: the RM's pooling and head over the shared backbone."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal_lm.config)
    config.num_labels, config.pad_token_id = 1, pad_id
    with torch.device("meta"):  # its own transformer is replaced at once: never allocate it
        view = AutoModelForSequenceClassification.from_config(config)
    setattr(view, view.base_model_prefix, getattr(causal_lm, causal_lm.base_model_prefix))
    view.score = torch.nn.Linear(head.shape[1], 1, bias=False, device=causal_lm.device)
    with torch.no_grad():
        view.score.weight.copy_(head)
    return view
