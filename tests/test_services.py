"""The orchestration environment a command sets up before Prefect starts."""

from __future__ import annotations

import os

import yaml

from sharpe_rl.services import (
    DEPLOYMENTS_FILE,
    EPHEMERAL_SERVER_STARTUP_SECONDS,
    deployment_names,
    orchestration_environment,
    use_orchestration_environment,
)


def test_a_runs_directory_that_does_not_exist_yet_gets_its_prefect_home(tmp_path, monkeypatch):
    # Prefect creates only the last level of its home: `sharpe-rl run --runs-dir new/runs` once failed
    # with "Failed to create the Prefect home directory" and then a database error.
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")})
    runs = tmp_path / "new" / "runs"
    use_orchestration_environment(runs)
    assert os.environ["PREFECT_HOME"] == str((runs / "prefect").resolve())
    assert (runs / "prefect").is_dir()


def test_a_bench_gets_a_prefect_server_of_its_own_even_when_one_is_named(tmp_path, monkeypatch):
    # A bench's nights must not land in the UI's history, nor wait on a server being restarted.
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")})
    monkeypatch.setitem(os.environ, "PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert use_orchestration_environment(tmp_path, own_server=True) is None
    assert "PREFECT_API_URL" not in os.environ and (tmp_path / "prefect").is_dir()
    monkeypatch.setitem(os.environ, "PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert use_orchestration_environment(tmp_path) == "http://127.0.0.1:4200/api"  # a command uses the one named


def test_a_busy_machine_gets_time_to_start_prefects_temporary_server_and_a_users_setting_wins(tmp_path, monkeypatch):
    # Prefect's own 20 s were too few on a busy 2-core machine: `sharpe-rl run` failed with "Timed out
    # while attempting to connect to ephemeral Prefect API server".
    key = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")})
    assert orchestration_environment(tmp_path)[key] == str(EPHEMERAL_SERVER_STARTUP_SECONDS)
    assert EPHEMERAL_SERVER_STARTUP_SECONDS >= 120
    monkeypatch.setitem(os.environ, key, "30")
    assert orchestration_environment(tmp_path)[key] == "30"


def test_a_run_waits_out_a_prefect_server_restart_and_a_users_setting_wins(tmp_path, monkeypatch):
    # A run attached to `serve`'s server died with "Connection refused" when that server stopped mid-run:
    # Prefect's client gave up after 5 attempts (about a minute). tests/test_orchestration_restart.py runs it.
    key = "PREFECT_CLIENT_MAX_RETRIES"
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")})
    waits = [2**attempt for attempt in range(1, int(orchestration_environment(tmp_path)[key]) + 1)]
    assert sum(waits) >= 5 * 60  # the client retries for over five minutes (2, 4, 8, ... s apart)
    monkeypatch.setitem(os.environ, key, "3")
    assert orchestration_environment(tmp_path)[key] == "3"


def test_serve_announces_every_deployment_it_deploys():
    # The banner once left out build-policy: the names now come from deployments/prefect.yaml itself.
    listed = yaml.safe_load(DEPLOYMENTS_FILE.read_text())["deployments"]
    assert [name.split("/")[1] for name in deployment_names()] == [d["name"] for d in listed]
    assert "build_policy/build-policy" in deployment_names() and "rl_run/nightly" in deployment_names()
