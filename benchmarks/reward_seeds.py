"""The reward model's held-out accuracy over several training seeds, beside the length heuristic; optionally
a second recipe trained side by side, seed for seed.

    python benchmarks/reward_seeds.py --params params/cpu_small.yaml [--seeds 0 1 2] [--set KEY=VALUE ...]
                                      [--against KEY=VALUE ...]

The data are the profile's (its seed draws the held-out pairs, the same for every RM); each seed draws the RM's
score head, LoRA weights and batch order. Each RM is trained and scored as notebook 02 does it (stage `rm`), in a
folder of its own under --out. --set changes the profile for every RM; --against adds a second recipe, trained
after the first for each seed, so that both see the same machine. Prints, per RM and as means: held-out accuracy
per subset and overall, "shorter response wins" on the same pairs, the gap, the stage's wall-clock and the
seconds of it spent training (the rest loads, validates and scores the held-out pairs).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MPO_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mpo_lib import Run, load_config
from mpo_lib.__main__ import parse_sets
from mpo_lib.method.data import corpus, load_preferences
from mpo_lib.method.reward import run_reward
from mpo_lib.runtime.config import deep_merge
from mpo_lib.runtime.models import prepare_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params/cpu_small.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--against", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/reward_seeds")
    args = parser.parse_args()
    profile = parse_sets(args.sets)
    recipes = {"profile": profile}
    if args.against:
        recipes[" ".join(args.against)] = deep_merge(profile, parse_sets(args.against))
    splits = load_preferences(load_config(args.params, profile))  # the profile's seed: the same pairs for all
    print(f"{args.params} {' '.join(args.sets)}: {len(splits.train)} training rows, {len(splits.heldout)} held out")
    print(f"{'recipe':<28}{'seed':>5} {'subset':<14}{'pairs':>6}{'RM':>8}{'shorter':>9}{'gap':>8}{'seconds':>9}{'training':>9}")
    results = {name: [] for name in recipes}  # (accuracy, gap, seconds, training seconds) per seed
    for seed in args.seeds:
        for index, (name, overrides) in enumerate(recipes.items()):
            cfg = load_config(args.params, {**overrides, "seed": seed})
            run = Run(cfg, Path(args.out) / f"recipe{index}_seed{seed}")
            prepare_base(run, corpus(cfg, splits))
            started = time.time()
            metrics = run_reward(run, splits.train, splits.heldout)
            seconds, heldout = time.time() - started, metrics["heldout"]
            for subset, row in heldout.items():
                gap = row["rm_accuracy"] - row["shorter_wins_accuracy"]
                print(f"{name[:27]:<28}{seed:>5} {subset:<14}{row['pairs']:>6}{row['rm_accuracy']:>8.1%}"
                      f"{row['shorter_wins_accuracy']:>9.1%}{gap:>+8.1%}{seconds:>9.0f}{metrics['train_seconds']:>9.0f}",
                      flush=True)
            overall = heldout["all"]
            results[name].append((overall["rm_accuracy"], overall["rm_accuracy"] - overall["shorter_wins_accuracy"],
                                  seconds, metrics["train_seconds"]))
    for name, rows in results.items():
        accuracy, gap, seconds, training = (statistics.mean(column) for column in zip(*rows))
        print(f"{name}: mean over {len(rows)} seeds: RM {accuracy:.1%} (min {min(r[0] for r in rows):.1%}, max "
              f"{max(r[0] for r in rows):.1%}), {gap:+.1%} above the heuristic, {seconds:.0f} s per RM "
              f"({training:.0f} s training)")
    if len(results) == 2:
        (first, first_training), (second, second_training) = (
            (statistics.mean(r[2] for r in rows), statistics.mean(r[3] for r in rows)) for rows in results.values())
        print(f"second recipe / profile: wall-clock {second / first:.2f}, training {second_training / first_training:.2f}")


if __name__ == "__main__":
    main()
