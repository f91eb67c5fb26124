"""The notebooks as a JupyterLab user runs them: `make lab`'s server, a session per notebook (its kernel
starts in notebooks/, not in the project root), every cell executed over the kernel's websocket."""
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
JUPYTER = Path(sys.executable).parent / "jupyter"
TOKEN = uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def lab():
    """`jupyter lab notebooks/` as `make lab` starts it, on a free loopback port."""
    port = free_port()
    server = subprocess.Popen([str(JUPYTER), "lab", "notebooks/", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                               f"--IdentityProvider.token={TOKEN}", "--ServerApp.port_retries=0"]
                              + (["--allow-root"] if os.geteuid() == 0 else []),
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2):
                break
        except OSError:
            assert server.poll() is None, server.stderr.read()
            time.sleep(0.5)
    yield base
    server.terminate()
    server.wait(timeout=30)


def rest(base: str, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"{base}{path}", method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        text = reply.read()
    return json.loads(text) if text else {}


async def execute_cells(base: str, kernel_id: str, cells: list[str]) -> list[dict]:
    """Run each cell's source in order over the kernel's websocket; the outputs of all cells, or the first error."""
    from tornado.websocket import websocket_connect

    url = base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels?token={TOKEN}"
    connection = await websocket_connect(url)
    outputs = []
    try:
        for source in cells:
            msg_id = uuid.uuid4().hex
            await connection.write_message(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": msg_id,
                           "version": "5.3", "date": ""},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": source, "silent": False, "store_history": True, "user_expressions": {},
                            "allow_stdin": False, "stop_on_error": True}}))
            while True:
                message = json.loads(await asyncio.wait_for(connection.read_message(), timeout=600))
                if message.get("parent_header", {}).get("msg_id") != msg_id or message["channel"] != "iopub":
                    continue
                kind, content = message["msg_type"], message["content"]
                if kind == "error":
                    return [{"error": f"{content['ename']}: {content['evalue']}", "cell": source}]
                if kind in ("display_data", "execute_result", "stream"):
                    outputs.append({"kind": kind, **content})
                if kind == "status" and content["execution_state"] == "idle":
                    break
    finally:
        connection.close()
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_runs_in_jupyterlab_and_shows_its_figure(lab, smoke_run, notebook):
    """Opened on the finished smoke run (params and run dir as a user types them), each notebook
    completes in a kernel started in notebooks/ and displays its figure or table."""
    session = rest(lab, "POST", "/api/sessions", {"path": notebook.name, "name": notebook.name, "type": "notebook",
                                                  "kernel": {"name": "python3"}})
    try:
        cells = [cell.source for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "code"]
        cells[0] = f'params_file = "params/smoke.yaml"\nrun_dir = {str(smoke_run.path)!r}\noverrides = {{}}'
        cells.insert(0, "import os; print(os.getcwd())")
        outputs = asyncio.run(execute_cells(lab, session["kernel"]["id"], cells))
    finally:
        rest(lab, "DELETE", f"/api/sessions/{session['id']}")
    assert "error" not in outputs[0], outputs[0]
    assert outputs[0]["text"].strip() == str(ROOT / "notebooks")  # where JupyterLab starts the kernel
    assert any(f"run 'smoke' in {smoke_run.path}" in out.get("text", "") for out in outputs)
    shown = [mime for out in outputs for mime in out.get("data", {}) if mime in ("image/png", "text/html")]
    assert shown, f"{notebook.name} displayed no figure or table: {outputs}"
