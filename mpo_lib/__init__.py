"""MPO reproduction kit: the thin library the notebooks call, in three layers (docs/architecture.md):
runtime (params, the run directory, the stage registry, launching, models, the pipeline), method (one module
per stage of the paper: data, sft, reward, resample, dpo, ppo, ablations) and reporting (Table 1, evaluation,
intervals, judge, human evaluation, figures, report, the paper's numbers)."""
import sys

# peft imports bitsandbytes whenever it is installed (~120 MB resident and a second in every process):
# hidden (find_spec -> None) until a run's params need it (4-bit base, 8-bit optimizer: Run exposes it)
sys.modules.setdefault("bitsandbytes", None)

from mpo_lib.runtime.artifacts import Run  # noqa: E402 (after the bitsandbytes guard above)
from mpo_lib.runtime.config import Config, ConfigError, load_config, notebook_config  # noqa: E402


def open_run(namespace: dict) -> Run:
    """The run a notebook works in, from its parameters cell (params_file, run_dir, overrides). Tables print
    a row per line, however wide (JupyterLab shows their HTML): the same text whatever their numbers' widths."""
    import pandas as pd
    pd.set_option("display.expand_frame_repr", False)
    return Run(notebook_config(namespace), namespace.get("run_dir"))


__all__ = ["Config", "ConfigError", "Run", "load_config", "notebook_config", "open_run"]
