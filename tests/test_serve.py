"""`sharpe-rl serve`: the Prefect server with the deployments and a worker, and the MLflow UI, on localhost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sharpe_rl.services import MLFLOW_PORT, PREFECT_PORT, is_up

pytestmark = pytest.mark.slow
API = f"http://127.0.0.1:{PREFECT_PORT}/api"


def post(path: str, body: dict) -> list[dict]:
    request = urllib.request.Request(
        f"{API}{path}", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture
def served(tmp_path: Path):
    if is_up(f"{API}/health") or is_up(f"http://127.0.0.1:{MLFLOW_PORT}/health"):
        pytest.skip("a Prefect server or MLflow UI already runs on this machine's default ports")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "sharpe_rl.cli", "serve", "--runs-dir", str(tmp_path / "runs")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    deadline = time.monotonic() + 240
    while not any("Ctrl-C" in line for line in lines):
        assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
        lines.append(process.stdout.readline())
    yield process, "".join(lines), tmp_path / "runs"
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)


def test_serve_deploys_schedules_and_stops_cleanly(served):
    process, output, runs = served
    assert f"http://127.0.0.1:{PREFECT_PORT}" in output and f"http://127.0.0.1:{MLFLOW_PORT}" in output
    assert is_up(f"http://127.0.0.1:{MLFLOW_PORT}/health")

    deployments = {d["name"]: d for d in post("/deployments/filter", {})}
    assert set(deployments) == {"nightly", "reset", "rerun", "report", "build-policy"}
    nightly = deployments["nightly"]
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 22 * * *"]
    assert "RunConfig" in json.dumps(nightly["parameter_openapi_schema"])  # the UI renders the run's form

    deadline = time.monotonic() + 60
    while not post("/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}):
        assert time.monotonic() < deadline, "the scheduler created no nightly run"
        time.sleep(2)
    workers = post("/work_pools/sharpe-rl/workers/filter", {})
    assert workers and workers[0]["status"] == "ONLINE"
    assert (runs / "prefect").is_dir()  # Prefect's state stays under the runs folder

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not is_up(f"{API}/health") and not is_up(f"http://127.0.0.1:{MLFLOW_PORT}/health")
