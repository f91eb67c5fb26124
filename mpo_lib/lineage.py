"""Before a pipeline starts: which stages it will reuse, resume, build or re-run, and why.

Each stage's config hash covers its settings (the `*_spec` function next to the stage) and the
hashes of the stages it consumes, so the plan computes every hash the run would compute, in
pipeline order, and compares it with what the run directory holds: a changed setting names the
keys that changed, a re-run upstream stage names that stage.
"""
from __future__ import annotations

import json

from .artifacts import RESUME_STATE, Run, completed_hash, config_hash, read_json
from .data import Splits, corpus


def planned_stages(cfg) -> list[str]:
    """Every stage of a full pipeline run, in the order the notebooks build them."""
    from .evaluation import configured_policies

    return ["base", "data", "sft", "rm", "resample", "split", *[p for p in cfg.trained_policies() if p != "sft"],
            *[f"eval_{policy}" for policy in configured_policies(cfg)]]


def stage_spec(run: Run, stage: str, splits: Splits, prompts: list[dict]) -> tuple[dict, list[str]]:
    from .dpo import dpo_spec, dpo_variant
    from .evaluation import eval_spec
    from .models import base_spec
    from .ppo import ppo_spec
    from .resample import resample_spec, split_spec
    from .reward import rm_spec
    from .sft import sft_spec
    from .stats import data_spec

    cfg = run.cfg
    fixed = {"data": data_spec, "sft": sft_spec, "rm": rm_spec, "resample": resample_spec, "split": split_spec}
    if stage == "base":
        return base_spec(cfg, corpus(cfg, splits))
    if stage in fixed:
        return fixed[stage](cfg)
    if stage.startswith("eval_"):
        return eval_spec(run, stage.removeprefix("eval_"), prompts)
    try:
        dpo_variant(run, stage)
    except ValueError:
        return ppo_spec(cfg, stage)
    return dpo_spec(run, stage)


def _changed_keys(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for k in sorted(set(old) | set(new))
                for key in _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if old != new else []


def plan(run: Run, splits: Splits) -> list[dict]:
    """[{stage, action, why}], action one of reuse / resume / build / re-run."""
    from .evaluation import eval_prompts

    # the eval prompts are cut with the base tokenizer: known once base is built
    prompts = eval_prompts(run, splits.heldout) if run.is_complete("base") else None
    digests, rows = {}, []
    for stage in planned_stages(run.cfg):
        if stage.startswith("eval_") and prompts is None:
            rows.append({"stage": stage, "action": "build" if not run.is_complete(stage) else "unknown",
                         "why": "new" if not run.is_complete(stage) else "decided once base is built"})
            continue
        settings, upstream = stage_spec(run, stage, splits, prompts)
        settings = json.loads(json.dumps(settings, default=str))  # as recorded in config.json
        upstream_hashes = {u: digests.get(u) for u in upstream}
        digest = config_hash({"stage": stage, "settings": settings, "upstream": upstream_hashes})
        digests[stage] = digest
        final, partial = run.stage_dir(stage), run.path / f"{stage}.partial"
        if completed_hash(final) == digest:
            rows.append({"stage": stage, "action": "reuse", "why": "finished with the same config"})
        elif (partial / "config.json").exists() and read_json(partial / "config.json").get("hash") == digest \
                and any((partial / name).exists() for name in RESUME_STATE):
            rows.append({"stage": stage, "action": "resume", "why": "an interrupted attempt with the same config"})
        elif completed_hash(final) is None:
            rows.append({"stage": stage, "action": "build", "why": "new"})
        else:
            recorded = read_json(final / "config.json")
            upstream_changed = [u for u in upstream if recorded["upstream"].get(u) != upstream_hashes[u]]
            reasons = [f"settings changed: {', '.join(keys)}"] if (
                keys := _changed_keys(recorded["settings"], settings)) else []
            reasons += [f"{u} re-runs" for u in upstream_changed]
            rows.append({"stage": stage, "action": "re-run", "why": "; ".join(reasons) or "its config hash changed"})
    return rows
