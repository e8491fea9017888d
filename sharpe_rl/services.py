"""The local services behind `sharpe-rl serve`, and the orchestration environment every command shares.

`serve` starts, on localhost: the Prefect server (UI and API), a process work pool with the
project's deployments (nightly run, reset, rerun, report, build-policy) and a worker that
executes them, and the MLflow UI on the embedded tracking store. It only starts programs
(`prefect`, `mlflow`) as subprocesses — the library itself never imports Prefect.

Prefect keeps its state under `runs/prefect` (unless PREFECT_HOME is set), so runs started from
the command line and runs started from the UI land in the same database, and a CLI run reports
to the server when one is up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sharpe_rl.tracking import default_tracking_uri

PREFECT_PORT = 4200
MLFLOW_PORT = 5000
WORK_POOL = "sharpe-rl"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS_FILE = PROJECT_ROOT / "deployments" / "prefect.yaml"


def prefect_api_url(port: int = PREFECT_PORT) -> str:
    return f"http://127.0.0.1:{port}/api"


def is_up(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def local_timezone() -> str:
    """The machine's IANA time zone name (the nightly schedule runs at 22:00 local time)."""
    if os.environ.get("TZ"):
        return os.environ["TZ"].lstrip(":")
    localtime = Path("/etc/localtime")
    if localtime.is_symlink() and "zoneinfo/" in str(localtime.readlink()):
        return str(localtime.readlink()).split("zoneinfo/", 1)[1]
    timezone_file = Path("/etc/timezone")
    if timezone_file.is_file() and timezone_file.read_text().strip():
        return timezone_file.read_text().strip()
    return "UTC"


#: Seconds a command waits for Prefect's temporary local server to answer (Prefect's default, 20 s,
#: is too short on a busy 2-core machine: a run failed with "Timed out while attempting to connect to
#: ephemeral Prefect API server" while the test suite and an ablation shared the machine).
EPHEMERAL_SERVER_STARTUP_SECONDS = 180


def orchestration_environment(runs_dir: Path, *, use_running_server: bool = True) -> dict[str, str]:
    """Environment for Prefect and MLflow: state under runs_dir, no telemetry, the local server when it is up."""
    env = {
        "PREFECT_HOME": os.environ.get("PREFECT_HOME", str((runs_dir / "prefect").resolve())),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": os.environ.get(
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_SERVER_STARTUP_SECONDS)
        ),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "SHARPE_RL_HOME": str(PROJECT_ROOT),
        "SHARPE_RL_TIMEZONE": os.environ.get("SHARPE_RL_TIMEZONE", local_timezone()),
    }
    api = prefect_api_url()
    if "PREFECT_API_URL" in os.environ:
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    elif use_running_server and is_up(f"{api}/health"):
        env["PREFECT_API_URL"] = api
    return env


def use_orchestration_environment(runs_dir: Path) -> str | None:
    """Apply `orchestration_environment` to this process (before Prefect is imported); returns the API URL used."""
    environment = orchestration_environment(runs_dir)
    Path(environment["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect makes only its last level
    os.environ.update(environment)
    return os.environ.get("PREFECT_API_URL")


def serve(runs_dir: Path, say: Callable[[str], None] = print) -> None:
    """Start the Prefect server, deployments + worker and the MLflow UI; stop them all on Ctrl-C."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    logs = runs_dir / "logs"
    logs.mkdir(exist_ok=True)
    env = os.environ | orchestration_environment(runs_dir, use_running_server=False)
    env["PREFECT_API_URL"] = prefect_api_url()
    bin_dir = Path(sys.executable).parent
    services: dict[str, subprocess.Popen] = {}

    def start(name: str, command: list[str], extra_env: dict[str, str] | None = None) -> None:
        log = (logs / f"{name}.log").open("ab")
        services[name] = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env | (extra_env or {}),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def run(command: list[str]) -> None:
        done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:3])} failed:\n{done.stdout}\n{done.stderr}")

    prefect, mlflow = str(bin_dir / "prefect"), str(bin_dir / "mlflow")
    # Stop cleanly on `kill` as on Ctrl-C (and on Ctrl-C even when started in the background).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if is_up(f"{prefect_api_url()}/health"):
            raise RuntimeError(f"a Prefect server already answers on port {PREFECT_PORT}; stop it first")
        start(
            "prefect-server",
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(PREFECT_PORT)],
        )
        _wait_until(f"{prefect_api_url()}/health", services, "the Prefect server")
        run([prefect, "--no-prompt", "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"])
        run([prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(DEPLOYMENTS_FILE)])
        start("prefect-worker", [prefect, "worker", "start", "--pool", WORK_POOL])
        tracking = default_tracking_uri(runs_dir)
        start(
            "mlflow-ui",
            [
                mlflow,
                "server",
                "--backend-store-uri",
                tracking,
                "--workers",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                str(MLFLOW_PORT),
            ],
            # a UI to browse runs needs no background job runners (eight processes, ~2 GB of memory)
            extra_env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        _wait_until(f"http://127.0.0.1:{MLFLOW_PORT}/health", services, "the MLflow UI")
        say(f"Prefect UI: http://127.0.0.1:{PREFECT_PORT}  (deployments: nightly run, reset, rerun, report)")
        say(f"MLflow UI:  http://127.0.0.1:{MLFLOW_PORT}  (Model training > experiment 'sharpe-rl')")
        say(f"logs in {logs}/; Ctrl-C stops everything")
        while all(process.poll() is None for process in services.values()):
            time.sleep(1)
        name, failed = next((n, p) for n, p in services.items() if p.poll() is not None)
        raise RuntimeError(f"{name} stopped (exit {failed.returncode}); see {logs}/{name}.log")
    except KeyboardInterrupt:
        say("stopping")
    finally:
        for process in reversed(services.values()):
            _stop(process)


def _wait_until(url: str, services: dict[str, subprocess.Popen], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not is_up(url):
        if any(process.poll() is not None for process in services.values()):
            raise RuntimeError(f"{what} did not start; see runs/logs/")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer on {url} within {timeout:.0f} s; see runs/logs/")
        time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
