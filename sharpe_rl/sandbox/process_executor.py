"""The process executor: the same harness in a bubblewrap sandbox, for machines with no Docker engine.

Each experiment runs under `bwrap` (Debian package `bubblewrap`), a small, well-kept tool that
builds the sandbox from kernel namespaces. Guarantees, as root and as a normal user (each one has
a test in tests/test_sandbox_process.py or tests/test_reward_integrity.py; docs/reward-integrity.md
sets them beside Docker's):
- **Never an outside uid of 0.** The sandbox's user (65534 inside) maps to the user running this
  process; when that is root, the sandbox is started as `nobody` instead (`setpriv`: its uid and
  gid, no supplementary groups, no capabilities, no new privileges), because the kernel checks
  the outside uid for many global settings (/proc/sys, the process limit). Where that cannot be
  done (no `setpriv`, or no user namespaces for an unprivileged user), the executor refuses to
  run, and says why and what to do.
- Nothing of the host's filesystem is visible but, read-only: /usr (with the /bin, /lib, /lib64,
  /sbin links), the Python installation and environment running this process, and the harness's
  four files at /opt/harness. No runs directory, no cache, no home, no /etc. As root, those paths
  may lie where `nobody` cannot reach (a Python under /root): a private mount namespace, made as
  root before the drop, binds each onto a directory `nobody` can reach, and the sandbox binds it
  from there. A fresh /proc with /proc/sys read-only; /dev read-only, with a size-capped /dev/shm;
  a size-capped tmpfs at /tmp. The task, with its bars, arrives on stdin and lives only in the
  trusted harness's memory (see harness.py).
- New user, PID, network, IPC, UTS and cgroup namespaces, and no further user namespace inside
  (`--disable-userns`): the experiment has no capabilities, sees only its own processes, has no
  network interface but loopback, cannot mount anything, and every process it starts dies with
  the harness (PID 1 of the namespace) or with this host process.
- Limits for the sandbox as a whole, where this process may make cgroups (as root on machines with
  cgroup v1 or v2, or in a delegated subtree; `cgroup.py`): total memory with no swap (an OOM kill
  is classed `out_of_memory`), total processes and threads (`pids_limit`), a CPU quota. Always,
  per process: a CPU-time rlimit and a host wall clock that kills the sandbox; an address-space
  rlimit of `memory_mb` plus ADDRESS_SPACE_HEADROOM_MB (virtual memory, which libraries reserve far
  beyond what they use: a torch model fitting after the preloaded libraries peaks above 2 GB of
  address space with 0.4 GB resident); a file-size rlimit; a process-count rlimit for the user.
- Output: stdout kept up to `output_limit_kb` (the result is its one line), stderr's tail read
  separately.

Not guaranteed, and why Docker stays the default:
- Without a cgroup (a normal user with no delegated cgroup), memory is limited per process and the
  process count per user (what the user runs now plus `pids_limit`, racy by nature). The executor
  logs a warning when it has none.
- The kernel is shared, as with Docker; no seccomp filter is installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sharpe_rl.config import SandboxConfig
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.cgroup import Cgroup, Hierarchy, Limits, hierarchy
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

#: The sandbox's user and group inside its user namespace.
NOBODY = 65534
#: Who the sandbox runs as outside when this process is root (never root itself).
UNPRIVILEGED_USER = "nobody"
#: Address space allowed per process beyond `memory_mb`: reserved, not resident (see the module docstring).
ADDRESS_SPACE_HEADROOM_MB = 2048
#: Size of the sandbox's /dev/shm, as Docker's default.
SHM_MB = 64
#: Where the harness's files appear inside the sandbox.
SANDBOX_HARNESS_DIR = "/opt/harness"
#: The launcher's exit code when it could not join the cgroup or stage the binds (in LAUNCHER).
LAUNCH_FAILED_EXIT = 125

#: The first process of every sandbox, a POSIX shell: `sh -c LAUNCHER sh STAGE N PROCS... M PATHS... COMMAND...`.
#: It joins the sandbox's cgroup (writing its pid into N cgroup.procs files) before anything else
#: starts, so every process of the sandbox is inside; when M > 0 (as root, in a private mount
#: namespace of its own) it mounts a small tmpfs on STAGE and binds each of the M paths onto
#: STAGE/0, STAGE/1, ..., where the unprivileged sandbox can reach them; then it becomes COMMAND.
LAUNCHER = r"""
stage=$1 n=$2; shift 2
while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n - 1)); done
m=$1; shift
if [ "$m" -gt 0 ]; then mount -t tmpfs -o mode=0755,size=64k sharpe-rl-stage "$stage" || exit 125; fi
i=0
while [ "$i" -lt "$m" ]; do
    if [ -d "$1" ]; then mkdir "$stage/$i"; else touch "$stage/$i"; fi && mount --bind "$1" "$stage/$i" || exit 125
    i=$((i + 1)); shift
done
exec "$@"
"""


@dataclass(frozen=True)
class Identity:
    """Whom the sandbox runs as outside its user namespace, and how it gets there from this process."""

    uid: int
    gid: int
    drop: list[str]  # the command prefix that drops to it ([] when this process is that user already)


@dataclass
class _Sandbox:
    process: subprocess.Popen
    cgroup: Cgroup | None


class ProcessExecutor:
    """Runs the harness under bubblewrap; see the module docstring."""

    name = "process"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.bwrap = _require("bwrap", "the process executor needs bubblewrap: `apt-get install bubblewrap`")
        self.identity = _identity()
        self.cgroups = _cgroups()
        # As root, the paths the sandbox binds are staged in a directory `nobody` can reach (see LAUNCHER).
        self.stage = _stage_directory() if self.identity.drop else None
        try:
            _probe(self)
        except BaseException:
            self._remove_stage()
            raise
        self.pool = WarmPool(config.workers if config.warm_pool else 0, self._start, _waiting, _discard)

    def binds(self) -> dict[str, str]:
        """What the sandbox binds read-only from the host: destination inside -> path outside."""
        binds = {}
        for prefix in sorted({sys.base_prefix, sys.prefix}):
            if not prefix.startswith("/usr/"):
                binds[prefix] = prefix
        for name, path in HARNESS_FILES.items():
            binds[f"{SANDBOX_HARNESS_DIR}/{name}"] = str(path)
        return binds

    def command(self, program: list[str] | None = None) -> list[str]:
        """The bwrap command line that runs the harness (or `program`) in the sandbox."""
        cfg = self.config
        command = [
            self.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
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
        command += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys"]
        command += ["--dev", "/dev", "--size", str(SHM_MB * 2**20), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
        # The sandbox's own /tmp before the environment's binds: a checkout's venv under /tmp stays visible.
        command += ["--size", str(cfg.tmpfs_mb * 2**20), "--tmpfs", "/tmp"]
        for i, (inside, outside) in enumerate(self.binds().items()):
            command += ["--ro-bind", f"{self.stage}/{i}" if self.stage else outside, inside]
        command += ["--chdir", "/tmp", "--clearenv"]
        environment = {**SANDBOX_ENV, **PRELOAD, "PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp"}
        for key, value in environment.items():
            command += ["--setenv", key, value]
        return [*command, *(program or [sys.executable, "-s", f"{SANDBOX_HARNESS_DIR}/harness.py"])]

    def launch(self, cgroup: Cgroup | None, program: list[str] | None = None) -> list[str]:
        """The whole command: join `cgroup`, stage the binds and drop to the sandbox's user (as root), then bwrap."""
        cfg = self.config
        limits = [
            # CPU time counts from the start, imports while waiting included: the harness's wall clock is the limit
            f"--cpu={int(2 * cfg.timeout_seconds + HOST_GRACE_SECONDS)}",
            f"--as={(cfg.memory_mb + ADDRESS_SPACE_HEADROOM_MB) * 2**20}",
            f"--fsize={cfg.tmpfs_mb * 2**20}",
            f"--nproc={cfg.pids_limit + _tasks_of(self.identity.uid)}",
            "--core=0",
        ]
        procs = [str(path) for path in cgroup.procs_files] if cgroup else []
        staged = list(self.binds().values()) if self.stage else []
        launcher = ["sh", "-c", LAUNCHER, "sh", str(self.stage or ""), str(len(procs)), *procs, str(len(staged))]
        private_mounts = ["unshare", "--mount", "--propagation", "private", "--"] if staged else []
        sandbox = [*self.identity.drop, "prlimit", *limits, "--", *self.command(program)]
        return [*private_mounts, *launcher, *staged, *sandbox]

    def _start(self, program: list[str] | None = None) -> _Sandbox:
        """A new sandbox whose harness waits for its task on stdin."""
        cgroup = self._cgroup()
        try:
            process = subprocess.Popen(
                self.launch(cgroup, program),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # one process group to kill on timeout
            )
        except OSError as exc:
            if cgroup:
                cgroup.remove()
            raise InfrastructureError(f"could not start the bubblewrap sandbox: {exc}") from exc
        return _Sandbox(process, cgroup)

    def _cgroup(self) -> Cgroup | None:
        if self.cgroups is None:
            return None
        cfg = self.config
        try:
            return self.cgroups.create(Limits(cfg.memory_mb * 2**20, cfg.pids_limit, cfg.cpus))
        except OSError as exc:
            raise InfrastructureError(f"could not make the sandbox's cgroup: {exc}") from exc

    def execute(self, task: bytes) -> RawOutcome:
        cfg = self.config
        started = time.perf_counter()
        sandbox = self.pool.take()
        process = sandbox.process
        stdout = _TailReader(process.stdout, cfg.output_limit_kb * 1024)
        stderr = _TailReader(process.stderr, STDERR_TAIL_BYTES)
        threading.Thread(target=_feed, args=(process.stdin, task), daemon=True).start()
        timed_out = False
        try:
            process.wait(timeout=host_time_limit(cfg))
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill(sandbox)  # bwrap dies, and with it (--die-with-parent) the whole sandbox
        stdout.join()
        stderr.join()
        returncode = process.returncode
        cpu_exhausted = returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU)
        oom_killed = bool(sandbox.cgroup and sandbox.cgroup.oom_kills())
        if sandbox.cgroup:
            sandbox.cgroup.remove()
        if returncode == LAUNCH_FAILED_EXIT and not stdout.data():
            raise InfrastructureError(f"could not set up the bubblewrap sandbox: {decode_tail(stderr.data(), 500)}")
        return RawOutcome(
            stdout=stdout.data(),
            stderr_tail=decode_tail(stderr.data()),
            exit_code=None if timed_out else returncode,
            timed_out=timed_out or cpu_exhausted,
            oom_killed=oom_killed,
            wall_seconds=time.perf_counter() - started,
        )

    def close(self) -> None:
        self.pool.close()
        self._remove_stage()

    def _remove_stage(self) -> None:
        if self.stage:
            with contextlib.suppress(OSError):
                os.rmdir(self.stage)


def _require(program: str, missing: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise InfrastructureError(f"{missing} (or use the Docker executor)")
    return path


def _identity() -> Identity:
    """This process's user when it is not root; as root, `nobody` and the command that drops to it."""
    if os.geteuid() != 0:
        return Identity(os.getuid(), os.getgid(), [])
    for program in ("setpriv", "unshare", "mount"):
        _require(
            program,
            f"running as root, the process executor starts each sandbox as the unprivileged user "
            f"{UNPRIVILEGED_USER!r} and needs `{program}` for that (Debian: `apt-get install util-linux mount`); "
            "it never runs generated code as root",
        )
    try:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise InfrastructureError(
            f"running as root, the process executor starts each sandbox as {UNPRIVILEGED_USER!r}, and this machine "
            f"has no such user: add it (`useradd --system --no-create-home {UNPRIVILEGED_USER}`), run sharpe-rl as "
            "a normal user, or use the Docker executor; it never runs generated code as root"
        ) from None
    drop = [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]
    return Identity(user.pw_uid, user.pw_gid, drop)


def _cgroups() -> Hierarchy | None:
    found = hierarchy()
    if found is None:
        log.warning(
            "the process executor has no cgroup it may use here (run as root, or in a delegated cgroup): memory is "
            "limited per process and processes per user, not for each sandbox as a whole"
        )
        return None
    found.reap()
    return found


def _stage_directory() -> str:
    """An empty directory the unprivileged user can reach, where each sandbox mounts its staged binds."""
    stage = tempfile.mkdtemp(prefix="sharpe-rl-stage-")
    os.chmod(stage, 0o755)
    return stage


def _probe(executor: ProcessExecutor) -> None:
    """Start one sandbox that imports the harness's modules; refuse, saying why, if it cannot."""
    program = [
        sys.executable,
        "-s",
        "-c",
        f"import sys; sys.path.insert(0, {SANDBOX_HARNESS_DIR!r}); import contract, protocol, numpy",
    ]
    sandbox = executor._start(program)
    try:
        _, stderr = sandbox.process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stderr = b"(no answer within 60 s)"
    finally:
        _kill(sandbox)
        if sandbox.cgroup:
            sandbox.cgroup.remove()
    if sandbox.process.returncode == 0:
        return
    who = f"as the unprivileged user {UNPRIVILEGED_USER!r} " if executor.identity.drop else ""
    raise InfrastructureError(
        f"the bubblewrap sandbox could not start {who}on this machine: {decode_tail(stderr, 500).strip()}. "
        "bubblewrap needs user namespaces for unprivileged users (`sysctl user.max_user_namespaces` above 0; "
        "on Ubuntu also `sysctl kernel.apparmor_restrict_unprivileged_userns=0`), and the sandbox's user must be "
        "able to read the Python installation and the checkout; or use the Docker executor"
    )


def _waiting(sandbox: _Sandbox) -> bool:
    return sandbox.process.poll() is None


def _kill(sandbox: _Sandbox) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sandbox.process.pid, signal.SIGKILL)
    sandbox.process.wait()


def _discard(sandbox: _Sandbox) -> None:
    """Kill a sandbox that never got its task, remove its cgroup, and close the pipes nobody reads."""
    _kill(sandbox)
    if sandbox.cgroup:
        sandbox.cgroup.remove()
    process = sandbox.process
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
