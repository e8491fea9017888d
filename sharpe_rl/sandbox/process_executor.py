"""The process executor: the same harness in a limited subprocess, for machines with no Docker engine.

THIS IS NOT A SECURITY BOUNDARY. Generated code runs as a local process that can read whatever
its user can read (the holdout and the rest of the cache directory included, if it knows where
to look), and can write to the host's /tmp. Use it to develop without an engine, never for RL
runs on a machine that matters. Constructing one logs a warning and issues a RuntimeWarning.

What it does limit (each one has a test in tests/test_sandbox_process.py):
- Time: the harness's SIGALRM, a CPU-time rlimit, and a host wall clock that kills the whole
  process session (and the PID namespace, when there is one) with SIGKILL.
- Memory: an address-space rlimit of `memory_mb` (virtual memory, so it is stricter than the
  Docker limit on resident memory; importing torch needs about 1.5 GB of address space).
- Processes: an rlimit on the number of processes of the user it runs as (a fork bomb hits it).
- File size: an rlimit of `tmpfs_mb` on any file it writes.
- Files: it runs in a fresh temporary directory holding copies of the task and the data view, with
  a minimal environment (no host secrets in environment variables), removed afterwards.
- Network and processes, where the system permits: a new network namespace (no interfaces but
  loopback) and PID namespace (every process dies with the harness), via `unshare` as root
  (then running as `nobody`) or `unshare -r` (a user namespace) otherwise. Where neither works it
  runs without them and logs that the experiment can reach the network.
- Output: stdout kept up to `output_limit_kb` (its end, where the result is), stderr's tail.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import IO

from sharpe_rl.config import SandboxConfig
from sharpe_rl.sandbox.contract import SANDBOX_ENV
from sharpe_rl.sandbox.executor import STDERR_TAIL_BYTES, RawOutcome, decode_tail, host_time_limit
from sharpe_rl.sandbox.image import HARNESS_DIR

log = logging.getLogger(__name__)

NOT_A_BOUNDARY = (
    "the process executor is NOT a security boundary: generated code runs as a local process that can "
    "read your files; use the Docker executor for real runs"
)
NOBODY = 65534
_NAMESPACES = ["unshare", "--net", "--pid", "--fork", "--kill-child"]
_AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


class ProcessExecutor:
    """Runs the harness as a local subprocess under rlimits; see the module docstring."""

    name = "process"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        warnings.warn(NOT_A_BOUNDARY, RuntimeWarning, stacklevel=2)
        log.warning(NOT_A_BOUNDARY)
        self.as_root = os.geteuid() == 0
        self.isolation = self._probe_isolation()
        if not self.isolation:
            log.warning("no network/PID namespace available here: experiments can reach the network")

    def _probe_isolation(self) -> list[str]:
        """The namespace prefix this system permits: as root, or in a user namespace, or none."""
        prefix = [*_NAMESPACES, *_AS_NOBODY] if self.as_root else [_NAMESPACES[0], "--map-root-user", *_NAMESPACES[1:]]
        if shutil.which("unshare") is None or (self.as_root and shutil.which("setpriv") is None):
            return []
        probe = subprocess.run([*prefix, "true"], capture_output=True)
        return prefix if probe.returncode == 0 else []

    def execute(self, task_path: Path, data_path: Path) -> RawOutcome:
        cfg = self.config
        workdir = Path(tempfile.mkdtemp(prefix="sharpe-rl-process-"))
        try:
            for source in (HARNESS_DIR / "harness.py", HARNESS_DIR / "contract.py", task_path, data_path):
                shutil.copyfile(source, workdir / source.name)
            scratch = workdir / "tmp"
            scratch.mkdir()
            workdir.chmod(0o755)
            if self.as_root and self.isolation:
                os.chown(scratch, NOBODY, NOBODY)
            return self._run(workdir, scratch, task_path.name, data_path.name, cfg)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, workdir: Path, scratch: Path, task_name: str, data_name: str, cfg: SandboxConfig) -> RawOutcome:
        limits = [
            f"--cpu={int(cfg.timeout_seconds) + 2}",
            f"--as={cfg.memory_mb * 2**20}",
            f"--fsize={cfg.tmpfs_mb * 2**20}",
            f"--nproc={self._process_limit()}",
            "--core=0",
        ]
        command = [
            "prlimit",
            *limits,
            "--",
            *self.isolation,
            sys.executable,
            "-s",
            str(workdir / "harness.py"),
            str(workdir / task_name),
            str(workdir / data_name),
        ]
        env = {**SANDBOX_ENV, "PATH": "/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(scratch), "LANG": "C.UTF-8"}
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=scratch,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # one process group to kill on timeout
        )
        stdout = _TailReader(process.stdout, cfg.output_limit_kb * 1024)
        stderr = _TailReader(process.stderr, STDERR_TAIL_BYTES)
        timed_out = False
        try:
            process.wait(timeout=host_time_limit(cfg))
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(process.pid)  # also whatever it left running in the group
            process.wait()
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

    def _process_limit(self) -> int:
        """RLIMIT_NPROC counts all processes of the user: as `nobody` that is the sandbox's alone."""
        if self.as_root and self.isolation:
            return self.config.pids_limit
        return self.config.pids_limit + _tasks_of(os.getuid())


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


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


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
