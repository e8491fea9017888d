"""Where the process executor finds cgroups, and what it writes in a sandbox's one: v1 and v2 layouts.

The machines here have cgroup v1 (the sandbox tests use it for real); the v2 layout, and v1 seen
from inside a container, are read here from /proc files written for the test, over directories
that stand in for the cgroup filesystem.
"""

from __future__ import annotations

from pathlib import Path

from sharpe_rl.sandbox.cgroup import Limits, hierarchy

LIMITS = Limits(memory_bytes=2**30, pids=100, cpus=0.5)


def fake_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return proc


def test_a_delegated_v2_subtree_gets_memory_pids_and_cpu_limits(tmp_path):
    mine = tmp_path / "cg" / "user.slice" / "me"
    mine.mkdir(parents=True)
    (mine / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (mine / "cgroup.subtree_control").write_text("cpu memory pids\n")
    proc = fake_proc(tmp_path, "0::/user.slice/me\n", f"40 23 0:26 / {tmp_path / 'cg'} rw - cgroup2 cgroup2 rw\n")
    found = hierarchy(proc)
    assert found is not None and found.version == 2 and set(found.parents.values()) == {mine}
    cgroup = found.create(LIMITS)
    (directory,) = set(cgroup.directories.values())
    assert directory.parent == mine
    assert (directory / "memory.max").read_text() == str(2**30)
    assert (directory / "pids.max").read_text() == "100"
    assert (directory / "cpu.max").read_text() == "50000 100000"
    assert cgroup.procs_files == [directory / "cgroup.procs"]
    (directory / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cgroup.oom_kills() == 1


def test_a_v2_cgroup_that_cannot_delegate_the_controllers_is_not_used(tmp_path):
    mine = tmp_path / "cg" / "session.scope"
    mine.mkdir(parents=True)
    (mine / "cgroup.controllers").write_text("cpu\n")  # memory and pids not given to this cgroup
    (mine / "cgroup.subtree_control").write_text("")
    proc = fake_proc(tmp_path, "0::/session.scope\n", f"40 23 0:26 / {tmp_path / 'cg'} rw - cgroup2 cgroup2 rw\n")
    assert hierarchy(proc) is None


def test_v1_controllers_each_in_their_own_hierarchy(tmp_path):
    root = tmp_path / "cgroup"
    for name in ("memory/process_api/abc", "pids", "cpu,cpuacct"):
        (root / name).mkdir(parents=True)
    mountinfo = "".join(
        f"{i} 31 0:{i} / {root / point} rw,relatime - cgroup cgroup rw,{options}\n"
        for i, (point, options) in enumerate([("memory", "memory"), ("pids", "pids"), ("cpu,cpuacct", "cpu,cpuacct")])
    )
    proc = fake_proc(tmp_path, "9:pids:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/\n", mountinfo)
    found = hierarchy(proc)
    assert found is not None and found.version == 1
    assert found.parents == {
        "memory": root / "memory" / "process_api" / "abc",
        "pids": root / "pids",
        "cpu": root / "cpu,cpuacct",
    }
    cgroup = found.create(LIMITS)
    memory = cgroup.directories["memory"]
    assert (memory / "memory.limit_in_bytes").read_text() == str(2**30)
    assert (cgroup.directories["pids"] / "pids.max").read_text() == "100"
    assert (cgroup.directories["cpu"] / "cpu.cfs_quota_us").read_text() == "50000"
    assert len(cgroup.procs_files) == 3
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cgroup.oom_kills() == 2


def test_v1_inside_a_container_whose_cgroup_is_the_mount_root(tmp_path):
    root = tmp_path / "cgroup"
    for name in ("memory", "pids", "cpu"):
        (root / name).mkdir(parents=True)
    mountinfo = "".join(
        f"{i} 31 0:{i} /docker/abc {root / name} rw - cgroup cgroup rw,{name}\n"
        for i, name in enumerate(("memory", "pids", "cpu"))
    )
    proc = fake_proc(tmp_path, "4:memory:/docker/abc\n3:pids:/docker/abc\n2:cpu:/docker/abc\n", mountinfo)
    found = hierarchy(proc)
    assert found is not None and found.parents == {name: root / name for name in ("memory", "pids", "cpu")}


def test_no_cgroup_filesystem_means_none(tmp_path):
    assert hierarchy(fake_proc(tmp_path, "0::/\n", "22 1 0:20 / /proc rw - proc proc rw\n")) is None
