"""The process executor (no Docker engine): the harness under bubblewrap, with its limits.

What it hides from the experiment (the runs directory, the network, the harness) is shown in
tests/test_reward_integrity.py with the attacks that tried; here: time, memory, processes, a clear
error where bubblewrap is missing, and what holds when sharpe-rl runs as root (as CI does): the
sandbox never has an outside uid of 0, no kernel setting under /proc/sys opens for writing, no
user namespace or mount inside, the process limit and the memory limit hold for the sandbox as a
whole, /dev is read-only and /dev/shm capped. Each of those is an experiment that reports what it
managed (in the message of the ValueError it raises), benign: it opens kernel settings without
writing to them. The same tests run again as a normal user with a delegated cgroup.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_fixtures import features_doing, spec
from service_fixtures import require
from unprivileged import home_for_normal_user, run_as_normal_user

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox import process_executor as process_module
from sharpe_rl.sandbox.cgroup import PREFIX, hierarchy
from sharpe_rl.sandbox.executor import START_WAIT_SECONDS
from sharpe_rl.sandbox.process_executor import SANDBOX_HARNESS_DIR, SHM_MB, ProcessExecutor
from sharpe_rl.sandbox.result import ExecutionResult
from sharpe_rl.sandbox.runner import SandboxRunner
from sharpe_rl.spec import ExperimentSpec

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

LIMITS = {"timeout_seconds": 15, "memory_mb": 1024, "pids_limit": 64, "tmpfs_mb": 16, "workers": 2}


@pytest.fixture(scope="module")
def process_runner(sandbox_panel, tmp_path_factory) -> Iterator[SandboxRunner]:
    cache = tmp_path_factory.mktemp("process")
    with SandboxRunner(sandbox_panel, EvalConfig(), SandboxConfig(executor="process", **LIMITS), cache) as runner:
        yield runner


@pytest.fixture(scope="module")
def process_results(process_runner):
    specs = {
        "honest": spec("honest"),
        "infinite_loop": spec("loop", features_doing("", "while True: pass")),
        "ignore_the_alarm": spec(
            "stubborn",
            features_doing("import signal, time", "signal.signal(signal.SIGALRM, signal.SIG_IGN)\ntime.sleep(600)"),
        ),
        "memory_bomb": spec("hog", features_doing("", "hog = bytearray(4 * 1024**3)")),
        "fill_tmp": spec(
            "fill", features_doing("", 'f = open("/tmp/fill", "wb")\nfor _ in range(64): f.write(b"x" * 2**20)')
        ),
    }
    results = process_runner.run_many(list(specs.values()))
    return dict(zip(specs, results, strict=True))


def test_an_honest_experiment_runs(process_runner, process_results):
    result = process_results["honest"]
    assert result.ok and result.executor == "process", result.message
    assert (
        process_runner.predictions(result).height
        == process_runner.reward_view.test_rows(process_runner.plan.folds).height
    )


def test_time_is_limited_by_the_harness_whatever_the_experiment_does(process_results):
    for name in ("infinite_loop", "ignore_the_alarm"):
        assert process_results[name].status == "timeout", process_results[name].message
        assert "time limit of 15 s" in process_results[name].message


def test_memory_and_files_are_limited(process_results):
    assert process_results["memory_bomb"].status == "out_of_memory"
    assert process_results["fill_tmp"].status == "runtime_error"


def test_a_fork_bomb_is_contained_and_leaves_nothing_behind(sandbox_panel, tmp_path):
    before = _harnesses(), _cgroups()  # the module's runner keeps sandboxes waiting in its warm pool: not this test's
    config = SandboxConfig(executor="process", warm_pool=False, **LIMITS)
    with SandboxRunner(sandbox_panel, EvalConfig(), config, tmp_path) as runner:
        result = runner.run(spec("forks", features_doing("import os", "while True: os.fork()")))
    assert result.status in {"runtime_error", "timeout"}, result.message
    assert _strays(before[0]) == set()
    assert _cgroups() - before[1] == set()


def test_a_sandbox_from_the_warm_pool_is_alive_and_comes_at_once():
    # Started on a thread that ended at once, each pool sandbox was SIGKILLed with it (exit -9, "the
    # sandbox printed no result"), and a take waited START_WAIT_SECONDS to start one of its own.
    executor = ProcessExecutor(SandboxConfig(executor="process", **LIMITS))
    started = time.monotonic()
    sandbox = executor.pool.take()
    assert time.monotonic() - started < START_WAIT_SECONDS
    time.sleep(1.0)
    assert sandbox.process.poll() is None
    executor.pool._discard(sandbox)
    executor.close()


def test_a_python_environment_under_tmp_stays_visible(monkeypatch):
    # A checkout under /tmp (its .venv there) once failed every experiment with "bwrap: execvp
    # /tmp/.../python": the sandbox's own /tmp was mounted over the environment's bind.
    monkeypatch.setattr(sys, "prefix", "/tmp/checkout/.venv")
    monkeypatch.setattr(process_module, "_probe", lambda executor: None)  # that checkout does not exist
    command = ProcessExecutor(SandboxConfig(executor="process", warm_pool=False)).command()
    tmp = next(i for i in range(len(command) - 1) if command[i : i + 2] == ["--tmpfs", "/tmp"])
    bind = next(
        i for i in range(len(command) - 2) if command[i] == "--ro-bind" and command[i + 2] == "/tmp/checkout/.venv"
    )
    assert tmp < bind


def test_without_bubblewrap_it_refuses_to_run_and_says_what_to_install(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(InfrastructureError, match="apt-get install bubblewrap"):
        ProcessExecutor(SandboxConfig(executor="process"))


def _harnesses() -> set[str]:
    """The processes on this machine running this executor's harness (or what it forked): this Python
    on the harness's path (a Docker sandbox's harness runs the image's Python)."""
    return {pid for pid in os.listdir("/proc") if pid.isdigit() and _is_harness(pid)}


def _is_harness(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            arguments = cmdline.read().split(b"\0")
    except OSError:
        return False
    return sys.executable.encode() in arguments and f"{SANDBOX_HARNESS_DIR}/harness.py".encode() in arguments


# ---- as root (CI) and as a normal user: the sandbox as a whole is the boundary

#: Each probe sets `found` to what it managed, and the experiment raises it (see `probing`).
PROBES = {
    "sysctl": """
found = []
for root, _, files in os.walk("/proc/sys"):
    for name in files:
        try:
            os.close(os.open(os.path.join(root, name), os.O_WRONLY))  # opened for writing; nothing is written
            found.append(os.path.join(root, name))
        except OSError:
            pass
""",
    # in a child: the kernel refuses unshare(CLONE_NEWUSER) to any process with threads, whatever the sandbox
    "namespaces": """
import ctypes
read_end, write_end = os.pipe()
if os.fork() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    tries = {"user": lambda: libc.unshare(0x10000000), "mount": lambda: libc.unshare(0x00020000),
             "tmpfs": lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)}
    answers = {}
    for name, attempt in tries.items():
        answers[name] = 0 if attempt() == 0 else ctypes.get_errno()
    os.write(write_end, json.dumps(answers).encode())
    os._exit(0)
os.close(write_end)
found = json.loads(os.read(read_end, 4096))
""",
    "threads": """
import threading
stop = threading.Event()
threads = []
try:
    while len(threads) < 1500:
        thread = threading.Thread(target=stop.wait, daemon=True)
        thread.start()
        threads.append(thread)
except RuntimeError:
    pass
stop.set()
found = len(threads)
""",
    "devices": """
found = {"shm_mb": 0}
try:
    for i in range(1024):
        with open(f"/dev/shm/fill-{i}", "wb") as f:
            f.write(b"x" * 2**20)
        found["shm_mb"] += 1
except OSError:
    pass
try:
    open("/dev/planted", "wb").close()
    found["dev"] = "written"
except OSError as exc:
    found["dev"] = exc.strerror
""",
    # three processes of 600 MB each under a 1024 MB limit: together they must not fit
    "memory": """
import time
children = []
for _ in range(3):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        block = b"x" * (600 * 2**20)
        os.write(write_end, b"1")
        time.sleep(60)
        os._exit(0)
    os.close(write_end)
    children.append((pid, read_end))
for pid, read_end in children:
    os.read(read_end, 1)  # its memory is held, or it was killed
time.sleep(0.5)
found = sum(os.waitpid(pid, os.WNOHANG) == (0, 0) for pid, _ in children)
for pid, _ in children:
    os.kill(pid, 9)
""",
}


def probing(name: str, body: str) -> ExperimentSpec:
    """An experiment that runs `body` and raises a ValueError carrying its `found` (it never predicts)."""
    raising = body + 'raise ValueError("FOUND " + json.dumps(found))\n'
    return spec(name, features_doing("import json, os", raising))


def found(result: ExecutionResult):
    assert result.status == "value_error" and "FOUND " in result.message, (result.status, result.message)
    return json.loads(result.message.split("FOUND ", 1)[1])


@pytest.fixture(scope="module")
def probes(sandbox_panel, tmp_path_factory) -> dict[str, ExecutionResult]:
    """What each probe found, run with a time limit of minutes: a probe answers what the boundary allows, and on a
    busy machine (the suite beside a night) walking /proc/sys took longer than the other tests' 15 s."""
    config = SandboxConfig(executor="process", **(LIMITS | {"timeout_seconds": 180}))
    with SandboxRunner(sandbox_panel, EvalConfig(), config, tmp_path_factory.mktemp("probes")) as runner:
        return dict(zip(PROBES, runner.run_many([probing(n, b) for n, b in PROBES.items()]), strict=True))


def test_the_sandbox_never_runs_with_an_outside_uid_of_0(process_runner):
    executor = process_runner.executor
    sandbox = executor._start()  # its harness and worker start before any task
    try:
        time.sleep(1.0)
        processes = _descendants(sandbox.process.pid)
        assert len(processes) >= 3, processes  # bwrap, the harness, the worker
        assert all(_ids(pid)[0] != 0 for pid in processes), {pid: _ids(pid) for pid in processes}
        if os.geteuid() == 0:
            assert {_ids(pid) for pid in processes} == {(65534, 65534, "")}  # nobody, and no supplementary group
    finally:
        executor.pool._discard(sandbox)


def test_no_kernel_setting_opens_for_writing(probes):
    assert found(probes["sysctl"]) == []


def test_no_user_namespace_and_no_mount_inside(probes):
    answers = found(probes["namespaces"])
    assert answers["user"] in (errno.EPERM, errno.ENOSPC), answers  # refused, not EINVAL from a threaded process
    assert answers["mount"] == errno.EPERM and answers["tmpfs"] == errno.EPERM, answers


def test_no_more_threads_than_the_pids_limit(probes):
    assert 0 < found(probes["threads"]) < LIMITS["pids_limit"]


def test_dev_is_read_only_and_dev_shm_capped(probes):
    devices = found(probes["devices"])
    assert 0 < devices["shm_mb"] <= SHM_MB and devices["dev"] == "Read-only file system", devices


def test_memory_is_limited_for_the_sandbox_as_a_whole(process_runner, probes):
    if process_runner.executor.cgroups is None:
        assert os.geteuid() != 0, "as root the process executor must have a cgroup on this machine"
        pytest.skip("this normal user has no cgroup of its own here (none delegated)")
    result = probes["memory"]
    assert result.status == "out_of_memory", (result.status, result.message)
    assert "memory limit" in result.message


def test_as_root_it_refuses_to_run_when_it_cannot_drop_to_an_unprivileged_user(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(process_module.shutil, "which", lambda name: None if name == "setpriv" else f"/usr/bin/{name}")
    with pytest.raises(InfrastructureError, match="never runs generated code as root"):
        ProcessExecutor(SandboxConfig(executor="process", warm_pool=False))
    monkeypatch.setattr(process_module.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(process_module, "UNPRIVILEGED_USER", "no-such-user-here")
    with pytest.raises(InfrastructureError, match="has no such user"):
        ProcessExecutor(SandboxConfig(executor="process", warm_pool=False))


def test_it_refuses_to_run_when_the_sandbox_cannot_start(monkeypatch):
    monkeypatch.setattr(
        ProcessExecutor, "command", lambda self, program=None: ["sh", "-c", "echo no namespaces >&2; exit 1"]
    )
    with pytest.raises(InfrastructureError, match=r"could not start.*no namespaces.*Docker executor"):
        ProcessExecutor(SandboxConfig(executor="process", warm_pool=False))


def test_the_same_tests_pass_as_a_normal_user():
    require(os.geteuid() == 0, "runs as root only: it starts this module again as a normal user")
    home = home_for_normal_user()
    # the boundary's guarantees, and the earlier ones (no host file, no network, no forged result); the limits on
    # time and per-process memory are the same code as a normal user or as root
    boundary = "never_runs or kernel_setting or namespace or threads or dev_is or memory_is or fork_bomb"
    earlier = "cannot_read or no_network"
    pytest_args = ["-q", "-p", "no:cacheprovider", "--basetemp", str(home / "pytest"), "-k", f"{boundary} or {earlier}"]
    files = [
        "tests/test_sandbox_process.py",
        "tests/test_reward_integrity.py::test_the_process_executor_cannot_read_the_runs_directory",
        "tests/test_reward_integrity.py::test_the_process_executor_has_no_network_and_hides_the_harness",
    ]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "USER": "sandbox-test",
        "LOGNAME": "sandbox-test",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    paths = [Path(sys.base_prefix), Path(sys.prefix), REPO, SHARED_DATA]
    try:
        done = run_as_normal_user([sys.executable, "-m", "pytest", *pytest_args, *files], paths, env, REPO, timeout=900)
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=False)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0 and " passed" in summary, done.stdout[-4000:] + done.stderr[-2000:]
    assert "skipped" not in summary and "failed" not in summary, done.stdout[-4000:]


def _strays(before: set[str]) -> set[str]:
    """New harness processes that outlived their sandbox: no longer below this test process (a pool's waiting
    sandboxes are), still there after a few seconds (a sandbox being killed may take a moment to go)."""
    deadline = time.monotonic() + 5
    while True:
        mine = set(map(str, _descendants(os.getpid())))
        strays = {pid for pid in _harnesses() - before if pid not in mine}
        if not strays or time.monotonic() > deadline:
            return strays
        time.sleep(0.2)


def _cgroups() -> set[Path]:
    """The sandbox cgroups of this process on this machine."""
    found = hierarchy()
    if found is None:
        return set()
    return {d for parent in found.parents.values() for d in parent.glob(f"{PREFIX}-{os.getpid()}-*")}


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def _ids(pid: int) -> tuple[int, int, str]:
    """The real uid, real gid and supplementary groups of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0]), fields["Groups"].strip()
