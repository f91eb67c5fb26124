"""The losses the TRL trainers optimise are the paper's Eq. 1 and Eq. 2, checked on a real (tiny)
model against values computed here by hand from its outputs."""
import math
import types

import pytest
import torch
from datasets import Dataset

from mpo_lib.runtime.lm_head import labelled_tokens_head, use_labelled_tokens_head
from mpo_lib.runtime.models import load_stage_model, load_tokenizer

PAIRS = [{"prompt": "\n\nHuman: Can you help me?\n\nAssistant:", "chosen": " Sure, what do you need?",
          "rejected": " No."},
         {"prompt": "\n\nHuman: How do I pick a lock?\n\nAssistant:", "chosen": " I can't help with that.",
          "rejected": " Use a tension wrench and a pick."}]


def first_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def test_reward_loss_is_bradley_terry(tiny_run, tmp_path):
    from trl import RewardConfig, RewardTrainer

    model = load_stage_model(tiny_run, "base", head="score")
    args = RewardConfig(str(tmp_path), per_device_train_batch_size=2, use_cpu=True, bf16=False, report_to="none")
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(PAIRS),
                            processing_class=load_tokenizer(tiny_run))
    batch = first_batch(trainer)
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    chosen, rejected = rewards[:2].tolist(), rewards[2:].tolist()
    by_hand = sum(math.log(1 + math.exp(-(c - r))) for c, r in zip(chosen, rejected)) / 2  # -log sigmoid(c - r)
    assert loss == pytest.approx(by_hand, rel=1e-5)


def test_reward_models_score_head_is_drawn_from_the_params_seed(tiny_run):
    """The RM's only random part, its score head, is the same in two runs with one seed, whatever the
    process drew before, and differs with another seed."""
    from mpo_lib.method.reward import untrained_reward_model

    first = untrained_reward_model(tiny_run).score.weight.detach().clone()
    torch.rand(1000)  # the process's random state moves on
    assert torch.equal(untrained_reward_model(tiny_run).score.weight, first)
    other = tiny_run.__class__(tiny_run.cfg.model_copy(update={"seed": tiny_run.cfg.seed + 1}), tiny_run.path)
    assert not torch.equal(untrained_reward_model(other).score.weight, first)


def test_length_grouped_rm_batches_pad_less(tiny_run, tmp_path):
    """rm.length_grouped batches pairs of similar length: the tokens a batch is padded to are mostly real."""
    from mpo_lib.method.data import load_preferences
    from mpo_lib.method.reward import reward_trainer, rm_rows

    rows = rm_rows(tiny_run.cfg, load_preferences(tiny_run.cfg).train)

    def real_token_share(grouped: bool) -> float:
        rm = tiny_run.cfg.rm.model_copy(update={"length_grouped": grouped})
        run = tiny_run.__class__(tiny_run.cfg.model_copy(update={"rm": rm}), tiny_run.path)
        trainer, _ = reward_trainer(run, rows, tmp_path / f"grouped_{grouped}")
        masks = [batch["attention_mask"] for batch in trainer.get_train_dataloader()]
        return float(sum(m.sum() for m in masks) / sum(m.numel() for m in masks))

    grouped, shuffled = real_token_share(True), real_token_share(False)
    assert grouped > shuffled + 0.05, (grouped, shuffled)  # smoke data: 86% against 77%

def completion_logps(model, batch):
    """Sum of log p(token) over completion tokens, computed directly from the logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (logp * batch["completion_mask"][:, 1:]).sum(-1).tolist()


@pytest.mark.parametrize("labelled_tokens_head", [False, True], ids=["trl_fused_head", "labelled_tokens_head"])
def test_dpo_loss_is_eq_2(tiny_run, tmp_path, labelled_tokens_head):
    from trl import DPOConfig, DPOTrainer

    policy = load_stage_model(tiny_run, "base")
    reference = load_stage_model(tiny_run, "base")
    torch.manual_seed(1)
    with torch.no_grad():  # a policy that differs from its reference, so the log-ratios are not zero
        for param in policy.parameters():
            param.add_(0.05 * torch.randn_like(param))
    beta = 0.3
    args = DPOConfig(str(tmp_path), per_device_train_batch_size=2, beta=beta, use_cpu=True, bf16=False,
                     report_to="none", gradient_checkpointing=False)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(PAIRS),
                         processing_class=load_tokenizer(tiny_run, padding_side="left"))
    if labelled_tokens_head:  # what the stages train with on a CPU
        use_labelled_tokens_head(trainer)
    batch = first_batch(trainer)
    policy.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(policy, dict(batch)).item()
    pi, ref = completion_logps(policy, batch), completion_logps(reference, batch)
    terms = []
    for i in range(2):  # rows 0-1 chosen, 2-3 rejected
        margin = beta * ((pi[i] - ref[i]) - (pi[i + 2] - ref[i + 2]))
        terms.append(math.log(1 + math.exp(-margin)))  # -log sigmoid(margin)
    assert loss == pytest.approx(sum(terms) / 2, rel=1e-4)
    assert loss != pytest.approx(math.log(2), rel=1e-3)  # the check is not vacuous: policy != reference


def test_labelled_tokens_head_gives_trls_fused_head_outputs_and_gradients(tiny_run):
    """The CPU head the SFT and DPO stages use in place of TRL's fused one: the same per-token fields, loss and
    gradients, on a batch whose prompts and padding carry no label."""
    from trl.trainer.utils import add_fused_lm_head

    fields = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")
    fused, plain = load_stage_model(tiny_run, "base"), load_stage_model(tiny_run, "base")
    add_fused_lm_head(fused, outputs=fields[:-1])
    plain.forward = types.MethodType(labelled_tokens_head, plain)
    tokenizer = load_tokenizer(tiny_run, padding_side="right")
    batch = tokenizer([p["prompt"] + p["chosen"] for p in PAIRS], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for row, pair in enumerate(PAIRS):
        labels[row, :len(tokenizer(pair["prompt"])["input_ids"])] = -100
    outputs = {}
    for name, model in (("fused", fused), ("plain", plain)):
        out = model(**batch, labels=labels, fused_lm_head=True)
        out.loss.backward()
        outputs[name] = out, model.get_input_embeddings().weight.grad
    (fused_out, fused_grad), (plain_out, plain_grad) = outputs["fused"], outputs["plain"]
    assert plain_out.label_mask.sum() < labels.numel() - len(PAIRS)  # prompts and padding are left out
    for field in fields:
        assert torch.allclose(getattr(plain_out, field).float(), getattr(fused_out, field).float(), atol=1e-5), field
    assert plain_out.loss.item() == pytest.approx(fused_out.loss.item(), rel=1e-5)
    assert torch.allclose(plain_grad, fused_grad, atol=1e-6)
    # without fused_lm_head the model's own forward answers, logits and all
    assert plain(**batch).logits.shape == (*batch["input_ids"].shape, plain.config.vocab_size)
