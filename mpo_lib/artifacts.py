"""The run directory: runs/<run_name>/<stage>/ with model, metrics.json, config.json and a
COMPLETE marker written last. A stage is built in <stage>.partial/ and renamed into place,
so a stage folder without its marker never exists; a finished stage with the same config
hash is reused, and a finished stage with another hash is moved aside, never overwritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from .config import PROJECT_ROOT, Config

MARKER = "COMPLETE"


def config_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json(path: Path, payload) -> None:
    """Write JSON atomically (temp file + rename), so a killed process never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


class Run:
    def __init__(self, cfg: Config, run_dir: str | Path | None = None):
        self.cfg = cfg
        root = Path(run_dir) if run_dir else Path(os.environ.get("MPO_RUNS_DIR", PROJECT_ROOT / "runs")) / cfg.run_name
        self.path = root.resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "figures").mkdir(exist_ok=True)
        self._check_owner()

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
            if (self.require(name) / MARKER).read_text().strip() != digest:
                raise RuntimeError(f"stage {stage!r} in {self.path} was built on an earlier {name!r}, which has "
                                   f"been re-run since: re-run {stage!r} (its notebook) before using it")
        return self.stage_dir(stage)

    def metrics(self, stage: str) -> dict:
        return read_json(self.require(stage) / "metrics.json")

    def figure_path(self, name: str) -> Path:
        return self.path / "figures" / name

    def run_stage(self, stage: str, settings: dict, upstream: list[str],
                  build: Callable[[Path], dict]) -> dict:
        """Build `stage` unless a finished copy with the same settings and upstream exists.

        `build(out_dir)` writes the stage's files into out_dir and returns its metrics.
        The hash covers the settings and the upstream stages' hashes, so a change re-runs
        this stage and everything downstream of it.
        """
        upstream_hashes = {name: (self.require(name) / MARKER).read_text().strip() for name in upstream}
        digest = config_hash({"stage": stage, "settings": settings, "upstream": upstream_hashes})
        final = self.stage_dir(stage)
        if (final / MARKER).exists() and (final / MARKER).read_text().strip() == digest:
            print(f"[{stage}] finished earlier with the same config ({digest}): reusing {final}")
            return read_json(final / "metrics.json")

        partial = self.path / f"{stage}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        write_json(partial / "config.json", {"settings": settings, "upstream": upstream_hashes, "hash": digest})
        started = time.time()
        metrics = build(partial)
        metrics["wall_seconds"] = round(time.time() - started, 1)
        write_json(partial / "metrics.json", metrics)
        (partial / MARKER).write_text(digest + "\n")
        if final.exists():  # a finished stage with other settings: keep it, out of the way
            stamp, n = time.strftime("%Y%m%d-%H%M%S"), 0
            while (self.path / f"{stage}.superseded-{stamp}-{n}").exists():
                n += 1
            final.rename(self.path / f"{stage}.superseded-{stamp}-{n}")
        partial.rename(final)
        return metrics
