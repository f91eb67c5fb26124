"""TRL 1.12's trl.experimental.ppo.PPOTrainer on the benchmark's models and prompts. Runs inside the
throw-away venv made by ppo_vs_trl.py (TRL 1.12 is never a dependency of the kit).

    python trl_ppo_worker.py spec.json   ->  prints one JSON line: step seconds and peak RSS
"""
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl.experimental.ppo import PPOConfig, PPOTrainer


class StepTimer(TrainerCallback):
    """PPOTrainer calls on_step_end once per update (rollout + its PPO epochs)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.last, self.seconds = time.perf_counter(), []

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.seconds.append(now - self.last)
        self.last = now


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.manual_seed(spec["seed"])
    torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["policy"])
    tokenizer.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(spec["reference"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["reward"], num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(spec["reward"], num_labels=1, dtype=torch.float32)
    for model in (reward, value):
        model.config.pad_token_id = tokenizer.pad_token_id
    prompts = Dataset.from_dict({"input_ids": spec["prompt_ids"]})
    args = PPOConfig(
        output_dir=spec["output_dir"], report_to="none", use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, save_strategy="no", logging_steps=1, disable_tqdm=True, seed=spec["seed"],
        per_device_train_batch_size=spec["rollout_batch_size"], gradient_accumulation_steps=1,
        num_mini_batches=spec["rollout_batch_size"] // spec["mini_batch_size"],
        local_rollout_forward_batch_size=spec["rollout_batch_size"], num_ppo_epochs=spec["ppo_epochs"],
        response_length=spec["max_new_tokens"], total_episodes=spec["rollout_batch_size"] * spec["steps"],
        learning_rate=spec["actor_lr"], kl_coef=spec["kl_coef"], cliprange=spec["cliprange"],
        cliprange_value=spec["cliprange_value"], gamma=1.0, lam=0.95, temperature=spec["temperature"],
        stop_token="eos", num_sample_generations=0)
    timer = StepTimer()
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=reference,
                         reward_model=reward, value_model=value, train_dataset=prompts, callbacks=[timer])
    trainer.train()
    # VmHWM, not getrusage's ru_maxrss: that one keeps the parent's peak across fork + exec
    with open("/proc/self/status") as status:
        peak_kb = int(next(line for line in status if line.startswith("VmHWM")).split()[1])
    print(json.dumps({"step_seconds": timer.seconds, "peak_rss_mb": peak_kb / 1024}))


if __name__ == "__main__":
    main(sys.argv[1])
