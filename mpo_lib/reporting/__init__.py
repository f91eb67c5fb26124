"""What the run reports: stats (Table 1), evaluation (held-out rewards, Tables 3-7, paired differences),
bootstrap (BCa intervals), judge (Table 4), human_eval (Table 5), figures, report, and paper (the paper's own
numbers, in one place)."""
