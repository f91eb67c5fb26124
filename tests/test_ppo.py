"""The kit's PPO: the objective against hand-computed values, and the roles it trains with."""
import math
import re

import pytest
import torch

from mpo_lib.method.ppo import (
    PPOFault,
    advantages_and_returns,
    optimizer_groups,
    per_token_rewards,
    policy_loss,
    response_mask,
    token_logprobs,
    token_values,
    value_loss,
)
from mpo_lib.method.roles import build_roles
from mpo_lib.runtime.config import PPOVariant

from conftest import ROOT


def test_per_token_reward_is_kl_penalty_plus_clipped_score_at_the_last_token():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the response ended at token 2
    rewards = per_token_rewards(logprobs, ref_logprobs, torch.tensor([7.0]), mask, kl_coef=0.1, clip=5.0)
    assert rewards[0].tolist() == pytest.approx([-0.05, 5.0, 0.0])
    k3 = per_token_rewards(logprobs, ref_logprobs, torch.tensor([0.0]), mask, 0.1, 5.0, estimator="k3")
    assert k3[0, 0].item() == pytest.approx(-0.1 * (math.exp(-0.5) - 1 + 0.5))


def test_gae_with_gamma_1_lambda_095():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    advantages, returns = advantages_and_returns(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    # t=2: 1 - 0.5 = 0.5;  t=1: (0 + 0.5 - 0.5) + 0.95 * 0.5;  t=0: 0 + 0.95 * 0.475
    assert advantages[0].tolist() == pytest.approx([0.45125, 0.475, 0.5])
    assert returns[0].tolist() == pytest.approx([0.95125, 0.975, 1.0])


def test_gae_ignores_what_follows_the_end_of_the_response():
    rewards = torch.tensor([[0.0, 1.0, 9.0]])
    values = torch.tensor([[0.5, 0.5, 9.0]])
    advantages, _ = advantages_and_returns(rewards, values, torch.tensor([[1.0, 1.0, 0.0]]), 1.0, 0.95)
    assert advantages[0].tolist() == pytest.approx([0.95 * 0.5, 0.5, 0.0])


def test_clipped_policy_loss_on_a_constructed_batch():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.5]]))
    advantages = torch.tensor([[1.0, 1.0, -1.0]])
    loss, _ratio, clip_fraction = policy_loss(new, old, advantages, torch.ones(1, 3), cliprange=0.2)
    # per token max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2; max(-0.5, -0.8) = -0.5; max(1.5, 1.2) = 1.5
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5) / 3)
    assert clip_fraction.item() == 1.0


def test_clipped_value_loss_on_a_constructed_batch():
    values, old_values, returns = torch.tensor([[1.0, 0.6]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 0.0]])
    loss = value_loss(values, old_values, returns, torch.ones(1, 2), cliprange_value=0.2)
    # token 0: clipped value 0.7, max(1.0, 1.69) = 1.69; token 1: inside the clip range, 0.36
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.36) / 2)


def test_response_mask_keeps_the_eos_and_drops_what_follows():
    ids = torch.tensor([[5, 6, 2, 0, 0], [5, 6, 7, 8, 9], [5, 0, 0, 0, 0]])
    assert response_mask(ids, eos_id=2, pad_id=0).tolist() == [[1, 1, 1, 0, 0], [1] * 5, [1, 0, 0, 0, 0]]
    assert response_mask(ids, eos_id=0, pad_id=0).tolist()[2] == [1, 1, 0, 0, 0]
    # cut by the stop string: generate() pads after it, with the EOS id itself when pad == eos
    assert response_mask(torch.tensor([[5, 6, 2, 2]]), eos_id=2, pad_id=2, stopped=[True]).tolist() == [[1, 1, 0, 0]]
    assert response_mask(torch.tensor([[5, 6, 2, 2]]), eos_id=2, pad_id=2, stopped=[False]).tolist() == [[1, 1, 1, 0]]


def sequences(run):
    from mpo_lib.runtime.models import load_tokenizer
    tokenizer = load_tokenizer(run, padding_side="left")
    batch = tokenizer(["\n\nHuman: hi there\n\nAssistant: hello, how can I help?",
                       "\n\nHuman: what is a lock?\n\nAssistant: a device"], return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"], 6


@torch.no_grad()
def test_log_probs_are_those_of_the_tempered_distribution_the_rollouts_sample_from(tiny_run):
    from mpo_lib.method.resample import positions
    from mpo_lib.runtime.models import load_stage_model

    model = load_stage_model(tiny_run, "base")
    ids, attention, prompt_length = sequences(tiny_run)
    logits = model(input_ids=ids, attention_mask=attention,
                   position_ids=positions(attention)).logits[:, prompt_length - 1:-1].float()
    for temperature in (1.0, 0.5):  # pi = softmax(logits / T) of the sampled token
        expected = torch.log_softmax(logits / temperature, -1).gather(-1, ids[:, prompt_length:, None]).squeeze(-1)
        used = token_logprobs(model, ids, attention, prompt_length, temperature=temperature)
        assert torch.allclose(used, expected, atol=1e-4), temperature


@pytest.mark.slow  # both layouts wait for a pipeline (fixtures by name, so the marker is not implied)
@pytest.mark.parametrize("layout", ["smoke_run", "lora_run"])  # four full models; LoRA on one backbone
def test_the_reference_used_is_the_one_requested(layout, request):
    from mpo_lib.runtime.models import load_stage_model

    run = request.getfixturevalue(layout)  # outside no_grad: the fixture trains
    ids, attention, prompt_length = sequences(run)
    roles = build_roles(run, PPOVariant(init="dpo", reference="sft"))  # the MPO-sft-kl ablation
    with torch.no_grad(), roles.use("reference") as reference:
        used = token_logprobs(reference, ids, attention, prompt_length)
        assert torch.allclose(used, token_logprobs(load_stage_model(run, "sft"), ids, attention, prompt_length),
                              atol=1e-5)
        assert not torch.allclose(used, token_logprobs(load_stage_model(run, "dpo"), ids, attention, prompt_length),
                                  atol=1e-3)


def backbone_parameters(modules) -> int:
    """Distinct non-adapter parameters over the role models."""
    return sum({p.data_ptr(): p.numel() for m in modules for n, p in m.named_parameters() if "lora_" not in n}.values())


@torch.no_grad()
def test_one_backbone_lora_layout_matches_four_separate_models(lora_run):
    from mpo_lib.method.reward import score
    from mpo_lib.runtime.models import load_tokenizer

    ids, attention, prompt_length = sequences(lora_run)
    variant = PPOVariant(init="dpo", reference="dpo")
    shared, separate = build_roles(lora_run, variant), build_roles(lora_run, variant, shared=False)
    backbone = backbone_parameters([separate.models["reference"]])
    assert backbone_parameters(shared.models.values()) < 1.01 * backbone  # one backbone (and two heads)
    assert backbone_parameters(separate.models.values()) > 3 * backbone  # four (two without an LM head)
    torch.manual_seed(0)
    for role in ("policy", "critic"):  # trained-looking policy and value adapters, the same in both layouts
        theirs = separate.trainable[role]
        head = next((name for name in theirs if "score" in name), None)
        for name, param in shared.trainable[role].items():
            if "lora_B" in name or name.startswith("value_head"):
                param.add_(0.1 * torch.randn_like(param))
            theirs[head if name.startswith("value_head") else name.replace(".value.", ".default.")].copy_(param)
    tokenizer, texts = load_tokenizer(lora_run), (["Human: hi"] * 2, [" hello", " a lock is a device"])
    outputs = {}
    for name, roles in (("shared", shared), ("separate", separate)):
        with roles.use("policy") as policy:
            policy_logprobs = token_logprobs(policy, ids, attention, prompt_length)
        with roles.use("reference") as reference:
            reference_logprobs = token_logprobs(reference, ids, attention, prompt_length)
        with roles.use("critic") as critic:
            values = token_values(critic, ids, attention, prompt_length)
        with roles.use("reward") as reward:
            scores = torch.tensor(score(reward, tokenizer, *texts, 2, 64))
            reward_values = token_values(reward, ids, attention, prompt_length)
        outputs[name] = policy_logprobs, reference_logprobs, values, scores
        assert not torch.allclose(policy_logprobs, reference_logprobs, atol=1e-3)
        assert not torch.allclose(values, reward_values, atol=1e-3)
    for one, other in zip(outputs["shared"], outputs["separate"]):
        assert torch.allclose(one, other, atol=1e-5)


def test_stage_adapters_stay_fixed_in_training_mode(lora_run, tmp_path):
    """Training forwards (dropout on) see the stage adapters as their merged weights: without dropout,
    even when the stage trained with it."""
    import json
    import shutil

    from mpo_lib import Run, load_config

    from conftest import LORA, SMOKE

    shutil.copytree(lora_run.path, tmp_path / "run")
    run = Run(load_config(SMOKE, LORA), tmp_path / "run")
    for stage in ("sft", "dpo", "rm"):
        config = run.stage_dir(stage) / "adapter" / "adapter_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "lora_dropout": 0.5}))
    roles = build_roles(run, PPOVariant(init="dpo", reference="dpo"))
    ids, attention, prompt_length = sequences(run)
    with torch.no_grad(), roles.use("policy") as policy:
        policy.eval()
        evaluated = token_logprobs(policy, ids, attention, prompt_length)
        policy.train()  # the policy's own adapter has params' dropout 0
        assert torch.allclose(token_logprobs(policy, ids, attention, prompt_length), evaluated, atol=1e-6)


def test_non_finite_loss_stops_with_the_step(lora_run, tmp_path):
    from mpo_lib.method.ppo import Trainer

    variant = PPOVariant(init="dpo", reference="dpo")
    trainer = Trainer(lora_run, variant, build_roles(lora_run, variant), tmp_path, steps=4)
    with pytest.raises(PPOFault, match="PPO step 7: the loss is nan; no checkpoint was written yet"):
        trainer._check(torch.tensor(float("nan")), None, step=7)
    with pytest.raises(PPOFault, match=re.escape("PPO step 3: probability ratio 50 exceeds ppo.max_ratio=10")):
        trainer._check(torch.tensor(0.1), 50.0, step=3)


def test_greedy_rollouts_are_the_same_under_any_seed_and_sampled_ones_are_not(lora_run, tmp_path):
    from mpo_lib.method.ppo import Trainer, ppo_prompts

    variant = PPOVariant(init="dpo", reference="dpo", prompts="all")
    trainer = Trainer(lora_run, variant, build_roles(lora_run, variant), tmp_path, steps=4)
    prompts = ppo_prompts(lora_run, variant)[:4]

    def responses(greedy: bool, seed: int) -> list[str]:
        trainer.spec = trainer.spec.model_copy(update={"greedy_rollouts": greedy})
        torch.manual_seed(seed)
        return trainer.rollout(prompts).responses

    assert responses(True, 0) == responses(True, 1)
    assert responses(False, 0) != responses(False, 1)


def test_micro_batches_accumulate_to_the_mini_batch_gradient(lora_run, tmp_path):
    """Gradient accumulation over micro-batches changes memory, not the update."""
    from mpo_lib.method.ppo import Trainer, ppo_prompts

    variant = PPOVariant(init="dpo", reference="dpo", prompts="all")
    gradients = []
    for micro in (None, 1):
        torch.manual_seed(0)
        trainer = Trainer(lora_run, variant, build_roles(lora_run, variant), tmp_path, steps=4)
        trainer.spec = trainer.spec.model_copy(update={"mini_batch_size": 4, "micro_batch_size": micro,
                                                       "ppo_epochs": 1})
        if micro is None:
            batch = trainer.rollout(ppo_prompts(lora_run, variant)[:4])
            batch.mask[0, 5:] = batch.mask[2, 10:] = 0  # responses of different lengths: the
            # per-token weighting across micro-batches matters
        seen = {}
        trainer._step = lambda role, seen=seen, trainer=trainer: seen.update({
            f"{role}.{n}": p.grad.clone() for n, p in trainer.roles.trainable[role].items() if p.grad is not None})
        torch.manual_seed(1)
        trainer.update(batch, step=1)
        gradients.append(seen)
        # every trainable parameter of both roles got a gradient; the frozen stage adapters, none
        assert len(seen) == sum(map(len, trainer.roles.trainable.values()))
        assert all(p.grad is None for n, p in trainer.roles.lora.named_parameters() if ".stage_" in n)
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        assert torch.allclose(gradient, gradients[1][name], rtol=1e-4, atol=1e-7), name


def test_smoke_ppo_trains_both_variants(smoke_run):
    for name in ("mpo", "ppo_full"):
        metrics = smoke_run.metrics(name)
        assert metrics["steps"] == smoke_run.cfg.ppo.max_steps
        assert math.isfinite(metrics["kl_last_quarter"]) and math.isfinite(metrics["reward_last_quarter"])
    assert smoke_run.metrics("mpo")["prompts"] == smoke_run.metrics("split")["hard"]
    assert (smoke_run.path / "figures" / "ppo_reward_kl.png").exists()


def test_prompt_batches_use_every_prompt_before_repeating_one():
    from mpo_lib.method.ppo import prompt_batches

    batches = prompt_batches([f"p{i}" for i in range(10)], 4, seed=0)
    first = [next(batches) for _ in range(5)]  # 20 prompts: exactly two passes
    flat = [p for batch in first for p in batch]
    assert all(len(batch) == 4 for batch in first)
    assert sorted(flat[:10]) == sorted(f"p{i}" for i in range(10)) == sorted(flat[10:])


def test_optimizers_are_deepspeed_chats_no_decay_on_biases_and_norm_weights(tiny_run):
    """DeepSpeed-Chat's parameter groups: every weight of the tiny Llama decays except its RMSNorm weights."""
    from mpo_lib.runtime.models import load_stage_model

    params = dict(load_stage_model(tiny_run, "base").named_parameters())
    decay, exempt = optimizer_groups(params, weight_decay=0.1)
    names = {id(p): n for n, p in params.items()}
    assert decay["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    assert {names[id(p)] for p in exempt["params"]} == {n for n in params if n.endswith("norm.weight")}
    assert len(decay["params"]) + len(exempt["params"]) == len(params)
    assert "model.layers.0.self_attn.q_proj.weight" in {names[id(p)] for p in decay["params"]}


def test_the_schedule_counts_optimizer_steps_not_rollouts():
    """cpu_small: 2 PPO epochs x 2 mini-batches of a rollout batch of 8 is 4 optimizer steps per PPO step,
    so a warm-up of 1 leaves only the first of 32 updates at learning rate 0, not the whole first PPO step."""
    from mpo_lib.runtime.config import load_config

    spec = load_config(ROOT / "params" / "cpu_small.yaml").ppo
    vanilla = spec.steps(PPOVariant(init="sft", reference="sft", prompts="all"), prompts=64)  # one pass
    assert spec.updates_per_step == 4 and vanilla * spec.updates_per_step == 32


def test_each_ppo_variant_makes_one_pass_over_its_own_prompts_unless_told_otherwise():
    """DeepSpeed-Chat's num_train_epochs 1: vanilla PPO over 80K prompts runs 4x the steps of MPO's PPO over
    the 20K of a quarter; a variant's own epochs or max_steps, then ppo.max_steps, override the pass."""
    from mpo_lib.runtime.config import PPOConfig

    spec = PPOConfig(rollout_batch_size=64, mini_batch_size=64, max_new_tokens=8, actor_lr=1.0, critic_lr=1.0)
    assert spec.steps(PPOVariant(prompts="all"), 80_000) == 1250
    assert spec.steps(PPOVariant(prompts="hard"), 20_000) == 313  # ceil: every prompt is seen once
    assert spec.steps(PPOVariant(epochs=2), 20_000) == 625
    assert spec.steps(PPOVariant(max_steps=7), 20_000) == 7
    capped = spec.model_copy(update={"max_steps": 5})
    assert capped.steps(PPOVariant(), 20_000) == 5 and capped.steps(PPOVariant(epochs=0.5), 128) == 1
    with pytest.raises(ValueError, match="set epochs or max_steps for a PPO variant, not both"):
        PPOVariant(epochs=1, max_steps=3)

