"""The LM head that TRL's SFT and DPO trainers score labels with, on a CPU.

TRL patches the model's forward with a fused head (`fused_lm_head=True`) built for GPU memory: it never holds the
(tokens x vocabulary) logits. Without Triton it folds tiles in fp32 (the head's matmul included) over every position,
prompt and padding too, and recomputes them in the backward pass: on cpu_small's SFT it was half of each step.
On a CPU, memory is not what runs out, so the kit replaces it with the plain head on the labelled positions only,
under the run's autocast, returning the same `FusedCausalLMOutput` fields.
"""
from __future__ import annotations

import types

import torch
from trl.trainer.utils import FusedCausalLMOutput


def labelled_tokens_head(self, *args, fused_lm_head: bool = False, labels=None, shift_labels=None,
                         num_items_in_batch=None, **kwargs):
    """The forward TRL calls, for a causal LM without logit scaling: with fused_lm_head, per-token
    log p(label) (and entropy, mean logit, log sum p^2, whether the label is the top token; without gradient),
    zero where the label is -100, and their mean negative log-likelihood as `loss`."""
    if not fused_lm_head:  # generation and evaluation: the model's own forward
        passed = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
        return type(self).forward(self, *args, **{k: v for k, v in passed.items() if v is not None}, **kwargs)
    hidden = self.base_model(*args, **{**kwargs, "use_cache": False}).last_hidden_state
    if shift_labels is None:
        hidden, shift_labels = hidden[:, :-1], labels[:, 1:]
    mask = shift_labels != -100
    targets = shift_labels[mask]
    logits = self.get_output_embeddings()(hidden[mask]).float()
    log_p = logits.log_softmax(-1)
    picked = log_p.gather(-1, targets[:, None]).squeeze(-1)
    with torch.no_grad():
        fields = {"entropy": -(log_p.exp() * log_p).sum(-1), "mean_logits": logits.mean(-1),
                  "log_sum_sq_probs": torch.logsumexp(2 * log_p, -1), "is_top1": logits.argmax(-1) == targets}

    def per_token(values):  # masked_scatter keeps an all-masked batch connected to the model
        return values.new_zeros(mask.shape).masked_scatter(mask, values)

    log_probs = per_token(picked)
    count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs, label_mask=mask,
                               **{name: per_token(values) for name, values in fields.items()})


def scaled_logits(config) -> bool:
    """Whether the model scales or caps its logits, which labelled_tokens_head does not do."""
    text = config.get_text_config()
    return any(getattr(text, name, None) is not None
               for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                            "logits_scaling"))


def use_labelled_tokens_head(trainer) -> None:
    """On a CPU, give the trainer's policy (and its separate reference, if any) labelled_tokens_head in place of
    TRL's fused head. On accelerators TRL's own (Triton) head stays: there it saves the memory it was built for."""
    if trainer.accelerator.device.type != "cpu":
        return
    for model in (trainer.model, getattr(trainer, "ref_model", None)):
        if model is None:
            continue
        model = trainer.accelerator.unwrap_model(model)  # under DeepSpeed TRL wraps the reference in an engine
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        if not scaled_logits(causal_lm.config):
            causal_lm.forward = types.MethodType(labelled_tokens_head, causal_lm)
