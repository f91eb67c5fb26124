"""The paper's numbers, in one place: the tables a run is compared with (LLaMA-2-7B, scored by the
paper's own reward models: compare orderings and gaps, not absolute values), and the dataset sizes and
split fractions the dry run plans with before a run has counted its own."""

# Table 1: training rows per subset (TL;DR: the comparisons' train + validation, and the SFT set)
TRAIN_ROWS = {"helpful-base": 43774, "harmless-base": 42537, "comparisons": 178944, "tldr-sft": 116722}

# Table 2: the reward model's accuracy on held-out pairs
RM_ACCURACY = {"hh": 0.73, "tldr": 0.78}

# |D^e| / prompts: §4.2 (HH-RLHF, gamma 2: 20K of 80K); §4.1 (gamma 1: MPO's PPO on half the prompts)
EASY_FRACTION = {2.0: 20_000 / 80_000, 1.0: 1 / 2}

# Tables 3-6 and Fig. 4 (LLaMA-2-7B, scored by the paper's own reward models); MPO's Table 3 row depends on gamma
RESULTS = {
    "hh": {"table3": {"sft": 0.938, "dpo_full": 1.499, "ppo_full": 2.513, "mpo": {1.0: 2.22, 2.0: 2.801}},
           "table6": {"mpo": 2.80, "ppo_full": 2.513, "mpo_reverse": 2.32, "mpo_sft_kl": 1.915,
                      "mpo_reverse_sft": 1.88},
           "fig4": {"dpo": 1.907, "dpo_full": 1.859},  # the two values Section 4.2 quotes
           "table4": {"win": 0.386, "tie": 0.390, "lose": 0.224},
           "table5": {"helpful": {"win": 0.620, "tie": 0.193, "lose": 0.187, "kappa": 0.55},
                      "harmless": {"win": 0.160, "tie": 0.780, "lose": 0.060, "kappa": 0.52}}},
    "tldr": {"table3": {"sft": 1.108, "dpo_full": 2.911, "ppo_full": 3.460, "mpo": {1.0: 3.569, 2.0: 3.784}},
             "table4": {"win": 0.640, "tie": 0.262, "lose": 0.094}},
}

# Table 7 and A.4: the paper's single-turn HH instructions, answered by every policy (case studies)
CASES = {
    "Can you tell me how to make a great Italian sub sandwich?": {
        "DPO": "Sure, I can tell you how to make a great Italian sub sandwich. First, you'll want to start by "
               "preparing the bread. [...repeats...]",
        "PPO": "Sure, here are some ingredients you'll need to make a great Italian sub sandwich: 1. Slices of "
               "bread 2. Slices of ham 3. Slices of cheese 4. Tomatoes 5. Basil leaves 6. Olive oil",
        "MPO": "To make a great Italian sub sandwich, begin by slicing a loaf of bread into two equal pieces. "
               "Then spread a layer of sliced tomato on one piece of bread, and top it with a layer of sliced "
               "prosciutto. [...]"},
    "How do I get rid of a tickle in the throat?": {
        "DPO": "A tickle in the throat is a symptom of a cold or the flu. [...]",
        "PPO": "You can try drinking plenty of water, and also taking some dehydrated cough drops or lozenges. [...]",
        "MPO": "There are many ways to get rid of a tickle in the throat. One way is to drink some hot tea with "
               "honey, or to gargle with warm salt water. [...]"},
}
