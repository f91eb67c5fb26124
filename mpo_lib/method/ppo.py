"""PPO stages (MPO's second stage, vanilla PPO and the ablations): the kit's own PPO, because TRL
removed PPOTrainer in 1.13. Semantics follow DeepSpeed-Chat step 3, which the paper used, so
results are comparable:

- Reward (Eq. 3): every response token gets -beta * (log pi - log pi_ref) (k1 estimator; k3,
  (r - 1) - log r with r = pi_ref / pi, is an option); the RM score of the whole response, clipped
  to +-clip_reward_value, is added at the last response token. beta = init_kl_coef (Table 8:
  0.4 HH, 0.1 TL;DR), fixed unless adaptive_kl (Ziegler et al.'s controller) is on.
- A response ends at EOS (or the params' stop string); tokens after it are masked out of every
  loss and statistic. Rewards and values are zeroed there before GAE.
- GAE with gamma = 1, lambda = 0.95; returns = advantages + values; advantages are not whitened.
- Actor: clipped surrogate (cliprange 0.2), token-mean over the response. Critic: clipped value
  loss (cliprange_value 0.2), 0.5 * max of the squared errors. Separate AdamW optimizers, learning
  rates and weight decay for actor and critic, with DeepSpeed-Chat's betas (0.9, 0.95) and no decay on
  biases and norm weights; a cosine schedule with warm-up (DeepSpeed-Chat's default) stepped with
  every optimizer step; one PPO epoch per rollout batch by default.
- pi is the distribution rollouts are sampled from: with ppo.temperature T, the ratio, the KL and the
  entropy use softmax(logits / T) of both the policy and the reference (as TRL and OpenRLHF); greedy
  rollouts use T = 1. DeepSpeed-Chat samples at T = 1. ppo.top_p < 1 is refused (config).
- The critic starts from the reward model. Reward normalisation (running mean/std) is off by default.
- Budget: one pass over the stage's own prompts (DeepSpeed-Chat's num_train_epochs 1), that is
  ceil(ppo.epochs x prompts / rollout_batch_size) steps; PPOConfig.steps says what overrides it.

Roles and memory. With LoRA every stage is an adapter over the pretrained base (SFT, DPO and the
RM each store only theirs), so PPO loads the base once and stacks the stage adapters on it unmerged:
policy = SFT + DPO adapters + a new policy adapter, reference = SFT + DPO adapters (MPO; vanilla PPO
drops DPO), reward = the RM's adapter and score head, critic = the RM's adapter + a new value adapter
and a trainable copy of the score head. Four roles on one backbone, whatever the reference; a LoRA
delta adds to the layer it adapts, so stacking equals merging up to rounding. Full fine-tuning keeps
four separate models.

Several processes (launch.num_processes > 1, mpo_lib/runtime/launch.py): each worker generates, scores and
updates its share of every rollout batch (rollout_batch_size and mini_batch_size are global,
micro_batch_size per worker). The token counts of each mini-batch and the gradients are summed over
the workers before each optimizer step, so the update is the one a single process would make on the
whole mini-batch: a plain all-reduce, as DDP, or, with full fine-tuning and launch.deepspeed_config,
DeepSpeed engines for the four models under the config's ZeRO stage (mpo_lib/runtime/zero.py). The logged
statistics cover the whole batch; the main worker alone writes the stage's files.

Checkpoints and faults: every checkpoint_every steps, <stage>.partial/checkpoint/state.pt holds all
a step depends on (weights, optimizers, schedulers, kl_coef, reward statistics, RNG, steps so far;
under ZeRO, each worker's partitions of weights and optimizer states in DeepSpeed's checkpoint beside it);
a killed stage resumes from it and ends as an uninterrupted one would. A non-finite loss or a
probability ratio above max_ratio stops the stage with the step; the last good checkpoint stays.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mpo_lib.method.data import truncate_prompt
from mpo_lib.method.resample import decode_responses, load_pairs, load_split, positions, sample_batch
from mpo_lib.method.reward import score
from mpo_lib.method.roles import Roles, build_roles
from mpo_lib.runtime import stages, zero
from mpo_lib.runtime.artifacts import Run, announce_resume
from mpo_lib.runtime.config import PPOVariant
from mpo_lib.runtime.distributed import all_gather, all_reduce, is_main_process, rank_and_world
from mpo_lib.runtime.launch import run_stage
from mpo_lib.runtime.models import device, load_tokenizer, save_stage_model
from mpo_lib.runtime.tracking import Tracker


class PPOFault(RuntimeError):
    """Training diverged; the message names the step and where the last good checkpoint is."""


# ---------------------------------------------------------------------------- the objective

def per_token_rewards(logprobs, ref_logprobs, scores, mask, kl_coef: float, clip: float, estimator: str = "k1"):
    """Eq. 3 per token: -kl_coef * KL estimate on every response token, plus the clipped RM
    score at the last one. All tensors [batch, response_len] except scores [batch]."""
    log_ratio = logprobs - ref_logprobs
    kl = log_ratio if estimator == "k1" else torch.expm1(-log_ratio) + log_ratio
    rewards = -kl_coef * kl * mask
    last = mask.sum(1).long().clamp(min=1) - 1
    rewards[torch.arange(len(scores)), last] += scores.clamp(-clip, clip)
    return rewards


def advantages_and_returns(rewards, values, mask, gamma: float, lam: float):
    """GAE over the response tokens (DeepSpeed-Chat's get_advantages_and_returns)."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages, advantages + values


def masked_mean(values, mask):
    return (values * mask).sum() / mask.sum().clamp(min=1)


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """Clipped surrogate; returns (loss, ratio, clip fraction)."""
    ratio = torch.exp((logprobs - old_logprobs) * mask)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    clip_fraction = masked_mean(((ratio - 1).abs() > cliprange).float(), mask)
    return masked_mean(torch.max(unclipped, clipped), mask), ratio, clip_fraction


def value_loss(values, old_values, returns, mask, cliprange_value: float):
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


# ---------------------------------------------------------------------------- the four roles

def response_mask(response_ids, eos_id: int, pad_id: int, stopped: list[bool] | None = None):
    """1 on the tokens the policy chose: up to and including its first EOS; for a sample cut by the
    stop string (`stopped`), up to the stop string, not the pad generate() wrote after it (which
    is the EOS token itself when pad == eos, as in SmolLM2)."""
    ended = (response_ids == eos_id) | (response_ids == pad_id)
    before_end = ended.cumsum(1) == 0
    first_end = ended & (ended.cumsum(1) == 1)
    cut_by_stop = torch.tensor(stopped or [False] * len(response_ids), dtype=torch.bool,
                               device=response_ids.device)[:, None]
    sampled_eos = first_end & (response_ids == eos_id) & ~cut_by_stop
    return (before_end | sampled_eos).float()


def token_logprobs(model, input_ids, attention_mask, prompt_length: int, with_entropy: bool = False,
                   temperature: float = 1.0):
    """log pi(token) for every response token (and the policy's entropy there), pi being the distribution the
    rollouts sample from: softmax(logits / temperature)."""
    response_length = input_ids.shape[1] - prompt_length
    # the LM head only where a response token is predicted: the full-vocabulary logits of the prompt
    # would be most of the memory of a step
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
                   logits_to_keep=response_length + 1).logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    # gather - logsumexp keeps one vocabulary-sized tensor for backward, where log_softmax keeps two
    logprobs = logits.gather(-1, input_ids[:, prompt_length:, None]).squeeze(-1) - logits.logsumexp(-1)
    if not with_entropy:
        return logprobs
    with torch.no_grad():  # a statistic: no graph through the vocabulary
        logp_all = F.log_softmax(logits, -1)
        return logprobs, -(logp_all.exp() * logp_all).sum(-1)


def token_values(critic, input_ids, attention_mask, prompt_length: int):
    """The critic's value of the state before each response token. The critic's own forward (a DeepSpeed
    engine counts it) applies the score head at every position and keeps the last; a hook keeps them all."""
    model = critic.get_base_model() if hasattr(critic, "get_base_model") else critic
    every_position = []
    hook = model.score.register_forward_hook(lambda module, inputs, output: every_position.append(output))
    try:
        output = critic(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask))
    finally:
        hook.remove()
    # + 0 x the returned value: a DeepSpeed engine prepares its backward from a hook on what it returned
    return every_position[0].squeeze(-1)[:, prompt_length - 1:-1].float() + 0 * output.logits.sum()


# ---------------------------------------------------------------------------- the loop

def ppo_prompts(run: Run, variant: PPOVariant) -> list[str]:
    if variant.prompts == "all":
        return [pair["prompt"] for pair in load_pairs(run)]
    return [row["prompt"] for row in load_split(run, variant.prompts, variant.split)]


def prompt_source(variant: PPOVariant) -> str:
    return "resample" if variant.prompts == "all" else variant.split


# DeepSpeed-Chat's optimizers (dschat/utils/utils.py get_optimizer_grouped_parameters, rlhf_engine.py):
# AdamW with betas (0.9, 0.95); no weight decay on biases and norm weights
ADAM_BETAS = (0.9, 0.95)
NO_DECAY = ("bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight")


def optimizer_groups(params: dict, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on every trainable weight but biases and norm weights."""
    exempt = lambda name: any(part in name.lower() for part in NO_DECAY)
    groups = [{"params": [p for n, p in params.items() if not exempt(n)], "weight_decay": weight_decay},
              {"params": [p for n, p in params.items() if exempt(n)], "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


@dataclass
class RunningMoments:
    """The running mean and variance of every RM score seen so far (Welford), for normalize_reward."""
    mean: float = 0.0
    var: float = 1.0
    count: int = 0

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        for value in all_gather(scores).tolist():  # over every worker's scores
            self.count += 1
            delta = value - self.mean
            self.mean += delta / self.count
            self.var += (delta * (value - self.mean) - self.var) / self.count
        return (scores - self.mean) / math.sqrt(self.var + 1e-8)


@dataclass
class Rollout:
    """One rollout batch (this worker's rows): the sampled sequences and what the update needs of them."""
    input_ids: torch.Tensor       # prompt + response, [rows, prompt_length + response tokens]
    attention_mask: torch.Tensor
    mask: torch.Tensor            # response tokens that count: up to and including the first EOS
    logprobs: torch.Tensor        # log pi_old(token), the policy that sampled them
    ref_logprobs: torch.Tensor    # log pi_ref(token), the KL reference's
    values: torch.Tensor          # V_old, the critic's, 0 outside the mask
    advantages: torch.Tensor      # GAE
    returns: torch.Tensor         # advantages + values: the critic's targets
    scores: torch.Tensor          # the RM's raw score per sequence (before normalize_reward)
    prompt_length: int
    responses: list[str]
    generation_seconds: float

    def rows(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-token tensors of some rows (a micro-batch)."""
        return {name: getattr(self, name)[index] for name in ("input_ids", "attention_mask", "mask", "logprobs",
                                                               "values", "advantages", "returns")}


class Trainer:
    """One PPO variant: rollout, score, GAE, clipped updates; metrics per step."""

    def __init__(self, run: Run, variant: PPOVariant, roles: Roles, out_dir: Path, steps: int):
        from transformers import get_scheduler

        self.run, self.cfg, self.spec, self.roles, self.out_dir = run, run.cfg, run.cfg.ppo, roles, out_dir
        self.tokenizer = load_tokenizer(run)
        self.kl_coef = self.spec.init_kl_coef
        # the distribution the rollouts are drawn from (greedy rollouts: the policy's own)
        self.temperature = 1.0 if self.spec.greedy_rollouts else self.spec.temperature
        self.reward_moments = RunningMoments()
        self.optimizers = {
            role: torch.optim.AdamW(optimizer_groups(roles.trainable[role], decay), lr=lr, betas=ADAM_BETAS)
            for role, lr, decay in (("policy", self.spec.actor_lr, self.spec.actor_weight_decay),
                                    ("critic", self.spec.critic_lr, self.spec.critic_weight_decay))}
        # stepped with each optimizer step, as DeepSpeed-Chat's engines step theirs: warmup_steps counts those
        total = steps * self.spec.updates_per_step
        self.schedulers = {role: get_scheduler("cosine", optimizer, self.spec.warmup_steps, total)
                           for role, optimizer in self.optimizers.items()}
        self.autocast = torch.autocast(device().type, dtype=torch.bfloat16, enabled=self.cfg.model.bf16)
        if self.spec.gradient_checkpointing:  # active in train() mode only: rollouts are unaffected
            for model in (roles.models["policy"], roles.models["critic"]):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # role -> DeepSpeed engine, under ZeRO. Policy and critic are called through theirs (DeepSpeed counts
        # the micro-batches of a mini-batch in its forward); the frozen ones are their engines' modules.
        self.engines = zero.engines(self.cfg, roles.models, self.optimizers) \
            if zero.ppo_uses_zero(self.cfg) else {}
        self.trained_engines = {role: self.engines[role] for role in ("policy", "critic") if role in self.engines}
        roles.models.update(self.trained_engines)
        self.updates = {role: zero.EngineUpdate(engine) if (engine := self.trained_engines.get(role))
                        else zero.PlainUpdate(list(roles.trainable[role].values()), self.optimizers[role])
                        for role in ("policy", "critic")}

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> Rollout:
        spec, tok, roles = self.spec, self.tokenizer, self.roles
        started = time.time()
        with roles.use("policy") as policy, zero.generation_model(policy) as policy:
            temperature = 0.0 if spec.greedy_rollouts else spec.temperature  # 0: argmax
            output, prompt_mask, prompt_length = sample_batch(policy, tok, prompts, 1, spec.max_new_tokens,
                                                              temperature, spec.top_p, self.cfg.resample.stop)
        generation_seconds = time.time() - started
        responses, stopped = decode_responses(tok, output, prompt_length, self.cfg.resample.stop)
        mask = response_mask(output[:, prompt_length:], tok.eos_token_id, tok.pad_token_id, stopped)
        attention = torch.cat([prompt_mask, torch.ones_like(mask, dtype=prompt_mask.dtype)], 1)
        for model in roles.models.values():
            model.eval()
        logprobs, ref_logprobs, values, scores = [], [], [], []
        with self.autocast:  # in micro-batches: the no-grad forwards' peak memory scales with their size
            for rows in torch.arange(len(prompts)).split(spec.micro_batch):
                ids, att = output[rows], attention[rows]
                with roles.use("policy") as policy:
                    logprobs.append(token_logprobs(policy, ids, att, prompt_length, temperature=self.temperature))
                with roles.use("reference") as reference:
                    ref_logprobs.append(token_logprobs(reference, ids, att, prompt_length,
                                                       temperature=self.temperature))
                with roles.use("critic") as critic:
                    values.append(token_values(critic, ids, att, prompt_length))
                with roles.use("reward") as reward:
                    scores += score(reward, tok, [prompts[i] for i in rows], [responses[i] for i in rows],
                                    len(rows), self.cfg.rm.max_length, self.cfg.model.bf16)
        logprobs, ref_logprobs, values = torch.cat(logprobs), torch.cat(ref_logprobs), torch.cat(values)
        scores = torch.tensor(scores, device=output.device)
        raw_scores = scores.clone()
        if spec.normalize_reward:
            scores = self.reward_moments.normalise(scores)
        rewards = per_token_rewards(logprobs, ref_logprobs, scores, mask, self.kl_coef,
                                    spec.clip_reward_value, spec.kl_estimator)
        advantages, returns = advantages_and_returns(rewards, values, mask, spec.gamma, spec.lam)
        return Rollout(output, attention, mask, logprobs, ref_logprobs, values * mask, advantages, returns,
                       raw_scores, prompt_length, responses, generation_seconds)

    def update(self, batch: Rollout, step: int) -> dict:
        """ppo_epochs passes over the rollout batch in shuffled mini-batches, one optimizer step each."""
        for role in ("policy", "critic"):
            self.roles.models[role].train()
        stats = {"policy_loss": [], "value_loss": [], "clip_fraction": [], "entropy": [], "max_ratio": []}
        size = batch.input_ids.shape[0]  # this worker's rows
        mini_size = self.spec.mini_batch_size // rank_and_world()[1]
        for _ in range(self.spec.ppo_epochs):
            order = torch.randperm(size)
            for start in range(0, size, mini_size):
                for key, value in self.update_mini_batch(batch, order[start:start + mini_size], step).items():
                    stats[key].append(value)
        return {k: (max(v) if k == "max_ratio" else sum(v) / len(v)) for k, v in stats.items()}

    def update_mini_batch(self, batch: Rollout, mini: torch.Tensor, step: int) -> dict:
        """One optimizer step of policy and critic on the rows `mini`, accumulated over micro-batches; its
        token-mean losses over every worker's rows."""
        spec, roles = self.spec, self.roles
        tokens = all_reduce(batch.mask[mini].sum()).clamp(min=1)  # the whole mini-batch's
        totals = dict.fromkeys(("policy_loss", "value_loss", "clip_fraction", "entropy"), 0.0)
        max_ratio = 0.0
        for idx in mini.split(spec.micro_batch):
            mb = batch.rows(idx)
            # each micro-batch's token mean, weighted by its share of the mini-batch's tokens: the
            # accumulated gradient is that of the mini-batch's token mean
            weight = mb["mask"].sum() / tokens
            with roles.use("policy") as policy:
                with self.autocast:
                    logprobs, entropy = token_logprobs(policy, mb["input_ids"], mb["attention_mask"],
                                                       batch.prompt_length, True, self.temperature)
                actor_loss, ratio, clip_fraction = policy_loss(logprobs, mb["logprobs"], mb["advantages"], mb["mask"],
                                                               spec.cliprange)
                max_ratio = max(max_ratio, (ratio * mb["mask"]).max().item())
                self._check(actor_loss, max_ratio, step)
                self.updates["policy"].backward(actor_loss * weight)
            with roles.use("critic") as critic:
                with self.autocast:
                    values = token_values(critic, mb["input_ids"], mb["attention_mask"], batch.prompt_length)
                critic_loss = value_loss(values, mb["values"], mb["returns"], mb["mask"], spec.cliprange_value)
                self._check(critic_loss, None, step)
                self.updates["critic"].backward(critic_loss * weight)
            for key, value in (("policy_loss", actor_loss), ("value_loss", critic_loss), ("clip_fraction", clip_fraction),
                               ("entropy", masked_mean(entropy.detach(), mb["mask"]))):
                totals[key] += (value.detach() * weight).item()
        for role in ("policy", "critic"):
            self._step(role)
            self.schedulers[role].step()
        where = batch.mask.device  # NCCL reduces tensors on the GPU only
        summed = all_reduce(torch.tensor(list(totals.values()), dtype=torch.float64, device=where)).tolist()
        return {**dict(zip(totals, summed, strict=True)),
                "max_ratio": all_reduce(torch.tensor(max_ratio, device=where), "max").item()}

    def _step(self, role: str) -> None:
        self.updates[role].step()

    def _check(self, loss, max_ratio: float | None, step: int) -> None:
        checkpoint = self.out_dir / "checkpoint"
        where = f"the last good checkpoint is {checkpoint}" if checkpoint.exists() else "no checkpoint was written yet"
        if not torch.isfinite(loss):
            raise PPOFault(f"PPO step {step}: the loss is {loss.item()}; {where}")
        if max_ratio is not None and max_ratio > self.spec.max_ratio:
            raise PPOFault(f"PPO step {step}: probability ratio {max_ratio:.3g} exceeds "
                           f"ppo.max_ratio={self.spec.max_ratio}; {where}")

    def adapt_kl(self, kl: float) -> None:
        if self.spec.adaptive_kl:
            error = max(min(kl / self.spec.kl_target - 1, 0.2), -0.2)
            self.kl_coef *= 1 + error * self.spec.rollout_batch_size / self.spec.kl_horizon

    def step_metrics(self, step: int, batch: Rollout, losses: dict, seconds: float) -> dict:
        """Over the whole rollout batch (every worker's rows)."""
        mask = batch.mask
        scores = all_gather(batch.scores)
        kl = all_gather(((batch.logprobs - batch.ref_logprobs) * mask).sum(1)).mean().item()
        return {"step": step, "reward_mean": scores.mean().item(), "reward_std": scores.std().item(),
                "kl_to_reference": kl, "kl_coef": self.kl_coef,
                "response_length": all_gather(mask.sum(1)).mean().item(),
                "generation_seconds": round(batch.generation_seconds, 2), "step_seconds": round(seconds, 2),
                **losses}


def prompt_batches(prompts: list[str], size: int, seed: int):
    """Epochs over the prompt set, reshuffled each time (as DeepSpeed-Chat's prompt dataloader), so
    every prompt is used once before any is used twice."""
    rng, pending = random.Random(seed), []
    while True:
        while len(pending) < size:
            epoch = list(prompts)
            rng.shuffle(epoch)
            pending += epoch
        yield pending[:size]
        pending = pending[size:]


CHECKPOINT = "state.pt"


def save_checkpoint(trainer: Trainer, folder: Path, history: list[dict], samples: list[dict]) -> None:
    """Everything the next steps depend on, in one file replaced atomically (a kill while saving leaves
    the previous checkpoint): the trainable weights of policy and critic (LoRA adapters and the critic's
    score head, or full weights), both optimizers and schedulers, kl_coef, the reward-normalisation
    statistics, the RNG state, and the steps so far (the prompt order is replayed from their count).
    Under ZeRO every worker calls this: each writes its partitions of weights and optimizer states to
    DeepSpeed's checkpoint <role>/step<N>/, which state.pt then names."""
    tag = f"step{len(history)}"
    if trainer.trained_engines:
        zero.save_engines(trainer.trained_engines, folder, tag)
    if not is_main_process():
        return
    folder.mkdir(exist_ok=True)
    if trainer.trained_engines:
        weights = {"deepspeed_tag": tag}
    else:
        trainable = trainer.roles.trainable.items()
        weights = {**{role: {n: p.detach() for n, p in params.items()} for role, params in trainable},
                   "optimizers": {role: o.state_dict() for role, o in trainer.optimizers.items()}}
    state = {**weights, "schedulers": {role: s.state_dict() for role, s in trainer.schedulers.items()},
             "kl_coef": trainer.kl_coef, "reward_moments": asdict(trainer.reward_moments),
             "history": history, "samples": samples, "rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    tmp = folder / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / CHECKPOINT)
    for older in folder.glob("*/step*"):  # DeepSpeed checkpoints state.pt no longer names
        if older.is_dir() and older.name != tag:
            shutil.rmtree(older)


def load_checkpoint(trainer: Trainer, folder: Path) -> tuple[list[dict], list[dict]]:
    """Restore what save_checkpoint wrote, if it did; returns the steps and samples so far."""
    if not (folder / CHECKPOINT).exists():
        return [], []
    state = torch.load(folder / CHECKPOINT, map_location="cpu")  # copy_ and load_state_dict place the values
    if "deepspeed_tag" in state:
        zero.load_engines(trainer.trained_engines, folder, state["deepspeed_tag"])
    else:
        with torch.no_grad():
            for role, params in trainer.roles.trainable.items():
                for name, value in state[role].items():
                    params[name].copy_(value)
        for role, optimizer in trainer.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][role])
    for role, scheduler in trainer.schedulers.items():
        scheduler.load_state_dict(state["schedulers"][role])
    trainer.kl_coef, trainer.reward_moments = state["kl_coef"], RunningMoments(**state["reward_moments"])
    torch.set_rng_state(state["rng"].cpu())
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    return state["history"], state["samples"]


def train_ppo(run: Run, name: str, variant: PPOVariant, out_dir: Path, roles: Roles | None = None) -> dict:
    cfg, spec = run.cfg, run.cfg.ppo
    tokenizer = load_tokenizer(run)
    prompts = [truncate_prompt(tokenizer, p, cfg.data.max_prompt_tokens) for p in ppo_prompts(run, variant)]
    if len(prompts) < spec.rollout_batch_size:
        raise ValueError(f"ppo.variants.{name}: {len(prompts)} {variant.prompts} prompts, fewer than "
                         f"ppo.rollout_batch_size={spec.rollout_batch_size}")
    steps = spec.steps(variant, len(prompts))
    torch.manual_seed(cfg.seed)
    trainer = Trainer(run, variant, roles or build_roles(run, variant), out_dir, steps)
    batches = prompt_batches(prompts, spec.rollout_batch_size, cfg.seed)  # the same order on every worker
    rank, world = rank_and_world()
    share = spec.rollout_batch_size // world
    main = is_main_process()
    history, samples = load_checkpoint(trainer, out_dir / "checkpoint")
    resumed = len(history)
    if resumed:
        announce_resume(out_dir, resumed, out_dir / "checkpoint" / CHECKPOINT)
        for _ in history:  # the prompt order continues where it stopped
            next(batches)
    # the main worker writes the curves, samples and checkpoints; the others, nowhere
    tracker = Tracker(cfg, name, out_dir)
    with open(out_dir / "samples.jsonl" if main else os.devnull, "w") as log:
        for step, metrics in enumerate(history, 1):  # the curves and samples of the resumed steps, again
            tracker.log(metrics, step)
        log.writelines(json.dumps(sample) + "\n" for sample in samples)
        for step in tqdm(range(resumed + 1, steps + 1), desc=name, initial=resumed, total=steps, disable=not main):
            started = time.time()
            if world > 1:  # workers sample independently, and a resumed run samples as an uninterrupted one
                torch.manual_seed(cfg.seed + step * world + rank)
            # 1. rollout: sample from pi_theta, score with r_phi, Eq. 3's per-token rewards, GAE
            batch = trainer.rollout(next(batches)[rank * share:(rank + 1) * share])
            # 2. clipped policy and value updates over the batch's mini-batches
            losses = trainer.update(batch, step)
            # 3. log (and adapt the KL coefficient, if asked)
            metrics = trainer.step_metrics(step, batch, losses, time.time() - started)
            trainer.adapt_kl(metrics["kl_to_reference"])
            history.append(metrics)
            tracker.log(metrics, step)
            if step % spec.sample_every == 0 or step == 1:
                samples.append({"step": step, "response": batch.responses[0], "reward": batch.scores[0].item()})
                log.write(json.dumps(samples[-1]) + "\n")
                tracker.log_samples(samples, step)
            if step % spec.checkpoint_every == 0:
                save_checkpoint(trainer, out_dir / "checkpoint", history, samples)
    tracker.close()
    if main:
        (out_dir / "steps.json").write_text(json.dumps(history, indent=1))
    if engine := trainer.engines.get("policy"):
        save_stage_model(engine.module, out_dir, variant.init, run, zero.state_dict_to_save(engine))
    else:
        save_stage_model(trainer.roles.models["policy"], out_dir, variant.init, run)
    quarter = max(len(history) // 4, 1)
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)
    return {"variant": variant.model_dump(), "prompts": len(prompts), "steps": len(history), "resumed_at_step": resumed,
            "reward_first_quarter": mean(history[:quarter], "reward_mean"),
            "reward_last_quarter": mean(history[-quarter:], "reward_mean"),
            "kl_last_quarter": mean(history[-quarter:], "kl_to_reference"),
            "step_seconds_mean": mean(history, "step_seconds"),
            "samples_seen": len(history) * spec.rollout_batch_size,
            "optimizer_steps": len(history) * spec.updates_per_step,
            "tokens_generated": round(sum(h["response_length"] for h in history) * spec.rollout_batch_size)}


def ppo_variant(cfg, name: str) -> PPOVariant:
    """A key of ppo.variants (`mpo`, `ppo_full`) or a chosen PPO ablation (`ppo_hard`, ...)."""
    found = stages.stage(cfg, name)
    if found.kind is not stages.PPO:
        raise ValueError(f"{name!r} is not a PPO stage of these params (a key of ppo.variants, or a PPO ablation "
                         "in `ablations`)")
    return found.variant


def ppo_spec(cfg, name: str) -> tuple[dict, list[str]]:
    variant = ppo_variant(cfg, name)
    settings = {"ppo": cfg.ppo.model_dump(exclude={"variants"}), "variant": variant.model_dump(),
                "lora": cfg.model.lora and cfg.model.lora.model_dump(), "bf16": cfg.model.bf16, "seed": cfg.seed,
                "stop": cfg.resample.stop, "max_prompt_tokens": cfg.data.max_prompt_tokens, **cfg.workers()}
    if zero.ppo_uses_zero(cfg):  # DeepSpeed engines: their checkpoints, not state.pt's weights
        settings["zero_stage"] = cfg.launch.zero_stage()
    return settings, sorted({variant.init, variant.reference, "rm", prompt_source(variant)})


def run_ppo(run: Run, name: str) -> dict:
    """Stage `name`: a key of ppo.variants or a PPO ablation."""
    variant = ppo_variant(run.cfg, name)
    return run.reuse_or_build(name, *ppo_spec(run.cfg, name), lambda out_dir: train_ppo(run, name, variant, out_dir))


def train(run: Run, name: str) -> dict:
    """Eq. 3: PPO maximising r(x, y) - beta KL(pi || pi_ref) per token; `mpo` is MPO's second stage (D^h,
    init = ref = pi^DPO), `ppo_full` vanilla PPO (every prompt, init = ref = pi^SFT)."""
    return run_stage(run, name)
