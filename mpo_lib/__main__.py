"""Command line: `python -m mpo_lib data|pipeline --params params/X.yaml`."""
from __future__ import annotations

import argparse
import sys

from .artifacts import DiskFull, Run
from .config import ConfigError, load_config
from .data import DataError, corpus, load_preferences


def data_command(args) -> None:
    """Table 1 counts, drops per reason and token lengths, as in notebook 00."""
    from .models import prepare_base
    from .stats import run_data_stats, table1

    cfg = load_config(args.params)
    splits = load_preferences(cfg)
    run = Run(cfg, args.run_dir)
    prepare_base(run, corpus(cfg, splits))
    metrics = run_data_stats(run, splits)
    print(table1(metrics).to_string())
    for part in metrics["files"].values():
        for reason, lines in part.get("first_dropped_lines", {}).items():
            print(f"{part['file']}: {part['dropped'][reason]} dropped as {reason}, first at lines {lines}")
    print(f"training rows: {metrics['train_rows']}  held out: {metrics['heldout_rows']}")
    for name, summary in metrics["token_lengths"].items():
        print(f"{name} tokens: " + "  ".join(f"{k}={v:.0f}" for k, v in summary.items()))


def pipeline_command(args) -> None:
    if args.dry_run:
        from .dryrun import dry_run, print_dry_run
        cfg = load_config(args.params)
        existing = Run(cfg, args.run_dir) if Run.folder(cfg, args.run_dir).is_dir() else None  # its split, if done
        print_dry_run(dry_run(cfg, args.params, existing))
        return
    from .pipeline import run_pipeline
    run_pipeline(args.params, args.run_dir, args.until, args.plan)


def stage_command(args) -> None:
    from .launch import worker_main
    worker_main(args.params, args.run_dir, args.stage)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpo_lib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, help_text in (("data", data_command, "dataset statistics (Table 1)"),
                                     ("pipeline", pipeline_command, "run the notebooks in order with papermill"),
                                     ("stage", stage_command, "run one launched stage (what `accelerate launch` runs)")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--params", required=True, help="params/X.yaml")
        sub.add_argument("--run-dir", help="default: runs/<run_name>")
        sub.set_defaults(handler=handler)
        if name == "pipeline":
            sub.add_argument("--until", help="last notebook number to run, e.g. 04")
            sub.add_argument("--plan", action="store_true",
                             help="print which stages would be reused / resumed / built / re-run, and why; run nothing")
            sub.add_argument("--dry-run", action="store_true",
                             help="print each stage's launch, batch sizes, optimizer steps and memory per device; "
                                  "run nothing")
        if name == "stage":
            sub.add_argument("stage", help="sft, rm, resample, dpo, a PPO variant or an ablation")
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (ConfigError, DataError, DiskFull) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
