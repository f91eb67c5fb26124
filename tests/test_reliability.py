"""Reliability (issue #6): killed stages resume, bad input fails with one message naming the problem
and where it is, no credentials in params, clean notebooks in git.

Bad-input cases tested elsewhere:
- a field that is not a string: test_data.py::test_non_string_field_names_file_and_line
- a truncated gzip file: test_data.py::test_truncated_gzip_names_the_file
- a JSON line cut in half: test_data.py::test_json_line_cut_in_half_names_file_and_line
- a missing data folder: test_config.py::test_missing_data_folder_is_named
- a params typo (nearest key suggested): test_config.py::test_typo_names_file_key_and_nearest_key
- a run directory of another profile: test_config.py::test_run_directory_of_another_profile_is_refused
- notebooks committed with outputs: test_notebooks.py::test_committed_notebooks_are_clean
"""
import errno
import gzip
import json
import re
import shutil
import signal
import subprocess
import sys

import pytest

from mpo_lib import ConfigError, Run, load_config
from mpo_lib.runtime.artifacts import DiskFull, read_json

from conftest import LORA, ROOT, SMOKE

# A stage in a child process that stops for good after its first checkpoint, so the parent kills
# it at a known step: TRL stages through a callback, PPO by wrapping its checkpoint writer.
CHILD = """
import json, sys, time
from transformers import TrainerCallback
from mpo_lib import Run, load_config
from mpo_lib.method import ppo, sft
from mpo_lib.method.data import load_preferences, sft_rows

params, overrides, run_dir, stage = sys.argv[1:]
run = Run(load_config(params, json.loads(overrides)), run_dir)

def stop(step):
    print(f"checkpoint at step {step}", flush=True)
    time.sleep(600)

class StopAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        stop(state.global_step)

train, save = sft.train_and_summarise, ppo.save_checkpoint

def train_and_stop(trainer, cfg, out_dir):
    trainer.add_callback(StopAfterSave)
    return train(trainer, cfg, out_dir)

def save_and_stop(trainer, folder, history, samples):
    save(trainer, folder, history, samples)
    stop(len(history))

sft.train_and_summarise, ppo.save_checkpoint = train_and_stop, save_and_stop
if stage == "sft":
    sft.run_sft(run, sft_rows(run.cfg, load_preferences(run.cfg)))
else:
    ppo.run_ppo(run, stage)
"""


def kill_after_first_checkpoint(run: Run, overrides: dict, stage: str, sig: int, tmp_path) -> int:
    """Run `stage` in a child, kill it with `sig` once its first checkpoint is written; the step."""
    errors = tmp_path / "child.err"
    with open(errors, "w") as stderr, subprocess.Popen(
            [sys.executable, "-c", CHILD, str(SMOKE), json.dumps(overrides), str(run.path), stage],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True) as child:
        step = next((int(line.split()[-1]) for line in child.stdout if line.startswith("checkpoint at step")), None)
        child.send_signal(sig)
    assert step is not None, f"the child ended before its first checkpoint:\n{errors.read_text()[-3000:]}"
    assert child.returncode == -sig
    return step


def copy_run(run: Run, tmp_path, name: str) -> Run:
    shutil.copytree(run.path, tmp_path / name)
    return Run(run.cfg, tmp_path / name)


def losses(stage_dir):
    return [entry["loss"] for entry in read_json(stage_dir / "log_history.json") if "loss" in entry]


@pytest.fixture(scope="module")
def sft_rows_and_run(tiny_run, tmp_path_factory):
    """The SFT rows, and SFT run without interruption beside tiny_run's base."""
    from mpo_lib.method.data import load_preferences, sft_rows
    from mpo_lib.method.sft import run_sft

    rows = sft_rows(tiny_run.cfg, load_preferences(tiny_run.cfg))
    run = copy_run(tiny_run, tmp_path_factory.mktemp("uninterrupted"), "sft")
    run_sft(run, rows)
    return rows, run


@pytest.fixture(scope="module")
def uninterrupted_ppo(lora_run, tmp_path_factory):
    from mpo_lib.method.ppo import run_ppo

    run = copy_run(lora_run, tmp_path_factory.mktemp("uninterrupted"), "ppo")
    run_ppo(run, "ppo_full")
    return run


# ---------------------------------------------------------------------------- resume


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_trl_stage_resumes_from_its_checkpoint(tiny_run, sft_rows_and_run, tmp_path, capsys, sig):
    """SFT (full fine-tuning; rm and dpo share the code): killed after its checkpoint at step 4 of
    12, the next run goes on from step 4 and ends as the uninterrupted run does."""
    from mpo_lib.method.sft import run_sft

    rows, uninterrupted = sft_rows_and_run
    killed = copy_run(tiny_run, tmp_path, "killed")
    step = kill_after_first_checkpoint(killed, {}, "sft", sig, tmp_path)
    partial = killed.path / "sft.partial"
    assert step == killed.cfg.sft.save_steps and not killed.is_complete("sft")
    # what a kill while saving the next checkpoint leaves: a checkpoint without trainer_state.json
    (partial / "trainer" / f"checkpoint-{2 * step}").mkdir()
    (partial / "trainer" / f"checkpoint-{2 * step}" / "model.safetensors").write_bytes(b"half")

    capsys.readouterr()
    metrics = run_sft(killed, rows)
    assert f"[sft] resuming an interrupted attempt with the same config at step {step}" in capsys.readouterr().out
    assert metrics["resumed_at_step"] == step
    assert metrics["optimizer_steps"] == uninterrupted.metrics("sft")["optimizer_steps"] == killed.cfg.sft.max_steps
    assert losses(killed.path / "sft") == pytest.approx(losses(uninterrupted.path / "sft"), rel=1e-4)
    assert not partial.exists() and not (killed.path / "sft" / "trainer").exists()  # checkpoints go when done


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_ppo_resumes_from_its_checkpoint(lora_run, uninterrupted_ppo, tmp_path, capsys, sig):
    """PPO (vanilla PPO, LoRA on two backbones): killed after its checkpoint at step 2 of 4, the next run
    continues the same prompts, weights, optimizers and RNG: every later step is the uninterrupted run's."""
    from mpo_lib.method.ppo import run_ppo

    killed = copy_run(lora_run, tmp_path, "killed")
    step = kill_after_first_checkpoint(killed, LORA, "ppo_full", sig, tmp_path)
    assert step == killed.cfg.ppo.checkpoint_every
    (killed.path / "ppo_full.partial" / "checkpoint" / "state.pt.tmp").write_bytes(b"half")  # a kill while saving

    capsys.readouterr()
    metrics = run_ppo(killed, "ppo_full")
    assert f"[ppo_full] resuming an interrupted attempt with the same config at step {step}" in capsys.readouterr().out
    assert metrics["resumed_at_step"] == step
    assert metrics["steps"] == uninterrupted_ppo.metrics("ppo_full")["steps"] == killed.cfg.ppo.max_steps
    keys = ("reward_mean", "kl_to_reference", "policy_loss", "value_loss", "response_length")
    steps = [row[k] for row in read_json(killed.path / "ppo_full" / "steps.json") for k in keys]
    expected = [row[k] for row in read_json(uninterrupted_ppo.path / "ppo_full" / "steps.json") for k in keys]
    assert steps == pytest.approx(expected, rel=1e-4, abs=1e-6)
    samples = (killed.path / "ppo_full" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in samples] == [1, 2, 4]  # sample_every 2: none lost, none twice
    assert not (killed.path / "ppo_full.partial").exists() and not (killed.path / "ppo_full" / "checkpoint").exists()


def test_a_lora_reward_model_stopped_by_ctrl_c_resumes_from_its_checkpoint(lora_run, tmp_path, monkeypatch):
    """KeyboardInterrupt (Ctrl-C, or a notebook's interrupt) in the LoRA reward model after its step-2
    checkpoint: the adapter and score head come back, and the curve is the uninterrupted one."""
    import torch
    from transformers import TrainerCallback

    from mpo_lib.method import reward
    from mpo_lib.method.data import load_preferences

    class CtrlC(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt

    cfg = load_config(SMOKE, {**LORA, "rm": {"max_steps": 4, "save_steps": 2}})
    splits = load_preferences(cfg)
    uninterrupted, interrupted = (Run(cfg, copy_run(lora_run, tmp_path, name).path) for name in ("a", "b"))
    for run in (uninterrupted, interrupted):
        shutil.rmtree(run.path / "rm")
    torch.manual_seed(0)  # the new score head's initial weights: the same in both runs
    reward.run_reward(uninterrupted, splits.train, splits.heldout)
    train = reward.train_and_summarise

    def train_until_ctrl_c(trainer, cfg, out_dir):
        trainer.add_callback(CtrlC)
        return train(trainer, cfg, out_dir)

    monkeypatch.setattr(reward, "train_and_summarise", train_until_ctrl_c)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        reward.run_reward(interrupted, splits.train, splits.heldout)
    monkeypatch.setattr(reward, "train_and_summarise", train)
    metrics = reward.run_reward(interrupted, splits.train, splits.heldout)
    assert metrics["resumed_at_step"] == 2 and metrics["optimizer_steps"] == 4
    assert losses(interrupted.path / "rm") == pytest.approx(losses(uninterrupted.path / "rm"), rel=1e-4)
    assert metrics["heldout"] == uninterrupted.metrics("rm")["heldout"]
    # save_steps is not part of the hash: lora_run's rm (default save_steps) counts as the same stage
    assert (interrupted.path / "rm" / "COMPLETE").read_text() == (lora_run.path / "rm" / "COMPLETE").read_text()


def toy_stage(run: Run, value: int, build=None) -> dict:
    def write(out_dir):
        (out_dir / "result.txt").write_text(str(value))
        return {"value": value}
    return run.reuse_or_build("toy", {"value": value}, [], build or write)


def test_a_partial_of_another_config_is_wiped_one_of_the_same_keeps_only_its_checkpoints(tmp_path):
    run = Run(load_config(SMOKE), tmp_path)
    seen = []

    def interrupted(out_dir):
        (out_dir / "checkpoint").mkdir(exist_ok=True)
        (out_dir / "checkpoint" / "state.pt").write_text("step 2")
        (out_dir / "stale.txt").write_text("written after the checkpoint")
        raise KeyboardInterrupt

    def resumed(out_dir):
        seen.append(sorted(p.name for p in out_dir.iterdir()))
        return {"value": 1}

    with pytest.raises(KeyboardInterrupt):
        toy_stage(run, 1, interrupted)
    toy_stage(run, 1, resumed)
    # the same config: its checkpoint and its records (hash, params), nothing else
    assert seen == [["checkpoint", "config.json", "params.yaml"]]
    assert not (run.path / "toy" / "checkpoint").exists()

    with pytest.raises(KeyboardInterrupt):
        toy_stage(run, 2, interrupted)
    toy_stage(run, 3, resumed)
    assert seen[-1] == ["config.json", "params.yaml"]  # another config: nothing of the earlier attempt


def test_a_stage_killed_between_its_marker_and_its_rename_is_not_rebuilt(tmp_path):
    run = Run(load_config(SMOKE), tmp_path)
    toy_stage(run, 1)
    (run.path / "toy").rename(run.path / "toy.partial")  # the state such a kill leaves
    assert toy_stage(run, 1, build=lambda out_dir: pytest.fail("rebuilt"))["value"] == 1
    assert run.is_complete("toy") and not (run.path / "toy.partial").exists()


# ---------------------------------------------------------------------------- bad input


def write_hh(folder, subset, rows: list[dict]) -> None:
    (folder / "hh-rlhf" / subset).mkdir(parents=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    (folder / "hh-rlhf" / subset / "test.jsonl.gz").write_bytes(gzip.compress(text.encode()))


def hh_config(data_dir, subset="helpful-base"):
    return load_config(SMOKE, {"data": {"data_dir": str(data_dir), "subsets": [subset], "holdout": 1}})


GOOD = {"chosen": "\n\nHuman: a\n\nAssistant: yes", "rejected": "\n\nHuman: a\n\nAssistant: no"}
NO_ASSISTANT = {"chosen": "\n\nHuman: is anyone there?", "rejected": "\n\nHuman: a\n\nAssistant: no"}
EMPTY_RESPONSE = {"chosen": "\n\nHuman: a\n\nAssistant:  ", "rejected": "\n\nHuman: a\n\nAssistant: no"}


def test_rows_without_an_assistant_turn_or_with_an_empty_response_are_counted_with_file_and_lines(tmp_path):
    """A few such rows in 160K are data, not a broken file: dropped, counted and located."""
    from mpo_lib.method.data import load_preferences

    write_hh(tmp_path, "helpful-base", [GOOD, NO_ASSISTANT, GOOD, EMPTY_RESPONSE, GOOD, EMPTY_RESPONSE])
    report = load_preferences(hh_config(tmp_path)).report["helpful-base/test"]
    assert report["file"].endswith("hh-rlhf/helpful-base/test.jsonl.gz")
    assert report["dropped"] == {"no_assistant_turn": 1, "empty_response": 2}
    assert report["first_dropped_lines"] == {"no_assistant_turn": [2], "empty_response": [4, 6]}


def test_a_file_with_no_usable_row_is_an_error_naming_it_and_the_lines(tmp_path):
    from mpo_lib.method.data import DataError, load_preferences

    write_hh(tmp_path, "helpful-base", [NO_ASSISTANT, EMPTY_RESPONSE])
    with pytest.raises(DataError, match=r"helpful-base/test.jsonl.gz: no usable rows \(2 read; 1 dropped as "
                                        r"no_assistant_turn, lines \[1\]; 1 dropped as empty_response, lines \[2\]\)"):
        load_preferences(hh_config(tmp_path))


def test_an_empty_data_folder_or_a_missing_subset_file_is_named(tmp_path):
    from mpo_lib.method.data import DataError, load_preferences

    with pytest.raises(ConfigError, match=f"data.data_dir: {re.escape(str(tmp_path.resolve()))} is empty; "
                                          "expected the upstream layout"):
        load_preferences(hh_config(tmp_path))
    write_hh(tmp_path, "helpful-base", [GOOD, GOOD])
    with pytest.raises(DataError, match=r"harmless-base/test.jsonl.gz: missing \(data.subsets has 'harmless-base'"):
        load_preferences(hh_config(tmp_path, "harmless-base"))


def test_an_unknown_model_name_offline_names_the_choices(tmp_path):
    from mpo_lib.runtime.models import prepare_base

    run = Run(load_config(SMOKE, {"model": {"name": "smollm2-135m"}}), tmp_path)
    with pytest.raises(ConfigError, match=r"model.name 'smollm2-135m' is not 'tiny', 'smollm2-135m-instruct', a local "
                                          r"folder or a hub model in the local cache \(HF_HUB_OFFLINE is set: nothing "
                                          r"is downloaded\); did you mean 'smollm2-135m-instruct'\?"):
        prepare_base(run, [])


def test_a_gamma_that_empties_a_set_says_so_and_suggests_one_that_works(lora_run, tmp_path):
    """The paper's gamma 2 on a small RM, whose reward gaps are all far below it."""
    from mpo_lib.method.resample import run_split

    run = copy_run(lora_run, tmp_path, "run")
    prompts = run.cfg.resample.num_prompts
    with pytest.raises(ConfigError, match=rf"split.gamma=2 leaves D\^e empty: \|D\^e\|=0, \|D\^h\|={prompts} of "
                                          rf"{prompts} resampled prompts\. Their reward gaps \|r1 - r2\|: min ") as err:
        run_split(Run(load_config(SMOKE, {**LORA, "split": {"gamma": 2.0}}), run.path))
    suggested = float(re.search(r"split.gamma: ([0-9.e+-]+) \(the median\)", str(err.value)).group(1))
    split = run_split(Run(load_config(SMOKE, {**LORA, "split": {"gamma": suggested}}), run.path))
    assert split["easy"] > 0 and split["hard"] > 0


def test_a_tokenizer_without_a_pad_token_pads_with_eos_and_says_so(tiny_run, tmp_path):
    from transformers import AutoTokenizer

    from mpo_lib.runtime.models import load_tokenizer

    run = copy_run(tiny_run, tmp_path, "run")
    folder = run.path / "base" / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    with pytest.warns(UserWarning, match="the tokenizer of 'tiny' has no pad or unk token: padding with its EOS "
                                         "token '<eos>'"):
        tokenizer = load_tokenizer(run)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer(["a", "a longer text"], padding=True)["input_ids"][0][-1] == tokenizer.eos_token_id


def test_a_full_disk_names_the_path_and_loses_nothing_written_before(lora_run, tmp_path, monkeypatch):
    """Re-splitting with another gamma runs out of disk: the finished split (gamma 0.01) and every
    other stage stay as they were."""
    from mpo_lib.method import resample

    run = copy_run(lora_run, tmp_path, "run")
    before = {path: path.read_bytes() for path in run.path.rglob("*") if path.is_file()}

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(resample, "write_json", full)
    with pytest.raises(DiskFull, match=rf"\[split\] the disk is full: writing {re.escape(str(run.path))}/split.partial/"
                                       rf"easy\.json failed \(\d+ MiB free\)\. The finished stages in "
                                       rf"{re.escape(str(run.path))} are intact"):
        resample.run_split(Run(load_config(SMOKE, {**LORA, "split": {"gamma": 0.02}}), run.path))
    assert {path: path.read_bytes() for path in before} == before  # nothing written before was touched
    assert run.metrics("split")["gamma"] == lora_run.cfg.split.gamma and not list(run.path.glob("split.superseded-*"))


# ---------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("path", sorted((ROOT / "params").rglob("*.*")), ids=lambda p: p.name)
def test_no_params_file_holds_a_credential(path):
    text = path.read_text()
    assert not re.search(r"(?i)(api[_-]?key|secret|password|token)[\"']?\s*[:=]\s*\S", text), "a credential field"
    assert not re.search(r"\b(sk-|hf_|ghp_)[A-Za-z0-9_-]{16,}", text), "a key"


@pytest.mark.parametrize("override", [{"judge": {"api_key": "anything"}},
                                      {"model": {"name": "sk-proj-0123456789abcdefghijklmn"}}])
def test_params_with_a_credential_are_refused_without_echoing_it(override):
    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, override)
    assert "looks like an API key or token" in str(err.value) and "from the environment" in str(err.value)
    assert "anything" not in str(err.value) and "0123456789" not in str(err.value)


# ---------------------------------------------------------------------------- notebooks in git


def test_git_strips_notebook_outputs_with_the_repositorys_filter(tmp_path):
    """What `make` sets up on a fresh clone: .gitattributes names the nbstripout filter and the
    set-up installs it, so an executed notebook is committed without outputs."""
    import nbformat

    git = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True)
    git("init", "-q")
    shutil.copy(ROOT / ".gitattributes", tmp_path)
    subprocess.run([sys.executable, "-m", "nbstripout", "--install", "--attributes", ".gitattributes"],
                   cwd=tmp_path, check=True)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "print(1)", execution_count=3, outputs=[nbformat.v4.new_output("stream", text="1\n")])])
    nbformat.write(notebook, tmp_path / "executed.ipynb")
    git("add", "executed.ipynb", ".gitattributes")
    committed = nbformat.reads(git("show", ":executed.ipynb").stdout, as_version=4)
    assert committed.cells[0].outputs == [] and committed.cells[0].execution_count is None
    assert committed.cells[0].source == "print(1)"


# ---------------------------------------------------------------------------- lineage

DPO_BETA_RERUNS = {"dpo", "dpo_full", "dpo_hard", "dpo_base", "mpo_reverse", "mpo_reverse_sft",  # DPO stages
                   "dpo_gamma0p015",  # MPO's DPO at smoke's further gamma
                   "mpo", "mpo_sft_kl", "mpo_gamma0p015"}  # PPO from a DPO model


def test_the_plan_names_exactly_the_stages_a_params_change_reruns_and_why(smoke_run):
    from mpo_lib.runtime.lineage import plan

    planned = plan(smoke_run)
    assert {row["action"] for row in planned} == {"reuse"}  # the hashes the stages recorded
    finished = {p.parent.name for p in smoke_run.path.glob("*/COMPLETE") if "." not in p.parent.name}
    assert {row["stage"] for row in planned} == finished
    changed = Run(load_config(SMOKE, {"dpo": {"beta": 0.2}}), smoke_run.path)
    rows = {row["stage"]: row for row in plan(changed)}
    rerun = DPO_BETA_RERUNS
    assert {s for s, row in rows.items() if row["action"] != "reuse"} == rerun | {f"eval_{s}" for s in rerun}
    assert rows["dpo"]["why"] == "settings changed: dpo.beta"
    assert rows["mpo"]["why"] == "dpo re-runs"
    assert rows["eval_mpo"]["why"] == "mpo re-runs"
    assert rows["ppo_full"]["action"] == rows["split"]["action"] == "reuse"


def test_set_on_the_command_line_plans_what_the_same_override_would(smoke_run, tmp_path):
    """`--set dpo.beta=0.2 --plan` from another folder: the re-runs of the mapping override above; a
    mistyped key fails in one line naming the nearest valid key."""
    command = [sys.executable, "-m", "mpo_lib", "pipeline", "--params", str(SMOKE), "--run-dir", str(smoke_run.path),
               "--plan", "--set"]
    result = subprocess.run([*command, "dpo.beta=0.2"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    actions = dict(line.split()[1:3] for line in result.stdout.splitlines() if line.startswith("plan: "))
    assert {stage for stage, action in actions.items() if action != "reuse"} == (
        DPO_BETA_RERUNS | {f"eval_{s}" for s in DPO_BETA_RERUNS})
    assert "plan: dpo" in result.stdout and "settings changed: dpo.beta" in result.stdout
    typo = subprocess.run([*command, "dpo.betta=0.2"], cwd=tmp_path, capture_output=True, text=True)
    assert typo.returncode == 2 and typo.stdout == ""
    assert typo.stderr.strip() == f"error: {SMOKE} (with overrides): unknown key 'dpo.betta'; did you mean 'dpo.beta'?"
