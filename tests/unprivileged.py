"""Running a command as a normal user from a test run as root: how a user without root meets the process executor.

The command runs with an unprivileged uid and gid, no supplementary groups and no capabilities, and
gets what such a user has on a machine set up for it:
- a cgroup of its own (a child of this process's, in each controller, owned by the user: what
  systemd calls delegation), so the user's sandboxes can have cgroups of their own under it;
- the paths it needs (the Python installation, the checkout, the shared data) reachable, even where
  they lie under a directory only root may enter (/root): in a private mount namespace that
  directory is covered by an empty tmpfs into which just those paths are bound back.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sharpe_rl.sandbox.cgroup import Cgroup, Limits, hierarchy

#: A uid and gid no account on these machines uses.
TEST_UID = 64123


def run_as_normal_user(
    argv: Sequence[str], paths: Sequence[Path], env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run `argv` as TEST_UID in a delegated cgroup, with `paths` reachable; its output as text."""
    assert os.geteuid() == 0, "only root can start a process as another user"
    found = hierarchy()
    cgroup = found.create(Limits(16 * 2**30, 8192, os.cpu_count() or 1)) if found else None
    if cgroup:
        _delegate(cgroup)
    stage = tempfile.mkdtemp(prefix="sharpe-rl-user-stage-")
    try:
        script = ["set -e", *(f"echo $$ > {shlex.quote(str(p))}" for p in (cgroup.procs_files if cgroup else []))]
        script += _reachable(paths, Path(stage))
        drop = f"setpriv --reuid={TEST_UID} --regid={TEST_UID} --clear-groups --inh-caps=-all --bounding-set=-all --"
        script.append(f"exec {drop} {shlex.join(argv)}")
        command = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script)]
        return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    finally:
        if cgroup:
            cgroup.remove()
        shutil.rmtree(stage, ignore_errors=True)  # the mount points made in it (empty here)


def home_for_normal_user() -> Path:
    """A fresh directory the test user owns (pytest's own temporary folders are root's alone)."""
    home = Path(tempfile.mkdtemp(prefix="sharpe-rl-user-"))
    os.chown(home, TEST_UID, TEST_UID)
    return home


def _delegate(cgroup: Cgroup) -> None:
    """Give the user its cgroup: the directories (to make children) and the files that move processes."""
    for directory in dict.fromkeys(cgroup.directories.values()):
        for path in (directory, directory / "cgroup.procs", directory / "tasks", directory / "cgroup.subtree_control"):
            if path.exists():
                os.chown(path, TEST_UID, TEST_UID)


def _reachable(paths: Sequence[Path], stage: Path) -> list[str]:
    """Shell lines that make each path reachable by any user (run as root in a private mount namespace)."""
    covered: dict[Path, list[Path]] = {}
    for path in paths:
        closed = next((a for a in reversed(path.parents) if not os.stat(a).st_mode & stat.S_IXOTH), None)
        if closed is not None:
            covered.setdefault(closed, []).append(path)
    lines = []
    for i, (closed, inside) in enumerate(covered.items()):
        keep = shlex.quote(str(stage / str(i)))
        lines += [f"mkdir {keep}", f"mount --bind {shlex.quote(str(closed))} {keep}"]
        lines.append(f"mount -t tmpfs -o mode=0755 sharpe-rl-user {shlex.quote(str(closed))}")
        for path in inside:
            target = shlex.quote(str(path))
            lines += [
                f"mkdir -p {target}",
                f"mount --bind {keep}/{shlex.quote(str(path.relative_to(closed)))} {target}",
            ]
    return lines
