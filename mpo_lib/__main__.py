"""Command line: `python -m mpo_lib data|pipeline|stage --params params/X.yaml [--set key=value ...]`, and
`python -m mpo_lib export --run-dir R --stage S --to DIR` (a finished stage as files that load anywhere)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from mpo_lib.method.data import DataError, corpus, load_preferences
from mpo_lib.runtime.artifacts import DiskFull, Run
from mpo_lib.runtime.config import ConfigError, load_config
from mpo_lib.runtime.pipeline import NotebookFailed
from mpo_lib.runtime.run_lock import NO_WAIT_ENV, RunLocked


def parse_sets(assignments: list[str]) -> dict:
    """`--set dpo.beta=0.2 --set ppo.variants.mpo.prompts=all` -> the overrides mapping the notebooks
    take ({"dpo": {"beta": 0.2}, ...}); each value is read as YAML, so 0.2, true, [a, b] keep their types."""
    overrides: dict = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip() or "" in key.strip().split("."):
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE with a dotted params key, e.g. dpo.beta=0.2")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({exc})") from None
        *parents, leaf = key.strip().split(".")
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {assignment!r}: {part!r} was given a value by an earlier --set")
        node[leaf] = parsed
    return overrides


def config_of(args):
    return load_config(args.params, args.overrides)


def data_command(args) -> None:
    """Table 1 counts, drops per reason and token lengths, as in notebook 00."""
    from mpo_lib.reporting.stats import run_data_stats, table1
    from mpo_lib.runtime.models import prepare_base

    cfg = config_of(args)
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
        from mpo_lib.runtime.dryrun import dry_run, print_dry_run, print_protocol
        cfg = config_of(args)
        existing = Run(cfg, args.run_dir) if Run.folder(cfg, args.run_dir).is_dir() else None  # its split, if done
        print_dry_run(dry_run(cfg, args.params, existing))
        print_protocol(cfg)
        return
    from mpo_lib.runtime.pipeline import run_pipeline
    run_pipeline(args.params, args.run_dir, args.until, args.plan, args.overrides)


def stage_command(args) -> None:
    from mpo_lib.runtime.launch import worker_main
    worker_main(args.params, args.run_dir, args.stage, args.overrides)


def export_command(args) -> None:
    from mpo_lib.runtime.export import export, open_finished

    folder = export(open_finished(args.run_dir, args.stage), args.stage, Path(args.to), args.push_to_hub)
    print(f"exported {args.stage} from {args.run_dir} to {folder}")


def seeds_command(args) -> None:
    from mpo_lib.reporting.report import markdown_table
    from mpo_lib.reporting.seeds import runs_orderings

    print(markdown_table(runs_orderings(args.run_dirs)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpo_lib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, help_text in (("data", data_command, "dataset statistics (Table 1)"),
                                     ("pipeline", pipeline_command, "run the notebooks in order with papermill"),
                                     ("stage", stage_command, "run one launched stage (what `accelerate launch` runs)")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--params", required=True, help="params/X.yaml")
        sub.add_argument("--run-dir", help="default: runs/<run_name>")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                         help="override one params key (repeatable), e.g. --set dpo.beta=0.2; as the "
                              "notebooks' `overrides`, and recorded in the run the same way")
        sub.add_argument("--no-wait", action="store_true",
                         help="refuse at once, naming the holder, when another process is building stages "
                              "in this run directory (default: wait for it)")
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
    sub = commands.add_parser("export", help="a finished stage as a from_pretrained model with its card, or a "
                                             "split as a datasets preference dataset")
    sub.add_argument("--run-dir", required=True, help="the run directory, e.g. runs/cpu_small")
    sub.add_argument("--stage", required=True, help="a policy (sft, dpo, mpo, ppo_full, ...), rm, or a split")
    sub.add_argument("--to", required=True, help="the folder to write")
    sub.add_argument("--push-to-hub", metavar="REPO", help="also upload it to this Hugging Face Hub repository")
    sub.set_defaults(handler=export_command, sets=[], no_wait=False)
    sub = commands.add_parser("seeds", help="the paper's orderings across finished runs that differ only in their seed: "
                                            "shown only where every run's paired interval excludes 0 on the same side")
    sub.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more run directories")
    sub.set_defaults(handler=seeds_command, sets=[], no_wait=False, run_dir=None)
    args = parser.parse_args(argv)
    if args.run_dir:  # relative to where the command runs; the library resolves relative paths from the project
        args.run_dir = str(Path(args.run_dir).resolve())
    if args.no_wait:
        os.environ[NO_WAIT_ENV] = "1"  # the notebooks' kernels and launched workers inherit it
    try:
        args.overrides = parse_sets(args.sets)
        args.handler(args)
    except (ConfigError, DataError, DiskFull, RunLocked, NotebookFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
