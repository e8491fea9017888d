"""`sharpe-rl serve`: the Prefect server with the deployments and a worker, and the MLflow UI, on localhost."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request

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


def test_serve_deploys_schedules_and_stops_cleanly(served):
    process, output, runs = served
    assert f"http://127.0.0.1:{PREFECT_PORT}" in output and f"http://127.0.0.1:{MLFLOW_PORT}" in output
    assert is_up(f"http://127.0.0.1:{MLFLOW_PORT}/health")
    # It says what it waits for while it starts (it once printed nothing for 112 s), then the addresses.
    lines = output.splitlines()
    assert lines[0].startswith("starting the Prefect server (http://127.0.0.1:4200) and the MLflow UI")
    assert any(
        line.startswith("deployed; a worker runs them. Waiting for the MLflow UI (its first start") for line in lines
    )
    assert lines.index(next(line for line in lines if line.startswith("Prefect UI:"))) > 2
    # MLflow's address opens the experiment's runs, not the GenAI view a bare address opens on a first visit
    mlflow_line = next(line for line in lines if line.startswith("MLflow UI:"))
    assert re.match(
        r"MLflow UI:  http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?workflowType=machine_learning ", mlflow_line
    )

    deployments = {d["name"]: d for d in post("/deployments/filter", {})}
    assert set(deployments) == {"nightly", "reset", "rerun", "report", "build-policy"}
    banner = next(line for line in lines if line.startswith("Prefect UI:"))
    assert all(f"/{name}" in banner for name in deployments)  # every deployment, build-policy included
    nightly = deployments["nightly"]
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 22 * * *"]
    form = nightly["parameter_openapi_schema"]  # what the UI renders as the run's form
    assert list(form["properties"]) == ["cycles", "batch_size", "dataset", "prompt_version", "seed", "advanced"]
    # every flow works on the runs folder served (its MLflow UI's), not on `runs` under the checkout
    served_runs = str(runs.resolve())
    assert nightly["parameters"]["advanced"]["runs_dir"] == served_runs
    assert all(deployments[name]["parameters"]["runs_dir"] == served_runs for name in ("reset", "rerun", "report"))

    deadline = time.monotonic() + 60
    while not post("/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}):
        assert time.monotonic() < deadline, "the scheduler created no nightly run"
        time.sleep(2)
    deadline = time.monotonic() + 90  # the worker registers once it has started (tens of seconds on a busy machine)
    while not (workers := post("/work_pools/sharpe-rl/workers/filter", {})):
        assert time.monotonic() < deadline, "no worker registered with the work pool"
        time.sleep(2)
    assert workers[0]["status"] == "ONLINE"
    assert (runs / "prefect").is_dir()  # Prefect's state stays under the runs folder

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not is_up(f"{API}/health") and not is_up(f"http://127.0.0.1:{MLFLOW_PORT}/health")
