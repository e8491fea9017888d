"""The process executor (no Docker engine): the harness under bubblewrap, with its limits.

What it hides from the experiment (the runs directory, the network, the harness) is shown in
tests/test_reward_integrity.py with the attacks that tried; here: time, memory, processes, and a
clear error where bubblewrap is missing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest
from sandbox_fixtures import features_doing, spec

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.executor import START_WAIT_SECONDS
from sharpe_rl.sandbox.process_executor import SANDBOX_HARNESS_DIR, ProcessExecutor
from sharpe_rl.sandbox.runner import SandboxRunner

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
    before = _harnesses()  # the module's runner keeps sandboxes waiting in its warm pool: not this test's
    config = SandboxConfig(executor="process", warm_pool=False, **LIMITS)
    with SandboxRunner(sandbox_panel, EvalConfig(), config, tmp_path) as runner:
        result = runner.run(spec("forks", features_doing("import os", "while True: os.fork()")))
    assert result.status in {"runtime_error", "timeout"}, result.message
    assert _harnesses() - before == set()


def test_a_sandbox_from_the_warm_pool_is_alive_and_comes_at_once():
    # Started on a thread that ended at once, each pool sandbox was SIGKILLed with it (exit -9, "the
    # sandbox printed no result"), and a take waited START_WAIT_SECONDS to start one of its own.
    executor = ProcessExecutor(SandboxConfig(executor="process", **LIMITS))
    started = time.monotonic()
    sandbox = executor.pool.take()
    assert time.monotonic() - started < START_WAIT_SECONDS
    time.sleep(1.0)
    assert sandbox.poll() is None
    sandbox.kill()
    sandbox.wait()
    executor.close()


def test_a_python_environment_under_tmp_stays_visible(monkeypatch):
    # A checkout under /tmp (its .venv there) once failed every experiment with "bwrap: execvp
    # /tmp/.../python": the sandbox's own /tmp was mounted over the environment's bind.
    monkeypatch.setattr(sys, "prefix", "/tmp/checkout/.venv")
    command = ProcessExecutor(SandboxConfig(executor="process", warm_pool=False)).command()
    tmpfs = command.index("--tmpfs")
    bind = next(i for i in range(len(command) - 1) if command[i : i + 2] == ["--ro-bind", "/tmp/checkout/.venv"])
    assert tmpfs < bind


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
