"""One builder per run directory at a time.

Every process that builds stages in a run directory holds `<run>/.lock` while it does: the pipeline
for its whole run, a notebook kernel (or a `stage` command) while it builds one stage, the notebook
cell that launches workers while they run. The lock is an OS file lock (filelock), so the kernel
releases it when its holder dies and a later run takes it over; `<run>/.lock.json` names the
holder for whoever waits. A second builder prints that holder in one line and waits, or, with
`--no-wait` (MPO_RUN_LOCK_NO_WAIT=1), refuses at once. Processes the holder starts (papermill's
kernels, launched workers) inherit the hold through MPO_RUN_LOCK_HELD instead of waiting for it.
Reading a finished run (reports, --plan, the dry run) never takes the lock.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

HELD_ENV = "MPO_RUN_LOCK_HELD"  # {run dir: holder pid} of the ancestors that hold a run's lock
NO_WAIT_ENV = "MPO_RUN_LOCK_NO_WAIT"

_depth: dict[str, int] = {}  # run dir -> nesting depth of building() in this process


class RunLocked(RuntimeError):
    """Another process is building stages in this run directory (and we were asked not to wait)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _inherited_holds() -> dict[str, int]:
    try:
        holds = json.loads(os.environ.get(HELD_ENV) or "{}")
    except ValueError:
        return {}
    return holds if isinstance(holds, dict) else {}


def _held_by_ancestor(key: str) -> bool:
    """An ancestor holds the lock; checked alive, so an orphaned kernel of a dead pipeline does not trust it."""
    pid = _inherited_holds().get(key)
    return isinstance(pid, int) and _alive(pid)


def holder(run_path: Path) -> str:
    """'pid P on HOST (COMMAND) since TIME', as the holder recorded it."""
    try:
        info = json.loads((run_path / ".lock.json").read_text())
        return f"pid {info['pid']} on {info['host']} ({info['command']}) since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "a process that has not yet recorded itself"


@contextmanager
def building(run_path: Path):
    """Hold the run directory's lock for the block (re-entrant, and inherited by child processes)."""
    key = str(Path(run_path).resolve())
    if _depth.get(key) or _held_by_ancestor(key):
        _depth[key] = _depth.get(key, 0) + 1
        try:
            yield
        finally:
            _depth[key] -= 1
        return
    run_path = Path(key)
    run_path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_path / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if os.environ.get(NO_WAIT_ENV) == "1":
            raise RunLocked(f"{run_path} is in use by {holder(run_path)}: not waiting (--no-wait); "
                            "run again once it has finished, or choose another --run-dir") from None
        print(f"[run lock] {run_path} is in use by {holder(run_path)}: waiting for it to finish "
              "(--no-wait refuses instead)", flush=True)
        lock.acquire()
    info = run_path / ".lock.json"
    info.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200],
                                "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
    inherited = os.environ.get(HELD_ENV)
    os.environ[HELD_ENV] = json.dumps({**_inherited_holds(), key: os.getpid()})
    _depth[key] = 1
    try:
        yield
    finally:
        _depth[key] = 0
        if inherited is None:
            os.environ.pop(HELD_ENV, None)
        else:
            os.environ[HELD_ENV] = inherited
        info.unlink(missing_ok=True)  # before the release: a waiter that takes over writes its own
        lock.release()
