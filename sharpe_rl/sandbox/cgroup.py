"""A cgroup per sandbox: memory, processes and CPU limited for everything the sandbox runs, together.

rlimits count per process (memory) or per user (processes); a cgroup counts what every process of
one sandbox uses, and the kernel applies it whoever the user is. The process executor makes one
for each sandbox, as a child of the cgroup this process is in, and puts the sandbox's first
process in it before anything else starts, so every process of the sandbox is inside.

Two layouts, whichever this process may write to:
- cgroup v1: the `memory`, `pids` and `cpu` controllers, each a hierarchy of its own (on these
  machines under /sys/fs/cgroup/<controller>);
- cgroup v2: one hierarchy, where this process's cgroup lets its children use the three
  controllers (a delegated subtree).

Elsewhere (a cgroup this user may not write, a v2 tree without delegation) there is none, and the
executor says so. Reading /proc/self/cgroup and /proc/self/mountinfo tells where each controller is.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CONTROLLERS = ("memory", "pids", "cpu")
#: The name of every sandbox's cgroup starts with this, then the host process id and a counter.
PREFIX = "sharpe-rl-sandbox"
CPU_PERIOD_US = 100_000
#: Seconds to wait for a sandbox's processes to be gone before its cgroup is left behind.
REMOVE_WAIT_SECONDS = 5.0

_counter = itertools.count()


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use in all: bytes of memory (no swap), tasks (processes and threads), cores."""

    memory_bytes: int
    pids: int
    cpus: float


@dataclass(frozen=True)
class Hierarchy:
    """Where this process may make sandbox cgroups: the parent directory of each controller."""

    version: int  # 1 or 2
    parents: dict[str, Path]  # controller -> directory (v2: the same directory for all three)

    def create(self, limits: Limits) -> Cgroup:
        """A new cgroup with `limits`, empty; raises OSError if the kernel refuses."""
        name = f"{PREFIX}-{os.getpid()}-{next(_counter)}"
        directories = {controller: parent / name for controller, parent in self.parents.items()}
        cgroup = Cgroup(self.version, directories)
        try:
            for directory in dict.fromkeys(directories.values()):
                directory.mkdir()
            cgroup.limit(limits)
        except OSError:
            cgroup.remove()
            raise
        return cgroup

    def reap(self) -> None:
        """Remove the sandbox cgroups a dead process left behind (killing what still runs in them)."""
        for parent in dict.fromkeys(self.parents.values()):
            for directory in parent.glob(f"{PREFIX}-*"):
                owner = directory.name.removeprefix(f"{PREFIX}-").split("-")[0]
                if owner.isdigit() and not _alive(int(owner)):
                    Cgroup(self.version, {"": directory}).remove()


@dataclass(frozen=True)
class Cgroup:
    """One sandbox's cgroup (one directory per controller in v1, one in all in v2)."""

    version: int
    directories: dict[str, Path]

    @property
    def procs_files(self) -> list[Path]:
        """The files a process writes its pid into to join this cgroup."""
        return [directory / "cgroup.procs" for directory in dict.fromkeys(self.directories.values())]

    def limit(self, limits: Limits) -> None:
        memory, pids, cpu = (self.directories[name] for name in CONTROLLERS)
        quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
        if self.version == 1:
            _write(memory / "memory.limit_in_bytes", limits.memory_bytes)
            if (memory / "memory.memsw.limit_in_bytes").exists():  # swap accounting is on: no swap either
                _write(memory / "memory.memsw.limit_in_bytes", limits.memory_bytes)
            _write(pids / "pids.max", limits.pids)
            _write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
            _write(cpu / "cpu.cfs_quota_us", quota)
        else:
            _write(memory / "memory.max", limits.memory_bytes)
            if (memory / "memory.swap.max").exists():
                _write(memory / "memory.swap.max", 0)
            _write(pids / "pids.max", limits.pids)
            _write(cpu / "cpu.max", f"{quota} {CPU_PERIOD_US}")

    def oom_kills(self) -> int:
        """How many processes the memory limit has killed in this cgroup."""
        memory = self.directories.get("memory")
        if memory is None:
            return 0
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        with contextlib.suppress(OSError, ValueError):
            for line in (memory / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def processes(self) -> list[int]:
        pids: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                pids.update(int(pid) for pid in procs.read_text().split())
        return sorted(pids)

    def remove(self) -> None:
        """Kill whatever still runs in the cgroup, then remove it (logged, not raised, if it will not go)."""
        deadline = time.monotonic() + REMOVE_WAIT_SECONDS
        directories = [d for d in dict.fromkeys(self.directories.values()) if d.exists()]
        while directories:
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            for directory in list(directories):
                with contextlib.suppress(OSError):
                    directory.rmdir()
                    directories.remove(directory)
            if not directories:
                return
            if time.monotonic() > deadline:
                log.warning("could not remove the sandbox cgroup(s) %s", ", ".join(map(str, directories)))
                return
            time.sleep(0.02)


def hierarchy(proc: Path = Path("/proc/self")) -> Hierarchy | None:
    """Where this process (whose /proc directory is `proc`) can make sandbox cgroups with all three controllers."""
    membership = _membership(proc / "cgroup")
    mounts = _mounts(proc / "mountinfo")
    v1 = {}
    for controller in CONTROLLERS:
        for (version, options), (mount_point, mount_root) in mounts.items():
            if version == 1 and controller in options.split(",") and controller in membership:
                v1[controller] = _inside(mount_point, mount_root, membership[controller])
    if len(v1) == len(CONTROLLERS) and all(_writable(parent) for parent in v1.values()):
        return Hierarchy(1, v1)
    v2_mount = next(((point, root) for (version, _), (point, root) in mounts.items() if version == 2), None)
    if v2_mount is not None and "" in membership:
        parent = _inside(*v2_mount, membership[""])
        if _writable(parent) and _delegates_controllers(parent):
            return Hierarchy(2, dict.fromkeys(CONTROLLERS, parent))
    return None


def _membership(cgroup_file: Path) -> dict[str, str]:
    """controller -> the process's cgroup path in its hierarchy ("" is the v2 hierarchy)."""
    membership = {}
    with contextlib.suppress(OSError):
        for line in cgroup_file.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                membership[controller] = path
    return membership


def _mounts(mountinfo: Path) -> dict[tuple[int, str], tuple[Path, str]]:
    """(version, the v1 mount's options) -> (mount point, root of the hierarchy mounted there)."""
    mounts = {}
    with contextlib.suppress(OSError):
        for line in mountinfo.read_text().splitlines():
            before, _, after = line.partition(" - ")
            fields, (fstype, _, super_options) = before.split(), after.split(" ", 2)
            if fstype in ("cgroup", "cgroup2"):
                key = (1 if fstype == "cgroup" else 2, super_options if fstype == "cgroup" else "")
                mounts.setdefault(key, (Path(fields[4]), fields[3]))
    return mounts


def _inside(mount_point: Path, mount_root: str, path: str) -> Path:
    """The directory of cgroup `path` under a mount of the hierarchy's `mount_root`."""
    relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else path.lstrip("/")
    return mount_point if relative == "." else mount_point / relative


def _writable(directory: Path) -> bool:
    return directory.is_dir() and os.access(directory, os.W_OK | os.X_OK)


def _delegates_controllers(parent: Path) -> bool:
    """Whether children of `parent` (cgroup v2) get the three controllers, enabling them when allowed."""
    try:
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        if set(CONTROLLERS) <= enabled:
            return True
        if not set(CONTROLLERS) <= set((parent / "cgroup.controllers").read_text().split()):
            return False
        (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
        return True
    except OSError:  # not ours to change (a cgroup with processes in it cannot delegate)
        return False


def _write(path: Path, value: object) -> None:
    path.write_text(str(value))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
