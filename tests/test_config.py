import importlib.util
import re

import pytest

from mpo_lib import ConfigError, Run, load_config

from conftest import ROOT, SMOKE


@pytest.mark.parametrize("name", ["smoke", "cpu_small", "hh_full", "tldr_full"])
def test_every_profile_validates(name):
    assert load_config(ROOT / "params" / f"{name}.yaml").run_name


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_typo_names_file_key_and_nearest_key(tmp_path):
    path = write(tmp_path, SMOKE.read_text().replace("rm: {learning_rate", "rm: {learning_rte"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "unknown key 'rm.learning_rte'; did you mean 'rm.learning_rate'?" in str(err.value)


def test_typo_inside_a_ppo_variant_is_found():
    with pytest.raises(ConfigError, match=re.escape("unknown key 'ppo.variants.mpo.refrence'; did you mean "
                                                    "'ppo.variants.mpo.reference'")):
        load_config(SMOKE, {"ppo": {"variants": {"mpo": {"refrence": "sft"}}}})


def test_wrong_type_names_the_key(tmp_path):
    path = write(tmp_path, SMOKE.read_text().replace("beta: 0.1", "beta: high"))
    with pytest.raises(ConfigError, match=r"params.yaml: dpo.beta: Input should be a valid number"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ({"dpo": {"beta": 0}}, "dpo.beta: Input should be greater than 0"),
    ({"model": {"max_position": 128}}, "sft.max_length=160 exceeds model.max_position=128"),
    ({"data": {"holdout": 0}}, "set data.holdout > 0"),
    ({"rm": {"subsets": ["red-team-attempts"]}}, "must be among data.subsets"),
    ({"ablations": ["dpo_ful"]}, "ablations: unknown 'dpo_ful'; did you mean 'dpo_full'?"),
    ({"ablations": [], "eval": {"compare": ["mpo", "ppo_hard"]}}, "eval.compare: 'ppo_hard' is not a policy these params train"),
    ({"split": {"gammas": [0.01]}}, "split.gammas [0.01]: 0.01 appears twice (split.gamma=0.01 is trained already)"),
    ({"ppo": None}, "split.gammas trains an MPO per threshold: it needs ppo.variants.mpo"),
    ({"ppo": {"variants": {"mpo": {"epochs": 2, "max_steps": 3}}}}, "set epochs or max_steps for a PPO variant, not both"),
    ({"launch": {"accelerate_config": "params/smoke.yaml"}}, "params/smoke.yaml is not an `accelerate config` file"),
    ({"data": {"eval_prompts": "tldr_sft_test"}}, "data.eval_prompts 'tldr_sft_test' is TL;DR's protocol"),
    ({"ppo": {"top_p": 0.9}}, "ppo.top_p=0.9: PPO's ratio and KL would need the log-probabilities of the truncated"),
])
def test_impossible_values_are_rejected(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(SMOKE, override)


def test_missing_data_folder_is_named(tmp_path):
    cfg = load_config(SMOKE, {"data": {"data_dir": str(tmp_path / "nowhere")}})
    with pytest.raises(ConfigError, match="nowhere is not a folder"):
        cfg.data_dir()


def test_missing_params_file():
    with pytest.raises(ConfigError, match=re.escape("params file not found: params/nope.yaml")):
        load_config("params/nope.yaml")


def test_run_directory_of_another_profile_is_refused(tmp_path):
    Run(load_config(SMOKE), tmp_path)
    other = load_config(SMOKE, {"run_name": "other"})
    with pytest.raises(ValueError, match="holds run 'smoke', not 'other'"):
        Run(other, tmp_path)


def test_a_machine_without_native_bf16_runs_a_bf16_profile_in_fp32_and_says_so(tmp_path, monkeypatch, capsys):
    from mpo_lib.runtime import config

    cfg = load_config(ROOT / "params" / "cpu_small.yaml")
    monkeypatch.setattr(config, "native_bf16", lambda: False)  # an AVX2-only CPU: bf16 emulated, ~130x slower
    run = Run(cfg, tmp_path / "run")
    assert (run.cfg.model.bf16, run.cfg.model.sample_dtype) == (False, "float32")  # what the stages hash
    assert "no native bf16" in capsys.readouterr().out
    assert run.cfg.source_params == cfg.source_params  # launched workers get the params as written, decide alike
    kept = Run(load_config(ROOT / "params" / "cpu_small.yaml", {"model": {"emulated_bf16": True}}), tmp_path / "run")
    assert (kept.cfg.model.bf16, kept.cfg.model.sample_dtype) == (True, "bfloat16")
    monkeypatch.setattr(config, "native_bf16", lambda: True)
    assert Run(cfg, tmp_path / "run").cfg.model == cfg.model


def test_papermill_injected_keys_override_the_params_file():
    from mpo_lib import notebook_config

    cfg = notebook_config({"params_file": str(SMOKE), "dpo": {"beta": 0.5}, "overrides": {"seed": 3}})
    assert cfg.dpo.beta == 0.5 and cfg.seed == 3 and cfg.dpo.batch_size == 4


@pytest.mark.parametrize("launch, config_file, deepspeed", [
    ({}, "params/accelerate/multi_gpu.yaml", None),
    ({"deepspeed_config": "params/deepspeed/zero2.json"}, "params/accelerate/zero2.yaml", "params/deepspeed/zero2.json"),
    ({"accelerate_config": "params/accelerate/zero3.yaml"}, "params/accelerate/zero3.yaml", "params/deepspeed/zero3.json"),
    ({"accelerate_config": "params/accelerate/multi_node.yaml"}, "params/accelerate/multi_node.yaml",
     "params/deepspeed/zero3.json"),
])
def test_launched_stages_run_from_a_shipped_accelerate_config_file(launch, config_file, deepspeed):
    from accelerate.commands.config.config_args import ClusterConfig

    from mpo_lib.runtime.launch import stage_command

    cfg = load_config(SMOKE, {"launch": {"num_processes": 2, **launch}, "ppo": {"micro_batch_size": 1}})
    command = stage_command(cfg, "dpo", "runs/smoke/launch/dpo.yaml", "runs/smoke")
    assert command[command.index("--config_file") + 1] == config_file and cfg.launch.deepspeed_config == deepspeed
    accelerate = ClusterConfig.from_yaml_file(ROOT / config_file)  # as `accelerate launch` reads it
    assert (accelerate.distributed_type == "DEEPSPEED") == (deepspeed is not None)
    assert accelerate.mixed_precision is None  # beside a DeepSpeed JSON accelerate refuses it: the launcher passes it


def test_an_uninstalled_tracking_backend_is_named():
    if importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    with pytest.raises(ConfigError, match=re.escape("tracking.report_to: 'wandb' is not installed (pip install wandb)")):
        load_config(SMOKE, {"tracking": {"report_to": ["tensorboard", "wandb"]}})
