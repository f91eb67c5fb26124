"""The method, one module per stage of the paper: data (HH-RLHF, TL;DR), sft, reward (Eq. 1), resample
(Algorithm 1: sampling, scoring, the split by reward gap), dpo (Eq. 2), ppo (Eq. 3, DeepSpeed-Chat's PPO) with
roles (its four models on one backbone), ablations (notebook 06)."""
