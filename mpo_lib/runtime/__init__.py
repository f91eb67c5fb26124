"""What runs the method: config (typed params), artifacts (the run directory, config hashes), stages (the
registry of every stage kind), lineage (the plan), launch (in the kernel or under accelerate), distributed and
zero (several workers, DeepSpeed), models and training (loading chains, TRL arguments), tracking, run_lock,
pipeline (papermill), export, dryrun (the full-scale plan and the protocol check), vllm_backend."""
