"""The run directory: runs/<run_name>/<stage>/ with model, metrics.json, config.json and a
COMPLETE marker written last. A stage is built in <stage>.partial/ and renamed into place,
so a stage folder without its marker never exists; a finished stage with the same config
hash is reused, and a finished stage with another hash is moved aside, never overwritten.
A killed attempt leaves <stage>.partial/ with its checkpoints; the next attempt with the same
config hash resumes from them, one with another hash starts afresh.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from mpo_lib.runtime.config import PROJECT_ROOT, Config
from mpo_lib.runtime.distributed import barrier, is_main_process, rank_and_world
from mpo_lib.runtime.run_lock import building

MARKER = "COMPLETE"
# what a killed attempt leaves for the next one with the same config: TRL's checkpoints (trainer/)
# and PPO's (checkpoint/); everything else in <stage>.partial is rebuilt, and these go once it completes
RESUME_STATE = ("trainer", "checkpoint")


class DiskFull(OSError):
    """The disk filled up while a stage was writing; what was finished before is intact."""


def config_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json(path: Path, payload) -> None:
    """Write JSON atomically (temp file + rename), so a killed process never leaves half a file.
    Launched workers other than rank 0 write nothing: the main process writes the run directory."""
    if not is_main_process():
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
        os.replace(tmp, path)
    finally:  # a failed write (disk full) leaves neither half a file nor a stray .tmp
        tmp.unlink(missing_ok=True)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def announce_resume(out_dir: Path, step: int, checkpoint: Path) -> None:
    """The one line a stage prints when it continues an interrupted attempt."""
    print(f"[{out_dir.name.removesuffix('.partial')}] resuming an interrupted attempt with the same config "
          f"at step {step}, from {checkpoint}", flush=True)


def completed_hash(folder: Path) -> str | None:
    """The config hash a folder was completed with, if it was."""
    return (folder / MARKER).read_text().strip() if (folder / MARKER).exists() else None


def _is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain; safetensors and torch report it only in their message."""
    while exc is not None:
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class Run:
    def __init__(self, cfg: Config, run_dir: str | Path | None = None):
        self.cfg = cfg = cfg.on_this_machine()
        if cfg.uses_bitsandbytes() and sys.modules.get("bitsandbytes", False) is None:
            del sys.modules["bitsandbytes"]  # hidden by mpo_lib/__init__ until params need it
        self.path = self.folder(cfg, run_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "figures").mkdir(exist_ok=True)
        self._check_owner()

    @staticmethod
    def folder(cfg: Config, run_dir: str | Path | None = None) -> Path:
        """run_dir, else $MPO_RUNS_DIR/<run_name>, else runs/<run_name>; relative paths from the project
        root, wherever the kernel started (JupyterLab starts it in notebooks/)."""
        root = Path(run_dir) if run_dir else Path(os.environ.get("MPO_RUNS_DIR", "runs")) / cfg.run_name
        return (PROJECT_ROOT / root).resolve()

    def _check_owner(self) -> None:
        """A run directory belongs to one run_name: refuse to mix stages of two profiles."""
        owner = self.path / "run.json"
        if owner.exists():
            recorded = read_json(owner)["run_name"]
            if recorded != self.cfg.run_name:
                raise ValueError(f"{self.path} holds run {recorded!r}, not {self.cfg.run_name!r}: "
                                 "choose another --run-dir or run_name")
        else:
            write_json(owner, {"run_name": self.cfg.run_name})

    def describe(self) -> str:
        """The line a notebook opens with: which run it is on and what is already built there."""
        finished = sorted((p for p in self.path.iterdir() if (p / MARKER).exists()), key=lambda p: p.stat().st_mtime)
        return (f"run {self.cfg.run_name!r} in {self.path}: "
                + (f"{len(finished)} finished stages ({', '.join(p.name for p in finished)}), each reused "
                   "while its config is unchanged" if finished else "no finished stage yet"))

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    def is_complete(self, stage: str) -> bool:
        return (self.stage_dir(stage) / MARKER).exists()

    def require(self, stage: str) -> Path:
        """A finished stage whose inputs are still the current ones (checked up the whole chain)."""
        if not self.is_complete(stage):
            raise FileNotFoundError(f"stage {stage!r} has not finished in {self.path}: run its notebook first")
        recorded = read_json(self.stage_dir(stage) / "config.json")["upstream"]
        for name, digest in recorded.items():
            if self.stage_hash(name) != digest:
                raise RuntimeError(f"stage {stage!r} in {self.path} was built on an earlier {name!r}, which has "
                                   f"been re-run since: re-run {stage!r} (its notebook) before using it")
        return self.stage_dir(stage)

    def stage_hash(self, stage: str) -> str:
        """The config hash a finished, current stage was built with (its COMPLETE marker)."""
        return completed_hash(self.require(stage))

    def metrics(self, stage: str) -> dict:
        return read_json(self.require(stage) / "metrics.json")

    def figure_path(self, name: str) -> Path:
        return self.path / "figures" / name

    def reuse_or_build(self, stage: str, settings: dict, upstream: list[str],
                  build: Callable[[Path], dict]) -> dict:
        """Build `stage` unless a finished copy with the same settings and upstream exists.

        `build(out_dir)` writes the stage's files into out_dir and returns its metrics.
        The hash covers the settings and the upstream stages' hashes, so a change re-runs
        this stage and everything downstream of it. The main process decides and builds holding the
        run directory's lock, so a stage another process is building is waited for, then reused.
        """
        with building(self.path) if is_main_process() else contextlib.nullcontext():
            return self._build_or_reuse(stage, settings, upstream, build)

    def _build_or_reuse(self, stage: str, settings: dict, upstream: list[str],
                        build: Callable[[Path], dict]) -> dict:
        upstream_hashes = {name: self.stage_hash(name) for name in upstream}
        digest = config_hash({"stage": stage, "settings": settings, "upstream": upstream_hashes})
        final, partial = self.stage_dir(stage), self.path / f"{stage}.partial"
        finished, marked = completed_hash(final) == digest, completed_hash(partial) == digest
        barrier()  # every launched worker decides on the same files before the main one changes them
        if finished:
            print(f"[{stage}] finished earlier with the same config ({digest}): reusing {final}")
            return read_json(final / "metrics.json")
        try:
            if not marked:
                if is_main_process():
                    self._prepare_partial(partial, {"settings": settings, "upstream": upstream_hashes, "hash": digest})
                    # the params it was built with: what `python -m mpo_lib export` reopens the run with
                    (partial / "params.yaml").write_text(yaml.safe_dump(self.cfg.source_params, sort_keys=False))
                barrier()
                started = time.time()
                metrics = build(partial)  # every launched process trains; the main one writes
                barrier()
                if is_main_process():
                    metrics["wall_seconds"] = round(time.time() - started, 1)
                    metrics["workers"] = rank_and_world()[1]
                    for name in RESUME_STATE:  # only needed to resume; a finished stage never does
                        shutil.rmtree(partial / name, ignore_errors=True)
                    write_json(partial / "metrics.json", metrics)
                    (partial / MARKER).write_text(digest + "\n")
            # else: killed after its marker, before the rename below; the attempt is finished
            if is_main_process():
                if final.exists():  # a finished stage with other settings: keep it, out of the way
                    stamp, n = time.strftime("%Y%m%d-%H%M%S"), 0
                    while (self.path / f"{stage}.superseded-{stamp}-{n}").exists():
                        n += 1
                    final.rename(self.path / f"{stage}.superseded-{stamp}-{n}")
                partial.rename(final)
            barrier()
        except Exception as exc:
            if not _is_disk_full(exc):
                raise
            where = getattr(exc, "filename", None) or partial
            raise DiskFull(errno.ENOSPC, f"[{stage}] the disk is full: writing {where} failed "
                           f"({shutil.disk_usage(self.path).free / 2**20:.0f} MiB free). The finished stages in "
                           f"{self.path} are intact; free some space and run again: {stage} resumes from its "
                           f"last checkpoint in {partial}") from exc
        return read_json(final / "metrics.json")

    @staticmethod
    def _prepare_partial(partial: Path, record: dict) -> None:
        """Keep an interrupted attempt's checkpoints when its config hash is this attempt's; otherwise
        (another config, or no readable record) start from an empty folder."""
        try:
            same = read_json(partial / "config.json")["hash"] == record["hash"]
        except (OSError, ValueError, KeyError):
            same = False
        if not same:
            shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
        for path in partial.iterdir():
            if path.name not in RESUME_STATE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        write_json(partial / "config.json", record)
