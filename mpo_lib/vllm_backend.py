"""vLLM for resampling and evaluation (launch.generation_backend: vllm): an optional extra, never a
dependency of the kit (pip install vllm, on a GPU machine).

vLLM loads weights from a folder, so a stage's policy is written once with its adapters merged, to
<run>/vllm/<stage>-<stage hash>, and reused while that stage stands. The stage runs in one process
that spreads the model over every visible GPU (tensor parallelism); the reward model then scores the
answers as with the kit's sampler. Sampling follows the kit's: temperature (0: greedy), top_p, the
stop string (cut from the text), num_samples answers per prompt, the run's seed.
"""
from __future__ import annotations

from .artifacts import Run
from .config import ConfigError
from .models import load_stage_model, load_tokenizer


def require_vllm():
    try:
        import vllm
    except ImportError:
        raise ConfigError("launch.generation_backend is 'vllm', but vLLM is not installed: pip install vllm "
                          "(a GPU machine's optional extra), or set launch.generation_backend: kit") from None
    return vllm


def merged_folder(run: Run, stage: str):
    """The stage's policy with adapters merged, in the folder layout vLLM reads, written on first use."""
    folder = run.path / "vllm" / f"{stage}-{run.stage_hash(stage)}"
    if not (folder / "config.json").exists():
        partial = folder.with_name(folder.name + ".partial")
        load_stage_model(run, stage).save_pretrained(partial)
        load_tokenizer(run).save_pretrained(partial)
        partial.rename(folder)
    return folder


def vllm_generate(run: Run, stage: str, prompts: list[str], num_samples: int, max_new_tokens: int,
                  temperature: float, top_p: float, stop: str | None, seed: int) -> list[list[str]]:
    vllm = require_vllm()
    import torch

    llm = vllm.LLM(model=str(merged_folder(run, stage)), seed=seed, tensor_parallel_size=torch.cuda.device_count(),
                   dtype="bfloat16" if run.cfg.model.bf16 else "float32")
    params = vllm.SamplingParams(n=num_samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                 stop=[stop] if stop else None, seed=seed)
    return [[answer.text for answer in output.outputs] for output in llm.generate(prompts, params)]
