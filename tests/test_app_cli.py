"""`spd-app` as a command: its one-line errors (a missing run, a port in use) and a real server
over a toy run without analysis, spoken to over HTTP."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.paths import REPO_ROOT
from tests.tiny_runs import run_tiny_tms

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
COMMAND = [sys.executable, "-m", "spd.app.cli"]


@pytest.fixture(scope="module")
def tms_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPD_OUT_DIR", str(tmp_path_factory.mktemp("app_cli")))
        patch.delenv("WANDB_MODE", raising=False)
        return run_tiny_tms(run_name="tms").path


def _fails(args: list[str]) -> str:
    result = subprocess.run(COMMAND + args, capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    return result.stderr


def test_a_missing_run_is_one_line(tmp_path: Path) -> None:
    assert "no such run directory" in _fails([str(tmp_path / "nothere")])
    assert "is not a run directory" in _fails([str(tmp_path)])


def test_a_port_in_use_is_one_line(tms_run: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = _fails([str(tms_run), "--port", str(port)])
    assert f"cannot listen on 127.0.0.1:{port}" in message and "--port" in message


@pytest.fixture
def server(tms_run: Path) -> Iterator[str]:
    process = subprocess.Popen(
        [*COMMAND, str(tms_run), "--port", "0"], stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert process.stdout is not None
    lines = [process.stdout.readline() for _ in range(2)]
    url = re.search(r"http://127\.0\.0\.1:\d+/", lines[1])
    assert url is not None, lines
    yield url[0]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_toy_run_without_analysis_is_served(server: str) -> None:
    with urllib.request.urlopen(server + "api/runs", timeout=30) as response:
        (run,) = json.loads(response.read())
    assert run["kind"] == "toy" and not run["analysis"] and "spd-analyze" in run["message"]
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(server + "api/runs/0/clusters", timeout=30)
    assert error.value.code == 400 and "spd-analyze" in json.loads(error.value.read())["error"]

    assert _post(server + "api/runs/0/graph", {"prompt": "  "}) == (
        400,
        {"error": "the prompt is empty: type some text (toys: features like 'f3 f7=0.5')"},
    )
    status, body = _post(server + "api/runs/0/graph", {"prompt": "f9"})
    assert status == 400 and "f0 … f4" in body["error"]
    status, graph = _post(server + "api/runs/0/graph", {"prompt": "f1 f3=0.5", "threshold": 0.1})
    assert status == 200 and graph["layers"] == ["linear1", "linear2"]
    assert sum(n["layer"] == 2 for n in graph["nodes"]) == 3  # the three largest outputs
    status, result = _post(
        server + "api/runs/0/intervene", {"prompt": "f1 f3=0.5", "nodes": [], "mode": "ablate"}
    )
    assert status == 400 and "select at least one node" in result["error"]
