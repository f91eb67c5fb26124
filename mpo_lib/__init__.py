"""MPO reproduction kit: the thin library the notebooks call. One module per concern: config
(params), data, models, artifacts (the run directory), stages (the registry of every stage), launch
(in the kernel or on launched workers), one module per stage kind (stats, sft, reward, resample,
dpo, ppo, ablations, evaluation), bootstrap (intervals), judge and human_eval, figures, report,
pipeline (papermill), export, tracking and the CLI (docs/architecture.md)."""
import sys

# peft imports bitsandbytes whenever it is installed (~120 MB resident and a second in every process):
# hidden (find_spec -> None) until a run's params need it (4-bit base, 8-bit optimizer: Run exposes it)
sys.modules.setdefault("bitsandbytes", None)

from .artifacts import Run  # noqa: E402 (after the bitsandbytes guard above)
from .config import Config, ConfigError, load_config, notebook_config  # noqa: E402


def open_run(namespace: dict) -> Run:
    """The run a notebook works in, from its parameters cell (params_file, run_dir, overrides). Tables print
    a row per line, however wide (JupyterLab shows their HTML): the same text whatever their numbers' widths."""
    import pandas as pd
    pd.set_option("display.expand_frame_repr", False)
    return Run(notebook_config(namespace), namespace.get("run_dir"))


__all__ = ["Config", "ConfigError", "Run", "load_config", "notebook_config", "open_run"]
