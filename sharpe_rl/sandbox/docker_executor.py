"""The Docker executor: each experiment in a fresh, locked-down container. This is the boundary.

Guarantees (each one has a test in tests/test_sandbox_docker.py or tests/test_reward_integrity.py):
- No network: `network_mode=none`, the container has only a loopback interface.
- The host's files are invisible: nothing is mounted. The task, with the bars of the data view,
  arrives on the container's stdin and exists only in the trusted harness's memory (which the
  experiment's process cannot read: see harness.py). The view ends at the last bar the run may
  see (never the holdout during a reward run). The root filesystem is read-only; the only writable
  place is a size-capped, noexec tmpfs at /tmp that dies with the container.
- Not root, and cannot become root: a non-root user, every capability dropped, no-new-privileges.
- Bounded resources: memory limit equal to memory+swap (no swap; exceeding it is an OOM kill,
  classed `out_of_memory`), a CPU quota, a pids limit (a fork bomb hits it), a wall-clock limit
  enforced from the host (kill, then remove) on top of the harness's own, stdout/stderr kept only
  up to `output_limit_kb` by the engine's log driver (a flood costs the host nothing beyond that).
  The result is read from stdout and the diagnostics from stderr separately, so neither crowds
  the other out.
- Nothing survives a run: every container is removed in a `finally`; containers carry the labels
  `sharpe-rl.run` and `sharpe-rl.created`, and `reap_containers` removes those a crashed run left.
  Each also carries `sharpe-rl.expires`, the time by which its harness has exited whatever happened
  (the idle wait for a task, then the time limit): every new executor removes the expired ones of
  any run from its engine, so a process killed mid-experiment (a lost Dask worker) leaves nothing
  behind for longer than that on the engine it used.
- Runs are independent: a fresh container and tmpfs each time, never reused. Up to `workers`
  containers are started ahead of their tasks (`SandboxConfig.warm_pool`), their libraries
  imported while they wait; each still runs one task and is removed.

Not guaranteed:
- Protection from kernel or container-runtime exploits: containers share the host kernel. This
  engine reports no seccomp or AppArmor profile, so the syscall surface is the kernel's whole one.
  Use a VM or gVisor (`runtime=runsc`) as the boundary when that matters.
- CPU and disk-bandwidth fairness beyond the CPU quota; the engine's own CPU spent storing output.
- Anything about what the experiment reports: the host validates and scores it, never trusting it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.types import LogConfig, Ulimit

from sharpe_rl.config import SandboxConfig
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.contract import IDLE_SECONDS, SANDBOX_ENV
from sharpe_rl.sandbox.executor import PRELOAD, RawOutcome, WarmPool, decode_tail, host_time_limit
from sharpe_rl.sandbox.image import docker_client, image_exists, image_tag

log = logging.getLogger(__name__)

RUN_LABEL = "sharpe-rl.run"
CREATED_LABEL = "sharpe-rl.created"
EXPIRES_LABEL = "sharpe-rl.expires"
#: Seconds past its expiry before a container is reaped (its start, clocks).
EXPIRY_MARGIN_SECONDS = 60
SANDBOX_USER = "10001:10001"
#: What the Docker SDK raises when the engine fails or goes away (a lost connection is a requests error).
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


class DockerExecutor:
    """Runs the harness in a container of the sandbox image; see the module docstring."""

    name = "docker"

    def __init__(self, config: SandboxConfig, run_id: str, client: docker.DockerClient | None = None) -> None:
        self.config = config
        self.run_id = run_id
        self.client = client or docker_client()
        self.image = config.image or image_tag()
        if not image_exists(self.client, self.image):
            raise InfrastructureError(
                f"the sandbox image {self.image} is missing: build it with `make image` "
                "(or `.venv/bin/python sandbox_image/build.py`)"
            )
        self.pool = WarmPool(config.workers if config.warm_pool else 0, self._start, _waiting, _remove)
        reap_expired_containers(self.client)

    def execute(self, task: bytes) -> RawOutcome:
        started = time.perf_counter()
        container = self.pool.take()
        try:
            self._send(container, task)
            timed_out = False
            try:
                exit_code: int | None = container.wait(timeout=host_time_limit(self.config))["StatusCode"]
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                timed_out, exit_code = True, None
                container.kill()
            state = self.client.api.inspect_container(container.id)["State"]
            return RawOutcome(
                stdout=container.logs(stdout=True, stderr=False),
                stderr_tail=decode_tail(container.logs(stdout=False, stderr=True)),
                exit_code=exit_code,
                timed_out=timed_out,
                oom_killed=bool(state.get("OOMKilled")),
                wall_seconds=time.perf_counter() - started,
            )
        except ENGINE_ERRORS as exc:
            raise InfrastructureError(f"the Docker engine failed while running the sandbox: {exc}") from exc
        finally:
            _remove(container)

    def close(self) -> None:
        self.pool.close()

    def _start(self) -> Container:
        """A new running sandbox whose harness waits for its task on stdin."""
        cfg = self.config
        try:
            container = self.client.containers.create(
                self.image,
                user=SANDBOX_USER,
                environment={**SANDBOX_ENV, **PRELOAD},
                working_dir="/tmp",
                network_mode="none",
                read_only=True,
                stdin_open=True,
                tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={cfg.tmpfs_mb}m,mode=1777"},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                ipc_mode="private",
                pids_limit=cfg.pids_limit,
                mem_limit=f"{cfg.memory_mb}m",
                memswap_limit=f"{cfg.memory_mb}m",
                nano_cpus=int(cfg.cpus * 1e9),
                ulimits=[Ulimit(name="core", soft=0, hard=0)],
                log_config=LogConfig(
                    type=LogConfig.types.JSON, config={"max-size": f"{cfg.output_limit_kb}k", "max-file": "1"}
                ),
                labels={
                    RUN_LABEL: self.run_id,
                    CREATED_LABEL: str(int(time.time())),
                    EXPIRES_LABEL: str(int(time.time() + IDLE_SECONDS + host_time_limit(cfg))),
                },
            )
        except ENGINE_ERRORS as exc:
            raise InfrastructureError(f"the Docker engine could not create the sandbox container: {exc}") from exc
        try:
            container.start()
        except ENGINE_ERRORS as exc:
            _remove(container)
            raise InfrastructureError(f"the Docker engine could not start the sandbox container: {exc}") from exc
        return container

    def _send(self, container: Container, task: bytes) -> None:
        """Write the task to the container's stdin (its harness reads exactly one task)."""
        socket = self.client.api.attach_socket(container.id, params={"stdin": 1, "stream": 1})
        try:
            getattr(socket, "_sock", socket).sendall(task)
        except OSError as exc:  # the harness is gone already: its exit code and stderr will say why
            log.warning("could not send the task to sandbox container %s: %s", container.id, exc)
        finally:
            socket.close()


def _waiting(container: Container) -> bool:
    try:
        container.reload()
    except ENGINE_ERRORS:
        return False
    return container.status == "running"


def _remove(container: Container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except ENGINE_ERRORS as exc:
        # never hide the outcome: the reaper removes what is left (labels name the run)
        log.warning("could not remove sandbox container %s (%s); reap_containers will", container.id, exc)


def reap_containers(
    client: docker.DockerClient | None = None, *, run_id: str | None = None, older_than: float | None = None
) -> int:
    """Remove sharpe-rl sandbox containers left behind (by `run_id`, and/or older than `older_than` seconds).

    With neither argument it removes every sandbox container, so call it with one when another run
    may be live. Returns how many were removed.
    """
    now = time.time()

    def old_enough(summary: dict) -> bool:
        created = float(summary.get("Labels", {}).get(CREATED_LABEL, summary.get("Created", now)))
        return older_than is None or now - created >= older_than

    label = f"{RUN_LABEL}={run_id}" if run_id else RUN_LABEL
    return _remove_containers(client or docker_client(), label, old_enough)


def reap_expired_containers(client: docker.DockerClient) -> int:
    """Remove the sandbox containers of any run that are past their expiry (see the module docstring)."""
    deadline = time.time() - EXPIRY_MARGIN_SECONDS

    def expired(summary: dict) -> bool:
        with contextlib.suppress(ValueError):
            return float(summary.get("Labels", {}).get(EXPIRES_LABEL, "inf")) < deadline
        return False

    try:
        removed = _remove_containers(client, EXPIRES_LABEL, expired)
    except ENGINE_ERRORS as exc:  # the engine is busy or failing: the next executor tries again
        log.warning("could not remove expired sandbox containers: %s", exc)
        return 0
    if removed:
        log.info("removed %d expired sandbox container(s) left by processes that ended without removing them", removed)
    return removed


def _remove_containers(client: docker.DockerClient, label: str, condition: Callable[[dict], bool]) -> int:
    """Remove the containers carrying `label` (`key` or `key=value`) that meet `condition`; how many."""
    removed = 0
    for summary in client.api.containers(all=True, filters={"label": label}):
        if not condition(summary):
            continue
        try:
            client.api.remove_container(summary["Id"], force=True)
            removed += 1
        except docker.errors.NotFound:
            pass  # it finished and was removed meanwhile
    return removed
