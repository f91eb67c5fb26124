"""Training curves for every training stage, where params `tracking.report_to` says: TensorBoard (default,
event files in <run>/<stage>/tensorboard/, `tensorboard --logdir runs/<run_name>`), Weights & Biases or
Trackio (when installed). SFT, RM and DPO log through TRL's own callbacks; PPO, the kit's loop, through
`Tracker`. Only the main process logs."""
from __future__ import annotations

import os
from pathlib import Path

from mpo_lib.runtime.config import Config
from mpo_lib.runtime.distributed import is_main_process


def run_label(cfg: Config, stage: str) -> str:
    """The stage's run name in W&B / Trackio: one project per kit run, one run per stage."""
    return f"{cfg.run_name}/{stage}"


def project(cfg: Config) -> str:
    """The W&B / Trackio project: tracking.project, else the run's name."""
    return cfg.tracking.project or cfg.run_name


def trl_arguments(cfg: Config, stage: str) -> dict:
    """TRL trainer arguments for the hosted backends; TensorBoard goes through `tensorboard_callbacks`, so that
    its event files land in the stage's folder rather than in a dated folder under the checkpoints."""
    hosted = [backend for backend in cfg.tracking.report_to if backend != "tensorboard"]
    if "wandb" in hosted:
        os.environ.setdefault("WANDB_PROJECT", project(cfg))  # transformers' W&B callback reads its project here
    return {"report_to": hosted or "none", "run_name": run_label(cfg, stage), "project": project(cfg)}


def tensorboard_callbacks(cfg: Config, out_dir: Path) -> list:
    if "tensorboard" not in cfg.tracking.report_to or not is_main_process():
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback
    return [TensorBoardCallback(SummaryWriter(str(out_dir / "tensorboard")))]


class Tracker:
    """PPO's curves and samples: scalars per step, the logged samples as a table (TensorBoard: a markdown
    table in its Text tab; W&B / Trackio: their Table)."""

    def __init__(self, cfg: Config, stage: str, out_dir: Path):
        self.writer, self.hosted = None, []
        if not is_main_process():
            return
        if "tensorboard" in cfg.tracking.report_to:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(out_dir / "tensorboard"))
        for backend in cfg.tracking.report_to:
            if backend != "tensorboard":
                module = __import__(backend)
                module.init(project=project(cfg), name=run_label(cfg, stage),
                            config=cfg.source_params)
                self.hosted.append(module)

    def log(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items() if self.writer else ():
            self.writer.add_scalar(f"ppo/{key}", value, step)
        for module in self.hosted:
            module.log({f"ppo/{key}": value for key, value in metrics.items()}, step=step)

    def log_samples(self, samples: list[dict], step: int) -> None:
        """Every sample so far (step, reward, response), as one table."""
        if self.writer:
            rows = "\n".join(f"| {s['step']} | {s['reward']:.3f} | {_cell(s['response'])} |" for s in samples)
            self.writer.add_text("ppo/samples", "| step | reward | response |\n|---|---|---|\n" + rows, step)
        for module in self.hosted:
            table = module.Table(columns=["step", "reward", "response"],
                                 data=[[s["step"], s["reward"], s["response"]] for s in samples])
            module.log({"ppo/samples": table}, step=step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        for module in self.hosted:
            module.finish()


def _cell(text: str) -> str:
    """A response as one markdown table cell."""
    return text.replace("|", "\\|").replace("\n", "<br>")
