"""A night outlives a restart of its Prefect server.

A `sharpe-rl run` attached to a running Prefect server (as to `make serve`'s) used to die with
"ConnectError: [Errno 111] Connection refused" when that server stopped mid-run. Here a real server
(`prefect server start`, a port and a database of its own) is stopped while a real `sharpe-rl run`
runs its first cycle, stays down for longer than Prefect's default client would wait, and is
started again on the same database: the run finishes, and the server has its flow run Completed
with the cycle lines of both cycles in its logs (the second logged after the restart).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from service_fixtures import PrefectServer, stop_group, wait_until

from sharpe_rl.policy.checkpoint import Checkpoints

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RUN = "restarted"
#: Longer than Prefect's default client waits for a server (5 retries: about a minute in all).
DOWN_SECONDS = 75


@pytest.fixture
def server(tmp_path: Path):
    home = tmp_path / "prefect-home"
    home.mkdir()
    server = PrefectServer(home)
    server.start()
    yield server
    server.stop()


def test_a_run_outlives_its_prefect_server_going_away_and_reports_again_when_it_returns(
    server: PrefectServer, tmp_path: Path, pipeline_dataset: Path, pipeline_policy: Path, sandbox_image: str
):
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_API_URL": server.api,
        "PREFECT_HOME": str(tmp_path / "cli-home"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),  # this checkout's code, not an installed one
    }
    command = [sys.executable, "-m", "cli", "run", "--name", RUN, "--cycles", "2", "--batch-size", "4"]
    command += ["--data", str(pipeline_dataset), "--policy", str(pipeline_policy), "--runs-dir", str(runs)]
    command += ["--workers", "2", "--seed", "0"]
    log = (tmp_path / "run.log").open("w+")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = runs / "checkpoints" / RUN / "run-config.json"  # written when the run has started
        wait_until(lambda: process.poll() is not None or started.is_file(), 600, "the run to start")
        assert process.poll() is None, _read(log)[-3000:]
        server.stop()  # in its first cycle: the run's next calls to the API find nobody
        down_since = time.monotonic()
        while time.monotonic() - down_since < DOWN_SECONDS:
            assert process.poll() is None, f"the run died with its server:\n{_read(log)[-3000:]}"
            time.sleep(1)
        cycles_while_down = Checkpoints(runs, RUN).latest_cycle()
        server.start()  # the same database, the same port
        assert process.wait(timeout=900) == 0, _read(log)[-3000:]
    finally:
        stop_group(process)

    assert f"run {RUN} finished" in _read(log)
    assert cycles_while_down is None or cycles_while_down < 1  # cycle 1, at least, ran after the restart
    runs_found = server.post("/flow_runs/filter", {"flow_runs": {"name": {"any_": [RUN]}}})
    assert [r["state_type"] for r in runs_found] == ["COMPLETED"]
    messages = server.log_lines(runs_found[0]["id"])
    assert any(m.startswith("cycle 0: reward mean") for m in messages), messages[-20:]
    assert any(m.startswith("cycle 1: reward mean") for m in messages), messages[-20:]
    assert any(m.startswith(f"run {RUN} finished") for m in messages)


def _read(log) -> str:
    log.flush()
    return Path(log.name).read_text(errors="replace")
