"""MPO reproduction kit: the thin library the notebooks call. One module per concern:
config (params), data, models, artifacts (run directory), one module per stage
(stats, sft, reward, resample, dpo), figures, pipeline (papermill) and the CLI."""
import sys

# peft imports bitsandbytes whenever it is installed (~120 MB resident and a second in every process):
# hidden (find_spec -> None) until a run's params need it (4-bit base, 8-bit optimizer: Run exposes it)
sys.modules.setdefault("bitsandbytes", None)

from .artifacts import Run  # noqa: E402 (after the bitsandbytes guard above)
from .config import Config, ConfigError, load_config, notebook_config  # noqa: E402


def open_run(namespace: dict) -> Run:
    """The run a notebook works in, from its parameters cell (params_file, run_dir, overrides)."""
    return Run(notebook_config(namespace), namespace.get("run_dir"))


__all__ = ["Config", "ConfigError", "Run", "load_config", "notebook_config", "open_run"]
