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

import yaml

from sharpe_rl.tracking import EXPERIMENT_NAME, LOCAL_UI_PORT, Tracker, default_tracking_uri

PREFECT_PORT = 4200
MLFLOW_PORT = LOCAL_UI_PORT
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


#: How many times Prefect's client sends a request again when the API does not answer (Prefect's default: 5, about
#: a minute). A run attached to `serve`'s server died with "Connection refused" when that server stopped mid-run;
#: with 8 the client waits 2, 4, ... 256 s between attempts: a run outlives a server gone for up to 8 minutes, and
#: goes on reporting once it is back (at most one last wait later).
CLIENT_MAX_RETRIES = 8


def orchestration_environment(runs_dir: Path, *, use_running_server: bool = True) -> dict[str, str]:
    """Environment for Prefect and MLflow: state under runs_dir, no telemetry, the local server when it is up, a
    client that waits out a server restart. A setting already in the environment wins."""
    env = {
        "PREFECT_HOME": os.environ.get("PREFECT_HOME", str((runs_dir / "prefect").resolve())),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": os.environ.get(
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_SERVER_STARTUP_SECONDS)
        ),
        "PREFECT_CLIENT_MAX_RETRIES": os.environ.get("PREFECT_CLIENT_MAX_RETRIES", str(CLIENT_MAX_RETRIES)),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "SHARPE_RL_HOME": str(PROJECT_ROOT),
        "SHARPE_RL_RUNS_DIR": str(runs_dir.resolve()),
        "SHARPE_RL_TIMEZONE": os.environ.get("SHARPE_RL_TIMEZONE", local_timezone()),
    }
    api = prefect_api_url()
    if "PREFECT_API_URL" in os.environ:
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    elif use_running_server and is_up(f"{api}/health"):
        env["PREFECT_API_URL"] = api
    return env


def use_orchestration_environment(runs_dir: Path, *, own_server: bool = False) -> str | None:
    """Apply `orchestration_environment` to this process (before Prefect is imported); returns the API URL used.

    `own_server`: a temporary Prefect server of this process's own, never one already running, even one named
    by PREFECT_API_URL (a bench's runs stay out of the UI's history)."""
    if own_server:
        os.environ.pop("PREFECT_API_URL", None)
    environment = orchestration_environment(runs_dir, use_running_server=not own_server)
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
    prefect_ui, mlflow_ui = f"http://127.0.0.1:{PREFECT_PORT}", f"http://127.0.0.1:{MLFLOW_PORT}"
    # Stop cleanly on `kill` as on Ctrl-C (and on Ctrl-C even when started in the background).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if is_up(f"{prefect_api_url()}/health"):
            raise RuntimeError(f"a Prefect server already answers on port {PREFECT_PORT}; stop it first")
        say(f"starting the Prefect server ({prefect_ui}) and the MLflow UI ({mlflow_ui}); their logs go to {logs}/")
        started = time.monotonic()
        start("prefect-server", [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(PREFECT_PORT)])
        # Side by side: the MLflow UI's first start (its database made or upgraded) is the slow one.
        start(
            "mlflow-ui",
            [
                mlflow,
                "server",
                "--backend-store-uri",
                default_tracking_uri(runs_dir),
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
        _wait_until(f"{prefect_api_url()}/health", services, "the Prefect server", say, started)
        names = deployment_names()
        say(f"the Prefect server is up ({time.monotonic() - started:.0f} s); deploying {', '.join(names)}")
        run([prefect, "--no-prompt", "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"])
        run([prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(DEPLOYMENTS_FILE)])
        start("prefect-worker", [prefect, "worker", "start", "--pool", WORK_POOL])
        say(f"deployed; a worker runs them. Waiting for the MLflow UI ({MLFLOW_FIRST_START})")
        _wait_until(f"{mlflow_ui}/health", services, "the MLflow UI", say, started, timeout=MLFLOW_STARTUP_SECONDS)
        say(f"ready in {time.monotonic() - started:.0f} s")
        say(f"Prefect UI: {prefect_ui}  (deployments: {', '.join(names)})")
        say(f"MLflow UI:  {Tracker(runs_dir).runs_url}  (experiment '{EXPERIMENT_NAME}', its runs)")
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


def deployment_names() -> list[str]:
    """The deployments `serve` deploys, as deployments/prefect.yaml lists them (flow/deployment)."""
    listed = yaml.safe_load(DEPLOYMENTS_FILE.read_text())["deployments"]
    return [f"{Path(d['entrypoint'].split(':')[0]).stem}/{d['name']}" for d in listed]


#: What the MLflow UI's start waits for, said while waiting (measured: 112 s on a busy 2-core machine).
MLFLOW_FIRST_START = "its first start makes or upgrades its database under the runs folder: up to two minutes"
MLFLOW_STARTUP_SECONDS = 300.0
#: How often a start that is still waiting says so.
WAITING_NOTE_SECONDS = 15.0


def _wait_until(
    url: str,
    services: dict[str, subprocess.Popen],
    what: str,
    say: Callable[[str], None],
    since: float,
    timeout: float = 120.0,
) -> None:
    """Wait until `url` answers, saying every WAITING_NOTE_SECONDS that `what` is still awaited."""
    deadline, note = time.monotonic() + timeout, time.monotonic() + WAITING_NOTE_SECONDS
    while not is_up(url):
        if any(process.poll() is not None for process in services.values()):
            raise RuntimeError(f"{what} did not start; see runs/logs/")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer on {url} within {timeout:.0f} s; see runs/logs/")
        if time.monotonic() > note:
            say(f"still waiting for {what} ({time.monotonic() - since:.0f} s)")
            note += WAITING_NOTE_SECONDS
        time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
