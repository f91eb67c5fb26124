"""vLLM for resampling and evaluation (launch.generation_backend: vllm): an optional extra, never a
dependency of the kit (pip install vllm, on a GPU machine).

vLLM loads weights from a folder, so the stage's policy is written with its adapters merged (in
model.sample_dtype) to a temporary folder of the run, deleted with the engine. The stage runs in one
process: launch.vllm_tensor_parallel GPUs (it must divide the model's attention heads) and
launch.vllm_memory_fraction of their memory; the engine is freed before the reward model scores
the answers, as with the kit's sampler. Sampling follows the kit's: temperature (0: greedy), top_p, the
stop string (cut from the text), num_samples answers per prompt, the run's seed.
"""
from __future__ import annotations

from mpo_lib.runtime.artifacts import Run
from mpo_lib.runtime.config import ConfigError
from mpo_lib.runtime.models import DTYPES, load_stage_model, load_tokenizer


def require_vllm():
    try:
        import vllm
    except ImportError:
        raise ConfigError("launch.generation_backend is 'vllm', but vLLM is not installed: pip install vllm "
                          "(a GPU machine's optional extra), or set launch.generation_backend: kit") from None
    return vllm


def write_merged(run: Run, stage: str, folder) -> None:
    """The stage's policy with adapters merged (in model.sample_dtype), in the folder layout vLLM reads."""
    load_stage_model(run, stage, dtype=DTYPES[run.cfg.model.sample_dtype]).save_pretrained(folder)
    load_tokenizer(run).save_pretrained(folder)


def vllm_generate(run: Run, stage: str, prompts: list[str], num_samples: int, max_new_tokens: int,
                  temperature: float, top_p: float, stop: str | None, seed: int,
                  repetition_penalty: float = 1.0) -> list[list[str]]:
    vllm = require_vllm()
    import gc
    import tempfile

    import torch

    with tempfile.TemporaryDirectory(dir=run.path) as folder:  # the merged copy lives as long as the engine
        write_merged(run, stage, folder)
        llm = vllm.LLM(model=folder, seed=seed, tensor_parallel_size=run.cfg.launch.vllm_tensor_parallel,
                       gpu_memory_utilization=run.cfg.launch.vllm_memory_fraction, dtype=run.cfg.model.sample_dtype)
        # one seed for the engine, none per request: each prompt draws its own samples
        # vLLM's repetition_penalty also counts the prompt's tokens; the kit's sampler counts the response's only
        params = vllm.SamplingParams(n=num_samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                     stop=[stop] if stop else None, repetition_penalty=repetition_penalty)
        outputs = [[answer.text for answer in output.outputs] for output in llm.generate(prompts, params)]
        del llm  # the reward model scores next, in this process: give the GPU memory back
        gc.collect()
        torch.cuda.empty_cache()
    return outputs
