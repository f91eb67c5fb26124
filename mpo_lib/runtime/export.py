"""`python -m mpo_lib export --run-dir R --stage S --to DIR [--push-to-hub REPO]`: a finished stage as files
that load without the kit.

- a policy (sft, dpo, mpo, ppo_full, an ablation) or the reward model (rm): its adapters merged into whole
  weights (in bf16/fp32, never into a 4-bit base), `save_pretrained` with the tokenizer, and a model card
  (README.md) that names the paper, the stage chain, the stage's settings hash, the data, its metrics
  and its Table 3 row. `AutoModelForCausalLM.from_pretrained(DIR)` (the RM:
  `AutoModelForSequenceClassification`) gives the run's logits.
- a split (split, split_gamma<g>): D^e and D^h as a `datasets` DatasetDict (splits "easy" and "hard",
  columns prompt / chosen / rejected, the higher-reward response chosen, plus both rewards), saved with
  `save_to_disk`: `load_from_disk(DIR)["easy"]` is what TRL's DPOTrainer takes as train_dataset.

The params come from the stage's own record (<run>/<stage>/params.yaml), so only the run directory is needed.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from mpo_lib.method.resample import load_pairs, load_split, split_by_gap
from mpo_lib.runtime import stages
from mpo_lib.runtime.artifacts import Run, read_json
from mpo_lib.runtime.config import ConfigError, load_config
from mpo_lib.runtime.models import base_model_id, load_stage_model, load_tokenizer

PAPER = ("Mixed Preference Optimization: A Two-stage Reinforcement Learning with Human Feedbacks "
         "(Gou & Nguyen, arXiv:2403.19443)")
DATASETS = {"hh": "Anthropic/hh-rlhf", "tldr": "openai/summarize_from_feedback"}


def open_finished(run_dir: str | Path, stage: str) -> Run:
    """The run a finished stage belongs to, with the params it was built with."""
    record = Path(run_dir) / stage / "params.yaml"
    if not record.is_file():
        finished = sorted(p.parent.name for p in Path(run_dir).glob("*/COMPLETE") if "." not in p.parent.name)
        close = difflib.get_close_matches(stage, finished, n=1)
        raise ConfigError(f"--stage {stage!r}: no finished stage of that name with its params recorded ({record})"
                          + (f"; did you mean {close[0]!r}?" if close else "")
                          + f" (finished in {run_dir}: {', '.join(finished) or 'none'})")
    return Run(load_config(overrides=yaml.safe_load(record.read_text())), run_dir)


def export(run: Run, name: str, to: Path, push_to_hub: str | None = None) -> Path:
    try:
        found = stages.stage(run.cfg, name)
    except ValueError as exc:
        raise ConfigError(f"--stage: {exc}") from None
    if found.kind is stages.SPLIT:
        return export_split(run, name, to, push_to_hub)
    if found.kind in (stages.SFT, stages.RM, stages.DPO, stages.PPO):
        return export_model(run, found, to, push_to_hub)
    raise ConfigError(f"--stage {name!r} ({found.kind.name}) holds no model or preference pairs: export a policy, "
                     "rm or a split")


def export_model(run: Run, found: stages.Stage, to: Path, push_to_hub: str | None = None) -> Path:
    head = "score" if found.kind is stages.RM else "lm"
    model = load_stage_model(run, found.name, head, quantized=False)
    model.save_pretrained(to)
    load_tokenizer(run).save_pretrained(to)
    (to / "README.md").write_text(model_card(run, found))
    if push_to_hub:
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=str(to))
    return to


def chain(cfg, name: str) -> list[str]:
    """The stages a model was trained through, from the base model: e.g. base, sft, dpo, mpo."""
    found = stages.stage(cfg, name)
    if found.kind in (stages.SFT, stages.RM):
        return ["base", name]
    return [*chain(cfg, found.variant.init), name]


def describe(cfg, name: str) -> str:
    """One line of the chain: what the stage trained on, from what, against which reference."""
    found = stages.stage(cfg, name)
    variant = found.variant
    if found.kind is stages.DPO:
        return (f"`{name}`: DPO (Eq. 2) on the {variant.data} pairs of `{variant.split}`, from `{variant.init}`, "
                f"reference `{variant.reference}`")
    if found.kind is stages.PPO:
        return (f"`{name}`: PPO (Eq. 3) on the {variant.prompts} prompts of `{variant.split}`, from "
                f"`{variant.init}`, KL reference `{variant.reference}`")
    return {"base": f"`base`: {base_model_id(cfg)}", "sft": "`sft`: supervised fine-tuning on the chosen responses",
            "rm": "`rm`: Bradley-Terry reward model (Eq. 1)"}[name]


def model_card(run: Run, found: stages.Stage) -> str:
    from huggingface_hub import ModelCardData

    cfg, name = run.cfg, found.name
    record = read_json(run.require(name) / "config.json")
    metrics = run.metrics(name)
    card = ModelCardData(base_model=base_model_id(cfg) if cfg.model.name != "tiny" else None,
                         library_name="transformers", datasets=[DATASETS[cfg.data.dataset]],
                         tags=["mpo", "rlhf", "dpo" if found.kind is stages.DPO else found.kind.name])
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    lines = [f"---\n{card.to_yaml()}\n---", f"# {cfg.run_name} / {name}: {stages.label(name)}", "",
             f"Trained with the MPO reproduction kit, reproducing *{PAPER}*.", "", "## Stage chain", "",
             *[f"{i}. {describe(cfg, link)}" for i, link in enumerate(chain(cfg, name), 1)], "",
             "## Params", "", f"Settings hash `{record['hash']}` (upstream: "
             + ", ".join(f"`{k}` {v}" for k, v in record["upstream"].items()) + f"); profile `{cfg.run_name}`, seed "
             f"{cfg.seed}, LoRA {cfg.model.lora.model_dump() if cfg.model.lora else 'none (full fine-tuning)'}, "
             f"bf16 {cfg.model.bf16}.", "", "## Data", "",
             f"{DATASETS[cfg.data.dataset]}, subsets {', '.join(cfg.data.subsets)} (train split "
             f"`{cfg.data.train_split}`, evaluation split `{cfg.data.eval_split}`).", "", "## Training metrics", "",
             "| metric | value |", "|---|---|", *[f"| {k} | {v:.4g} |" for k, v in sorted(scalars.items())], ""]
    if run.is_complete(f"eval_{name}"):
        row = run.metrics(f"eval_{name}")
        lines += ["## Evaluation (Table 3 row)", "",
                  f"Mean reward {row['reward_mean']:.3f} (95% bootstrap interval [{row['ci_low']:.3f}, "
                  f"{row['ci_high']:.3f}]) on {row['prompts']} held-out prompts, scored by the run's trained "
                  "reward model (the reward PPO optimised).", ""]
    return "\n".join(lines)


def export_split(run: Run, name: str, to: Path, push_to_hub: str | None = None) -> Path:
    from datasets import Dataset, DatasetDict

    # every resampled pair ordered as Algorithm 1 orders D^e (the higher reward chosen), by prompt
    pairs = load_pairs(run)
    ordered = {row["prompt"]: row for row in split_by_gap(pairs, gamma=-1.0)[0]}
    rewards = {pair["prompt"]: sorted((pair["reward_1"], pair["reward_2"])) for pair in pairs}

    def rows(side: str) -> list[dict]:
        return [{**ordered[row["prompt"]], "reward_chosen": rewards[row["prompt"]][1],
                 "reward_rejected": rewards[row["prompt"]][0]} for row in load_split(run, side, name)]

    data = DatasetDict({side: Dataset.from_list(rows(side)) for side in ("easy", "hard")})
    data.save_to_disk(str(to))
    gamma = run.metrics(name)["gamma"]
    (to / "README.md").write_text(
        f"# {run.cfg.run_name} / {name}: D^e and D^h at gamma = {gamma:g}\n\nAlgorithm 1 of *{PAPER}*: two "
        f"responses sampled per prompt from the SFT policy, scored by the trained reward model; a pair whose reward "
        f"gap exceeds gamma is easy (D^e: {len(data['easy'])} pairs, MPO's DPO data), otherwise hard (D^h: "
        f"{len(data['hard'])} prompts, MPO's PPO prompts). Load with `datasets.load_from_disk`.\n")
    if push_to_hub:
        data.push_to_hub(push_to_hub)
    return to
