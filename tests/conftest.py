import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MPO_DATA_DIR", str((ROOT / ".." / "shared" / "data").resolve()))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = Path(os.environ["MPO_DATA_DIR"])
SMOKE = ROOT / "params" / "smoke.yaml"
# the lora_run fixture's params: smoke with LoRA adapters and shorter SFT/RM
LORA = {"model": {"lora": {"r": 8, "alpha": 16}}, "sft": {"max_steps": 4}, "rm": {"max_steps": 4},
        "resample": {"num_prompts": 16}}


# a test that needs one of these waits for a pipeline (or its first stages) to run: `make test-fast` skips it
SLOW_FIXTURES = {"smoke_run", "lora_run", "qlora_run"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke pipeline (every notebook, 00-07) executed once with papermill, as `make smoke` does."""
    from mpo_lib import Run, load_config
    from mpo_lib.runtime.pipeline import run_pipeline

    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    run_pipeline(str(SMOKE), str(run_dir))
    return Run(load_config(SMOKE), run_dir)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A smoke run with only the base stage: a tiny model and tokenizer for unit tests."""
    from mpo_lib import Run, load_config
    from mpo_lib.method.data import corpus, load_preferences
    from mpo_lib.runtime.models import prepare_base

    cfg = load_config(SMOKE)
    run = Run(cfg, tmp_path_factory.mktemp("runs") / "tiny")
    prepare_base(run, corpus(cfg, load_preferences(cfg)))
    return run


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory):
    """The smoke stages up to DPO, in-process, with LoRA adapters (the cpu_small layout)."""
    from mpo_lib import Run, load_config
    from mpo_lib.method.data import corpus, load_preferences, sft_rows
    from mpo_lib.method.dpo import run_dpo
    from mpo_lib.method.resample import run_resample, run_split
    from mpo_lib.method.reward import run_reward
    from mpo_lib.method.sft import run_sft
    from mpo_lib.runtime.models import prepare_base

    cfg = load_config(SMOKE, LORA)
    run = Run(cfg, tmp_path_factory.mktemp("runs") / "lora")
    splits = load_preferences(cfg)
    prepare_base(run, corpus(cfg, splits))
    run_sft(run, sft_rows(cfg, splits))
    run_reward(run, splits.train, splits.heldout)
    run_resample(run, splits.train)
    run_split(run)
    run_dpo(run, splits.train)
    return run


# ---------------------------------------------------------------- an OpenAI-compatible judge endpoint

SECRET = "sk-test-DO-NOT-LEAK-4f2a9c"


def responses_of(prompt: str) -> tuple[str, str]:
    first, second = prompt.rsplit("\n\nResponse 1: ", 1)[1].split("\n\nResponse 2: ")
    return first, second


def answer_by_quality(prompt: str) -> str:
    """A consistent judge: 9 for a response that says "good", 3 otherwise, whatever the position."""
    first, second = (9 if "good" in r else 3 for r in responses_of(prompt))
    return f"Response 1 Quality Score: {first}\n\nExplanation: xxx\n\nResponse 2 Quality Score: {second} Explanation: xxx"


class ChatCompletions(BaseHTTPRequestHandler):
    requests: ClassVar[list] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                    "body": body})
        reply = json.dumps({
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer_by_quality(body["messages"][0]["content"])}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint(monkeypatch):
    ChatCompletions.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatCompletions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MPO_JUDGE_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("MPO_JUDGE_MODEL", "judge-test-model")
    monkeypatch.setenv("MPO_JUDGE_API_KEY", SECRET)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    yield ChatCompletions.requests
    server.shutdown()
    server.server_close()
