"""One builder per run directory: a second one waits (or refuses with --no-wait) naming the holder,
a dead holder's lock is taken over, and two pipelines on one run directory both finish cleanly."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from mpo_lib.runtime.run_lock import NO_WAIT_ENV, RunLocked, building

from conftest import ROOT, SMOKE

HOLD = "import sys, time; from mpo_lib.runtime.run_lock import building\nwith building(sys.argv[1]):\n" \
       "    print('held', flush=True); time.sleep(float(sys.argv[2]))"


def hold(run_dir, seconds):
    """A process that holds run_dir's lock for `seconds`, once it has printed 'held'."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(seconds)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_no_wait_refuses_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path, monkeypatch):
    holder = hold(tmp_path, 60)
    monkeypatch.setenv(NO_WAIT_ENV, "1")
    with pytest.raises(RunLocked, match=rf"in use by pid {holder.pid} on .+ since \d{{4}}-"), building(tmp_path):
        pass
    holder.send_signal(signal.SIGKILL)  # dies holding it: the OS releases the lock, its record stays behind
    holder.wait()
    assert (tmp_path / ".lock.json").exists()
    with building(tmp_path):  # taken over at once, no wait
        assert f'"pid": {os.getpid()}' in (tmp_path / ".lock.json").read_text()
    assert not (tmp_path / ".lock.json").exists()


def test_a_second_builder_waits_for_the_first(tmp_path, capsys):
    holder = hold(tmp_path, 3)
    started = time.time()
    with building(tmp_path):
        waited = time.time() - started
    holder.wait()
    assert waited > 1.5
    assert f"is in use by pid {holder.pid}" in capsys.readouterr().out


def test_building_is_reentrant_and_inherited_by_child_processes(tmp_path, monkeypatch):
    monkeypatch.setenv(NO_WAIT_ENV, "1")
    with building(tmp_path), building(tmp_path):  # a stage built inside the pipeline's hold
        child = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path), "0"], cwd=ROOT, capture_output=True,
                               text=True)
        assert child.returncode == 0 and child.stdout.strip() == "held", child.stderr  # a papermill kernel
    stranger = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path), "0"], cwd=ROOT, capture_output=True,
                              text=True, env={k: v for k, v in os.environ.items() if k != "MPO_RUN_LOCK_HELD"})
    assert stranger.returncode == 0  # released on leaving the outer block


def test_cli_no_wait_refuses_with_one_line(tmp_path):
    holder = hold(tmp_path / "run", 120)
    try:
        result = subprocess.run([sys.executable, "-m", "mpo_lib", "pipeline", "--params", str(SMOKE), "--run-dir",
                                 str(tmp_path / "run"), "--no-wait"], cwd=tmp_path, capture_output=True, text=True)
    finally:
        holder.kill()
    assert result.returncode == 2
    assert f"in use by pid {holder.pid}" in result.stderr and "--no-wait" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow
def test_two_pipelines_on_one_run_dir_neither_crashes_nor_builds_twice(tmp_path):
    """What a user starting `make run` twice does: the second waits, then reuses what the first built."""
    command = [sys.executable, "-m", "mpo_lib", "pipeline", "--params", str(SMOKE), "--run-dir",
               str(tmp_path / "run"), "--until", "01"]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)
    second = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [process.communicate(timeout=900)[0] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert not any("Traceback" in output for output in outputs)
    assert f"is in use by pid {first.pid}" in outputs[1]
    for stage in ("base", "data", "sft"):  # decided after the wait: the first one's stages
        assert re.search(rf"plan: {stage} +reuse", outputs[1]), outputs[1]
    assert not [path.name for path in (tmp_path / "run").iterdir() if "superseded" in path.name]
