"""The stage registry: every stage a run can hold, declared once.

A run is a chain of stages (../shared/DESIGN.md): base -> data -> sft -> rm -> resample -> split ->
dpo -> the PPO variants -> the ablations -> one eval_<policy> per policy. Each stage is an instance of
a `Kind`, which says what its config hash covers (`spec`: settings and upstream stages), how it is
built (`build`), whether it generates text (resampling and evaluation: sharded over launched workers,
or vLLM) and which TRL section trains it. `catalogue(cfg)` lists a run's stages in pipeline order;
launching, the plan, the dry run, evaluation and the pipeline summary all read it, and nothing
else dispatches on stage names.

Adding a stage kind is one `Kind` and a line in `catalogue`; adding an ablation is one entry of
ABLATIONS (a DPO or PPO variant) and, if the tables show it, of LABELS. Each further threshold of
split.gammas copies MPO's three stages (split, dpo, mpo) under names ending in _gamma<g>.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from mpo_lib.runtime.config import Config, DPOVariant, PPOVariant

# The paper's ablations, each a stage named after it; `ablations` in params chooses which run.
# Fig. 4: DPO and PPO trained from SFT on D^e, D^h or everything (`dpo` and `ppo_full` are the
# main stages). Table 6: MPO-sft-kl keeps MPO's PPO near SFT instead of DPO; MPO-reverse runs PPO
# on D^h first (ppo_hard) and DPO on D^e from it, with that policy (or, -sft, SFT) as reference.
# Table 3's text: DPO-base is DPO on the dataset's own pairs.
ABLATIONS: dict[str, DPOVariant | PPOVariant] = {
    "dpo_full": DPOVariant(data="full"),
    "dpo_hard": DPOVariant(data="hard"),
    "dpo_base": DPOVariant(data="offline"),
    "ppo_easy": PPOVariant(init="sft", reference="sft", prompts="easy"),
    "ppo_hard": PPOVariant(init="sft", reference="sft", prompts="hard"),
    "mpo_sft_kl": PPOVariant(init="dpo", reference="sft", prompts="hard"),
    "mpo_reverse": DPOVariant(init="ppo_hard", reference="ppo_hard", data="easy"),
    "mpo_reverse_sft": DPOVariant(init="ppo_hard", reference="sft", data="easy"),
}

# every policy the paper reports, in the order its tables list them, with its label there; a PPO
# variant of the user's own (ppo.variants) follows them, labelled by its name
LABELS = {
    "sft": "SFT", "dpo_base": "DPO-base (dataset pairs)", "dpo_full": "DPO", "dpo": "DPO on D^e (MPO stage 1)",
    "dpo_hard": "DPO on D^h", "ppo_full": "PPO", "ppo_easy": "PPO on D^e", "ppo_hard": "PPO on D^h", "mpo": "MPO",
    "mpo_reverse": "MPO-reverse", "mpo_sft_kl": "MPO-sft-kl", "mpo_reverse_sft": "MPO-reverse-sft",
}


class Inputs:
    """What specs and builds read besides the run directory, loaded once and only when asked for."""

    def __init__(self, run):
        self.run = run

    @cached_property
    def splits(self):
        from mpo_lib.method.data import load_preferences
        return load_preferences(self.run.cfg)

    @cached_property
    def corpus(self) -> list[str]:
        from mpo_lib.method.data import corpus
        return corpus(self.run.cfg, self.splits)

    @cached_property
    def prompts(self) -> list[dict]:
        """The held-out evaluation prompts (cut with the base tokenizer: known once `base` is built)."""
        from mpo_lib.reporting.evaluation import eval_prompts
        if not self.run.is_complete("base"):
            raise PromptsUnknown("the evaluation prompts are cut with the base tokenizer: build base first")
        return eval_prompts(self.run, self.splits.evaluation)


class PromptsUnknown(LookupError):
    """An eval stage's hash needs its prompts, which need the base stage."""


@dataclass(frozen=True)
class Kind:
    """One kind of stage. spec(run, stage, inputs) -> (settings, upstream stages): what its config hash
    covers; build(run, stage, inputs) -> metrics: builds it (or reuses a finished copy)."""
    name: str
    spec: Callable
    build: Callable
    generates: bool = False  # samples text: resampling, evaluation
    trl_section: str | None = None  # the params section of a TRL-trained stage (its batch, for the compute table)


@dataclass(frozen=True)
class Stage:
    name: str
    kind: Kind
    notebook: str  # the notebook that builds it
    variant: DPOVariant | PPOVariant | None = None
    policy: str | None = None  # eval_<policy>: the policy it evaluates
    gamma: float | None = None  # a split stage: its threshold


# MPO's stages at a further threshold of split.gammas: split_gamma1, dpo_gamma0p5 ('.' marks superseded folders)
GAMMA_COPY = re.compile(r"^(split|dpo|mpo)_gamma(\d+(?:p\d+)?)$")


def at_gamma(name: str, gamma: float) -> str:
    """MPO's stage `name` (split, dpo or mpo) at the further threshold `gamma`."""
    return f"{name}_gamma{gamma:g}".replace(".", "p")


def gamma_of(name: str) -> float | None:
    """The threshold in a _gamma<g> stage's name (None for any other stage)."""
    found = GAMMA_COPY.match(name)
    return float(found.group(2).replace("p", ".")) if found else None


def mpo_at(cfg: Config, gamma: float) -> str | None:
    """The MPO stage these params train at threshold `gamma` (mpo at split.gamma), if any."""
    if cfg.split.gamma == gamma:
        return "mpo"
    return at_gamma("mpo", gamma) if gamma in cfg.split.gammas else None


def paper_row(name: str) -> str:
    """The stage whose paper row a stage reproduces: mpo_gamma1 is MPO's row (at gamma 1)."""
    found = GAMMA_COPY.match(name)
    return found.group(1) if found else name


def _base_spec(run, stage, inputs):
    from mpo_lib.runtime.models import base_spec
    return base_spec(run.cfg, inputs.corpus)


def _base_build(run, stage, inputs):
    from mpo_lib.runtime.models import prepare_base
    return prepare_base(run, inputs.corpus)


def _data_spec(run, stage, inputs):
    from mpo_lib.reporting.stats import data_spec
    return data_spec(run.cfg)


def _data_build(run, stage, inputs):
    from mpo_lib.reporting.stats import run_data_stats
    return run_data_stats(run, inputs.splits)


def _sft_spec(run, stage, inputs):
    from mpo_lib.method.sft import sft_spec
    return sft_spec(run.cfg)


def _sft_build(run, stage, inputs):
    from mpo_lib.method.data import sft_rows
    from mpo_lib.method.sft import run_sft
    return run_sft(run, sft_rows(run.cfg, inputs.splits))


def _rm_spec(run, stage, inputs):
    from mpo_lib.method.reward import rm_spec
    return rm_spec(run.cfg)


def _rm_build(run, stage, inputs):
    from mpo_lib.method.reward import run_reward
    return run_reward(run, inputs.splits.train, inputs.splits.heldout)


def _resample_spec(run, stage, inputs):
    from mpo_lib.method.resample import resample_spec
    return resample_spec(run.cfg)


def _resample_build(run, stage, inputs):
    from mpo_lib.method.resample import run_resample
    return run_resample(run, inputs.splits.train)


def _split_spec(run, stage, inputs):
    from mpo_lib.method.resample import split_spec
    return split_spec(stage.gamma)


def _split_build(run, stage, inputs):
    from mpo_lib.method.resample import run_split
    return run_split(run, stage.name, stage.gamma)


def _dpo_spec(run, stage, inputs):
    from mpo_lib.method.dpo import dpo_spec
    return dpo_spec(run, stage.name)


def _dpo_build(run, stage, inputs):
    from mpo_lib.method.dpo import run_dpo
    return run_dpo(run, inputs.splits.train, stage.name)


def _ppo_spec(run, stage, inputs):
    from mpo_lib.method.ppo import ppo_spec
    return ppo_spec(run.cfg, stage.name)


def _ppo_build(run, stage, inputs):
    from mpo_lib.method.ppo import run_ppo
    return run_ppo(run, stage.name)


def _eval_spec(run, stage, inputs):
    from mpo_lib.reporting.evaluation import eval_spec
    return eval_spec(run, stage.policy, inputs.prompts)


def _eval_build(run, stage, inputs):
    from mpo_lib.reporting.evaluation import run_policy_eval
    return run_policy_eval(run, stage.policy, inputs.prompts)


BASE = Kind("base", _base_spec, _base_build)
DATA = Kind("data", _data_spec, _data_build)
SFT = Kind("sft", _sft_spec, _sft_build, trl_section="sft")
RM = Kind("rm", _rm_spec, _rm_build, trl_section="rm")
RESAMPLE = Kind("resample", _resample_spec, _resample_build, generates=True)
SPLIT = Kind("split", _split_spec, _split_build)
DPO = Kind("dpo", _dpo_spec, _dpo_build, trl_section="dpo")
PPO = Kind("ppo", _ppo_spec, _ppo_build)
EVAL = Kind("eval", _eval_spec, _eval_build, generates=True)


def ablation_stages(cfg: Config) -> list[str]:
    """The chosen ablations plus the ablations they start from, in catalogue (dependency) order."""
    chosen = set(cfg.ablations)
    for name in cfg.ablations:
        chosen |= {ABLATIONS[name].init, ABLATIONS[name].reference} & set(ABLATIONS)
    return [name for name in ABLATIONS if name in chosen]


def _policy_stages(cfg: Config) -> list[Stage]:
    """sft, dpo (at each gamma), the PPO variants (and MPO at each further gamma) and the ablations, in the order
    the notebooks build them."""
    stages = [Stage("sft", SFT, "01"), Stage("dpo", DPO, "04", DPOVariant())]
    stages += [Stage(at_gamma("dpo", g), DPO, "04", DPOVariant(split=at_gamma("split", g))) for g in cfg.split.gammas]
    stages += [Stage(name, PPO, "05", variant) for name, variant in (cfg.ppo.variants if cfg.ppo else {}).items()]
    for gamma in cfg.split.gammas:  # MPO's own PPO variant, from and near that threshold's DPO, on its D^h
        dpo = at_gamma("dpo", gamma)
        stages.append(Stage(at_gamma("mpo", gamma), PPO, "05", cfg.ppo.variants["mpo"].model_copy(update={
            "init": dpo, "reference": dpo, "split": at_gamma("split", gamma)})))
    for name in ablation_stages(cfg):
        if name in (cfg.ppo.variants if cfg.ppo else {}):  # the params' own variant of that name wins
            continue
        variant = ABLATIONS[name]
        stages.append(Stage(name, DPO if isinstance(variant, DPOVariant) else PPO, "06", variant))
    return stages


def label(policy: str) -> str:
    """A policy's name in the tables; a further threshold's MPO stages say their gamma."""
    if (gamma := gamma_of(policy)) is not None:  # the gamma inside the label's parenthesis, or in its own
        row = LABELS[paper_row(policy)]
        return f"{row[:-1]}, γ={gamma:g})" if row.endswith(")") else f"{row} (γ={gamma:g})"
    return LABELS.get(policy, policy)


def policies(cfg: Config) -> list[str]:
    """Every policy stage the params train, in the tables' order (LABELS, each further gamma's copy after its
    row, then the user's own variants)."""
    names = [stage.name for stage in _policy_stages(cfg)]
    order = {name: k for k, name in enumerate(LABELS)}
    known = sorted((name for name in names if paper_row(name) in order),
                   key=lambda name: (order[paper_row(name)], gamma_of(name) or 0.0))
    return known + [name for name in names if paper_row(name) not in order]


def catalogue(cfg: Config) -> list[Stage]:
    """Every stage of a full pipeline run, in the order the notebooks build them."""
    trained = _policy_stages(cfg)
    splits = [Stage("split", SPLIT, "03", gamma=cfg.split.gamma)]
    splits += [Stage(at_gamma("split", g), SPLIT, "03", gamma=g) for g in cfg.split.gammas]
    return [Stage("base", BASE, "00"), Stage("data", DATA, "00"), trained[0], Stage("rm", RM, "02"),
            Stage("resample", RESAMPLE, "03"), *splits, *trained[1:],
            *[Stage(f"eval_{name}", EVAL, "07", policy=name) for name in policies(cfg)]]


def of_kind(cfg: Config, *kinds: Kind) -> list[Stage]:
    return [stage for stage in catalogue(cfg) if stage.kind in kinds]


def built_by(cfg: Config, notebook: str, kind: Kind) -> list[str]:
    """The stages of `kind` that notebook `notebook` builds: e.g. "04", DPO: dpo and dpo_gamma<g>."""
    return [stage.name for stage in catalogue(cfg) if stage.notebook == notebook and stage.kind is kind]


def stage(cfg: Config, name: str) -> Stage:
    """The stage `name` of these params; an unknown name fails naming the nearest and every choice."""
    stages = {s.name: s for s in catalogue(cfg)}
    if name not in stages:
        close = difflib.get_close_matches(name, stages, n=1)
        raise ValueError(f"no stage {name!r} in these params" + (f"; did you mean {close[0]!r}?" if close else "")
                         + f" (stages: {', '.join(stages)})")
    return stages[name]


def build(run, name: str, inputs: Inputs | None = None) -> dict:
    """Build stage `name` in this process (or reuse its finished copy): its metrics."""
    found = stage(run.cfg, name)
    return found.kind.build(run, found, inputs or Inputs(run))


def spec(run, name: str, inputs: Inputs) -> tuple[dict, list[str]]:
    found = stage(run.cfg, name)
    return found.kind.spec(run, found, inputs)
