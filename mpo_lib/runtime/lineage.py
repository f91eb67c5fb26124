"""Before a pipeline starts: which stages it will reuse, resume, build or re-run, and why.

Each stage's config hash covers its settings (the `*_spec` function next to the stage) and the
hashes of the stages it consumes, so the plan computes every hash the run would compute, in
pipeline order, and compares it with what the run directory holds: a changed setting names the
keys that changed, a re-run upstream stage names that stage.
"""
from __future__ import annotations

import json

from mpo_lib.runtime import stages
from mpo_lib.runtime.artifacts import RESUME_STATE, Run, completed_hash, config_hash, read_json


def _changed_keys(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for k in sorted(set(old) | set(new))
                for key in _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if old != new else []


def plan(run: Run, inputs: stages.Inputs | None = None) -> list[dict]:
    """[{stage, action, why}], action one of reuse / resume / build / re-run, for every stage of the
    registry's catalogue in pipeline order."""
    inputs = inputs or stages.Inputs(run)
    digests, rows = {}, []
    for stage in stages.catalogue(run.cfg):
        try:
            settings, upstream = stage.kind.spec(run, stage, inputs)
        except stages.PromptsUnknown:  # an eval stage before base is built
            done = run.is_complete(stage.name)
            rows.append({"stage": stage.name, "action": "unknown" if done else "build",
                         "why": "decided once base is built" if done else "new"})
            continue
        settings = json.loads(json.dumps(settings, default=str))  # as recorded in config.json
        upstream_hashes = {u: digests.get(u) for u in upstream}
        digest = config_hash({"stage": stage.name, "settings": settings, "upstream": upstream_hashes})
        digests[stage.name] = digest
        final, partial = run.stage_dir(stage.name), run.path / f"{stage.name}.partial"
        if completed_hash(final) == digest:
            rows.append({"stage": stage.name, "action": "reuse", "why": "finished with the same config"})
        elif (partial / "config.json").exists() and read_json(partial / "config.json").get("hash") == digest \
                and any((partial / name).exists() for name in RESUME_STATE):
            rows.append({"stage": stage.name, "action": "resume", "why": "an interrupted attempt with the same config"})
        elif completed_hash(final) is None:
            rows.append({"stage": stage.name, "action": "build", "why": "new"})
        else:
            recorded = read_json(final / "config.json")
            upstream_changed = [u for u in upstream if recorded["upstream"].get(u) != upstream_hashes[u]]
            reasons = [f"settings changed: {', '.join(keys)}"] if (
                keys := _changed_keys(recorded["settings"], settings)) else []
            reasons += [f"{u} re-runs" for u in upstream_changed]
            rows.append({"stage": stage.name, "action": "re-run", "why": "; ".join(reasons) or "its config hash changed"})
    return rows
