"""Real services the scale-out and fault tests start, break and restart: a Dask cluster, a second
Docker engine, an MLflow tracking server, a Prefect server, a small disk. Each is a real process (or mount) of this
machine, owned by the test that started it and removed afterwards; the shared Docker engine is
never stopped or restarted."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


#: Set to 1 by CI (.ci/run): the Docker, browser and slow tests must run there, so what would skip them fails them.
REQUIRE_DOCKER = "SHARPE_RL_REQUIRE_DOCKER"
REQUIRE_BROWSER = "SHARPE_RL_REQUIRE_BROWSER"


def require(condition: bool, reason: str, required_by: tuple[str, ...] = (REQUIRE_DOCKER,)) -> None:
    """Skip the test when `condition` is false, or fail it when a setting of `required_by` is 1 (CI)."""
    if condition:
        return
    for setting in required_by:
        if os.environ.get(setting) == "1":
            pytest.fail(f"{setting}=1, but {reason}")
    pytest.skip(reason)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal a process started with start_new_session=True and its children, and wait for it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# ---- a second Docker engine, ours to restart ------------------------------------------------


class DockerEngine:
    """A dockerd of our own: its own data root, exec root, pidfile and socket, no bridge network."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            "dockerd",
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "docker.pid"),
            "-H", self.host,
            "--bridge", "none",
            "--iptables=false",
            "--ip-masq=false",
        ]  # fmt: skip
        log = (self.root / "dockerd.log").open("a")
        self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        try:
            wait_until(self.answers, 120, f"the Docker engine at {self.host}", interval=0.2)
        except TimeoutError as exc:
            tail = (self.root / "dockerd.log").read_text()[-3000:]
            raise TimeoutError(f"{exc} (exit code {self.process.poll()}); its log ends:\n{tail}") from None

    def answers(self) -> bool:
        try:
            return docker.DockerClient(base_url=self.host, timeout=5).ping()
        except (docker.errors.DockerException, requests.RequestException):
            return False

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=120)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, signal.SIGTERM, timeout=60)
            self.process = None

    def restart(self) -> None:
        """What `systemctl restart docker` does: running containers are stopped, the API goes away and comes back."""
        self.stop()
        self.start()

    def load_image(self, tag: str) -> None:
        """Copy an image from the shared engine (`docker save | docker load`)."""
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
        loaded = subprocess.run(["docker", "-H", self.host, "load", "-q"], stdin=save.stdout, capture_output=True)
        save.stdout.close()
        assert save.wait() == 0 and loaded.returncode == 0, loaded.stderr.decode()[-2000:]

    def remove(self) -> None:
        self.stop()
        subprocess.run(["umount", "-R", str(self.root / "exec")], capture_output=True)  # netns mounts, if any
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def second_docker_engine(image: str):
    require(shutil.which("dockerd") is not None and os.geteuid() == 0, "a second dockerd needs dockerd and root")
    engine = DockerEngine(Path(tempfile.mkdtemp(prefix="sharpe-rl-engine-", dir="/var/tmp")))
    try:
        engine.start()
        engine.load_image(image)
        yield engine
    finally:
        engine.remove()


# ---- a Dask cluster on this machine ----------------------------------------------------------


class DaskCluster:
    """`dask scheduler` and `dask worker` processes; each worker may get its own environment (DOCKER_HOST)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.address = ""

    def start(self, worker_envs: list[dict[str, str]]) -> None:
        env = os.environ | {"PYTHONPATH": str(REPO)}
        scheduler_file = self.directory / "scheduler.json"
        self.scheduler = self._spawn(
            [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(scheduler_file)],
            env,
            "scheduler",
        )  # fmt: skip
        wait_until(scheduler_file.exists, 60, "the Dask scheduler")
        self.address = json.loads(scheduler_file.read_text())["address"]
        for index, extra in enumerate(worker_envs):
            self.workers.append(
                self._spawn(
                    [BIN / "dask", "worker", self.address, "--name", f"worker-{index}", "--nthreads", "2",
                     "--no-dashboard", "--local-directory", str(self.directory / f"worker-{index}")],
                    env | extra,
                    f"worker-{index}",
                )
            )  # fmt: skip
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(len(worker_envs), timeout=120)

    def _spawn(self, command: list, env: dict[str, str], name: str) -> subprocess.Popen:
        log = (self.directory / f"{name}.log").open("a")
        return subprocess.Popen(
            [str(part) for part in command], env=env, cwd=REPO, stdout=log, stderr=log, start_new_session=True
        )

    def kill(self, index: int) -> None:
        """SIGKILL worker `index` with everything it started (its nanny and worker processes): a machine lost."""
        stop_group(self.workers[index], signal.SIGKILL)

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process is not None:
                stop_group(process)


# ---- an MLflow tracking server ----------------------------------------------------------------


class MlflowServer:
    """`mlflow server` on a port of its own, with a SQLite store and served artifacts under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            BIN / "mlflow", "server",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.db'}",
            "--artifacts-destination", str(self.directory / "artifacts"),
        ]  # fmt: skip
        log = (self.directory / "mlflow.log").open("a")
        self.process = subprocess.Popen([str(part) for part in command], stdout=log, stderr=log, start_new_session=True)
        wait_until(self.answers, 120, f"the MLflow server on port {self.port}", interval=0.5)

    def answers(self) -> bool:
        try:
            return requests.get(f"{self.uri}/health", timeout=2).ok
        except requests.RequestException:
            return False

    def kill(self) -> None:
        """The server dies (SIGKILL): nothing is flushed, the port stops answering."""
        if self.process is not None:
            stop_group(self.process, signal.SIGKILL)
            self.process = None


# ---- a Prefect server ------------------------------------------------------------------------


class PrefectServer:
    """`prefect server start` on a port of its own, its database under `home`; stopped and started at will."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        log = (self.home / "server.log").open("ab")
        command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
        wait_until(self.answers, 180, f"the Prefect server on port {self.port}", interval=0.5)

    def answers(self) -> bool:
        try:
            return requests.get(f"{self.api}/health", timeout=2).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, signal.SIGTERM, timeout=60)
            self.process = None

    def log_lines(self, flow_run_id: str) -> list[str]:
        """Every log line of a flow run (its tasks' included), oldest first, page by page."""
        lines: list[str] = []
        while True:
            body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC", "offset": len(lines)}
            page = [entry["message"] for entry in self.post("/logs/filter", body | {"limit": 200})]
            lines += page
            if len(page) < 200:
                return lines

    def post(self, path: str, body: dict) -> list[dict]:
        response = requests.post(f"{self.api}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()


# ---- a small disk --------------------------------------------------------------------------


class SmallDisk:
    """A tmpfs of `size_mb` mounted at `path`, which a ballast file can fill to the last byte."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        self.size_mb = size_mb
        self.ballast = path / "ballast"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.path)], capture_output=True
        )
        require(done.returncode == 0, f"cannot mount a tmpfs ({done.stderr.decode().strip()})")

    def fill(self) -> None:
        """Write zeros until the disk refuses: the next write anywhere on it fails with ENOSPC."""
        with self.ballast.open("ab", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * (1 << 16))
            except OSError:
                pass
        assert shutil.disk_usage(self.path).free < (1 << 16)

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.path)], capture_output=True)
