"""The process executor: the same harness in a bubblewrap sandbox, for machines with no Docker engine.

Each experiment runs under `bwrap` (Debian package `bubblewrap`), a small, well-kept tool that
builds the sandbox from kernel namespaces. Guarantees (each one has a test in
tests/test_sandbox_process.py):
- Nothing of the host's filesystem is visible but, read-only: /usr (with the /bin, /lib, /lib64,
  /sbin links), the Python installation and environment running this process, and the harness's
  four files at /opt/harness. No runs directory, no cache, no home, no /etc. A fresh /proc and
  /dev, and a size-capped tmpfs at /tmp, are the sandbox's own. The task, with its bars, arrives on
  stdin and lives only in the trusted harness's memory (see harness.py).
- New user, PID, network, IPC, UTS and cgroup namespaces: the experiment is uid 65534 with no
  capabilities, sees only its own processes, has no network interface but loopback, and every
  process it starts dies with the harness (PID 1 of the namespace) or with this host process.
- Limits: a CPU-time rlimit and a host wall clock that kills the sandbox; an address-space rlimit
  per process of `memory_mb` plus ADDRESS_SPACE_HEADROOM_MB (virtual memory, which libraries reserve
  far beyond what they use: a torch model fitting after the preloaded libraries peaks above 2 GB of
  address space with 0.4 GB resident); a file-size rlimit; a process-count rlimit.
- Output: stdout kept up to `output_limit_kb` (the result is its one line), stderr's tail read
  separately.

Not guaranteed, and why Docker stays the default:
- No cgroup: memory and process counts are rlimits per process and per user, not a total for
  the sandbox. The sandbox's processes are the host user's as far as the kernel's process-count
  limit goes, so that limit is set to what the user runs now plus `pids_limit` (racy by nature).
- The kernel is shared, as with Docker; no seccomp filter is installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from sharpe_rl.config import SandboxConfig
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.contract import SANDBOX_ENV
from sharpe_rl.sandbox.executor import (
    HOST_GRACE_SECONDS,
    PRELOAD,
    STDERR_TAIL_BYTES,
    RawOutcome,
    WarmPool,
    decode_tail,
    host_time_limit,
)
from sharpe_rl.sandbox.image import HARNESS_FILES

log = logging.getLogger(__name__)

NOBODY = 65534
#: Address space allowed per process beyond `memory_mb`: reserved, not resident (see the module docstring).
ADDRESS_SPACE_HEADROOM_MB = 2048
#: Where the harness's files appear inside the sandbox.
SANDBOX_HARNESS_DIR = "/opt/harness"


class ProcessExecutor:
    """Runs the harness under bubblewrap; see the module docstring."""

    name = "process"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.bwrap = shutil.which("bwrap")
        if self.bwrap is None:
            raise InfrastructureError(
                "the process executor needs bubblewrap: `apt-get install bubblewrap` (or use the Docker executor)"
            )
        self.pool = WarmPool(config.workers if config.warm_pool else 0, self._start, _waiting, _discard)

    def command(self) -> list[str]:
        """The bwrap command line that runs the harness."""
        cfg = self.config
        command = [
            self.bwrap,
            "--unshare-all",
            "--die-with-parent",
            "--as-pid-1",
            "--new-session",
            "--uid",
            str(NOBODY),
            "--gid",
            str(NOBODY),
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for top in ("/bin", "/lib", "/lib64", "/sbin"):
            if os.path.islink(top):
                command += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                command += ["--ro-bind", top, top]
        # The sandbox's own /tmp before the environment's binds: a checkout's venv under /tmp stays visible.
        command += ["--proc", "/proc", "--dev", "/dev", "--size", str(cfg.tmpfs_mb * 2**20), "--tmpfs", "/tmp"]
        for prefix in sorted({sys.base_prefix, sys.prefix}):
            if not prefix.startswith("/usr/"):
                command += ["--ro-bind", prefix, prefix]
        for name, path in HARNESS_FILES.items():
            command += ["--ro-bind", str(path), f"{SANDBOX_HARNESS_DIR}/{name}"]
        command += ["--chdir", "/tmp", "--clearenv"]
        environment = {**SANDBOX_ENV, **PRELOAD, "PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp"}
        for key, value in environment.items():
            command += ["--setenv", key, value]
        return [*command, sys.executable, "-s", f"{SANDBOX_HARNESS_DIR}/harness.py"]

    def _start(self) -> subprocess.Popen:
        """A new sandbox whose harness waits for its task on stdin."""
        cfg = self.config
        limits = [
            # CPU time counts from the start, imports while waiting included: the harness's wall clock is the limit
            f"--cpu={int(2 * cfg.timeout_seconds + HOST_GRACE_SECONDS)}",
            f"--as={(cfg.memory_mb + ADDRESS_SPACE_HEADROOM_MB) * 2**20}",
            f"--fsize={cfg.tmpfs_mb * 2**20}",
            f"--nproc={cfg.pids_limit + _tasks_of(os.getuid())}",
            "--core=0",
        ]
        return subprocess.Popen(
            ["prlimit", *limits, "--", *self.command()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # one process group to kill on timeout
        )

    def execute(self, task: bytes) -> RawOutcome:
        cfg = self.config
        started = time.perf_counter()
        process = self.pool.take()
        stdout = _TailReader(process.stdout, cfg.output_limit_kb * 1024)
        stderr = _TailReader(process.stderr, STDERR_TAIL_BYTES)
        threading.Thread(target=_feed, args=(process.stdin, task), daemon=True).start()
        timed_out = False
        try:
            process.wait(timeout=host_time_limit(cfg))
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill(process)  # bwrap dies, and with it (--die-with-parent) the whole sandbox
        stdout.join()
        stderr.join()
        returncode = process.returncode
        cpu_exhausted = returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU)
        return RawOutcome(
            stdout=stdout.data(),
            stderr_tail=decode_tail(stderr.data()),
            exit_code=None if timed_out else returncode,
            timed_out=timed_out or cpu_exhausted,
            oom_killed=False,
            wall_seconds=time.perf_counter() - started,
        )

    def close(self) -> None:
        self.pool.close()


def _waiting(process: subprocess.Popen) -> bool:
    return process.poll() is None


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _discard(process: subprocess.Popen) -> None:
    """Kill a sandbox that never got its task, and close the pipes nobody reads."""
    _kill(process)
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def _feed(pipe: IO[bytes] | None, task: bytes) -> None:
    """Write the task to the sandbox's stdin (on a thread: a sandbox that does not read cannot block the host)."""
    assert pipe is not None
    with contextlib.suppress(OSError):
        pipe.write(task)
    with contextlib.suppress(OSError):
        pipe.close()


class _TailReader:
    """Drains a pipe on a thread, keeping only its last `limit` bytes."""

    def __init__(self, pipe: IO[bytes] | None, limit: int) -> None:
        self._pipe = pipe
        self._limit = limit
        self._buffer = bytearray()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self._pipe is not None
        for chunk in iter(lambda: self._pipe.read(1 << 16), b""):
            self._buffer += chunk
            if len(self._buffer) > 2 * self._limit:
                del self._buffer[: -self._limit]
        self._pipe.close()

    def join(self) -> None:
        # a process that escaped the group may hold the pipe open; do not wait for it forever
        self._thread.join(timeout=5)

    def data(self) -> bytes:
        return bytes(self._buffer[-self._limit :])


def _tasks_of(uid: int) -> int:
    """How many tasks (processes and threads) `uid` runs now."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            count += int(fields.get("Threads", "1"))
    return count
