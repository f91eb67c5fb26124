"""How a stage that trains or samples at scale (sft, rm, resample, dpo, the PPO variants, the
ablations, the eval_<policy> generations) runs: in the notebook's kernel, or under `accelerate launch`.
With launch.generation_backend: vllm, resample and eval_<policy> run in the kernel through vLLM.

A notebook cell calls `dpo.train(run)`, that is `launch.run_stage(run, "dpo")`, whatever the params say; the stage registry
(mpo_lib.runtime.stages) says what the stage is and how it is built. With
launch.num_processes = 1 the stage runs in-process. With more, the run's resolved params are
written to <run>/launch/<stage>.yaml and the stage runs as

    accelerate launch --config_file params/accelerate/<A>.yaml --num_processes N \
        [--use_deepspeed --deepspeed_config_file D] [--mixed_precision bf16] \
        -m mpo_lib stage <stage> --params <run>/launch/<stage>.yaml --run-dir <run>

Every worker trains; the main process alone writes the run directory (artifacts.Run.reuse_or_build), under
ZeRO-3 the weights all workers gathered together (training.save_trained). The
workers' output streams into the cell line by line, and a failed worker fails the cell with the last
lines it printed. The accelerate config file is launch.accelerate_config, else the shipped one for the
layout (params/accelerate/multi_gpu, zero2 or zero3.yaml); several machines: a copy of multi_node.yaml.
On CPU the workers talk over gloo, which is how the tests run two processes on one machine.
"""
from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import yaml

from mpo_lib.runtime import stages
from mpo_lib.runtime.artifacts import Run
from mpo_lib.runtime.config import PROJECT_ROOT, Config
from mpo_lib.runtime.run_lock import building


class LaunchError(RuntimeError):
    """A launched worker failed; the message holds its last lines."""


def stage_command(cfg: Config, stage: str, params: str, run_dir: str) -> list[str]:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", cfg.launch.accelerate_file(),
               "--num_processes", str(cfg.launch.num_processes)]
    if cfg.launch.deepspeed_config:  # on the command line too: it replaces the file the accelerate config names
        command += ["--use_deepspeed", "--deepspeed_config_file", cfg.launch.deepspeed_config]
    if cfg.model.bf16:  # not in the config files: accelerate refuses it there beside a DeepSpeed JSON
        command += ["--mixed_precision", "bf16"]
    return command + ["-m", "mpo_lib", "stage", stage, "--params", params, "--run-dir", run_dir]


WORKER_ERROR = "mpo_lib worker error:"


def run_stage(run: Run, stage: str) -> dict:
    """What a notebook cell calls: the stage's metrics, trained in-process or by launched workers."""
    if run.cfg.launch.generation_backend == "vllm" and stages.stage(run.cfg, stage).kind.generates:
        from mpo_lib.runtime.vllm_backend import require_vllm
        require_vllm()  # before anything runs: the stages already finished stay as they are
        return stages.build(run, stage)  # one process; vLLM spreads the model over the GPUs itself
    if run.cfg.launch.num_processes == 1:
        return stages.build(run, stage)  # in this kernel
    with building(run.path):  # the workers inherit this process's hold on the run directory
        return launch_workers(run, stage)


def launch_workers(run: Run, stage: str) -> dict:
    params = run.path / "launch" / f"{stage}.yaml"
    params.parent.mkdir(exist_ok=True)
    params.write_text(yaml.safe_dump(run.cfg.source_params, sort_keys=False))
    command = stage_command(run.cfg, stage, str(params), str(run.path))
    print("launch:", " ".join(command), flush=True)
    tail, errors = collections.deque(maxlen=40), []
    with subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as workers:
        for line in workers.stdout:
            print(line, end="", flush=True)
            tail.append(line)
            if WORKER_ERROR in line:  # the workers' own error, before the launcher's tracebacks
                errors.append(line.split(WORKER_ERROR, 1)[1].strip())
    if workers.returncode:
        raise LaunchError(f"stage {stage}: a launched worker failed (exit {workers.returncode})"
                          + (f": {errors[0]}" if errors else "") + "; its last lines:\n" + "".join(tail))
    return run.metrics(stage)


def worker_main(params: str, run_dir: str, stage: str, overrides: dict | None = None) -> None:
    """`python -m mpo_lib stage`: one launched worker. The process group starts first, so that the
    main process can prepare the stage's folder while the others wait."""
    import torch
    from accelerate import PartialState

    from mpo_lib.runtime.config import load_config
    state = PartialState(cpu=not torch.cuda.is_available())
    try:
        stages.build(Run(load_config(Path(params), overrides), run_dir), stage)
    except Exception as exc:  # one line the launcher finds among the launcher's own tracebacks
        print(f"{WORKER_ERROR} {type(exc).__name__}: {exc}", flush=True)
        raise
    # a worker that exits with its process group alive can abort in gloo's teardown ("terminate called without
    # an active exception") while the main one still writes the stage, and the launcher then kills both
    state.wait_for_everyone()
    state.destroy_process_group()
