"""The process executor (no Docker engine): it warns that it is no boundary, and still contains
runaway time, memory and processes, and (where namespaces are permitted) the network."""

from __future__ import annotations

import os

import pytest
from sandbox_fixtures import features_doing, spec

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.sandbox.process_executor import NOT_A_BOUNDARY, ProcessExecutor
from sharpe_rl.sandbox.runner import SandboxRunner

LIMITS = {"timeout_seconds": 3, "memory_mb": 1024, "pids_limit": 64, "tmpfs_mb": 16, "workers": 2}


@pytest.fixture(scope="module")
def process_runner(sandbox_panel, tmp_path_factory) -> SandboxRunner:
    with pytest.warns(RuntimeWarning, match="NOT a security boundary"):
        return SandboxRunner(
            sandbox_panel,
            EvalConfig(lookahead_check=False),
            SandboxConfig(executor="process", **LIMITS),
            tmp_path_factory.mktemp("process"),
        )


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
        "fork_bomb": spec("forks", features_doing("import os", "while True: os.fork()")),
        "network": spec(
            "net", features_doing("import socket", 'socket.create_connection(("1.1.1.1", 443), timeout=3)')
        ),
    }
    results = process_runner.run_many(list(specs.values()))
    return dict(zip(specs, results, strict=True))


def test_it_warns_that_it_is_not_a_boundary(caplog):
    with pytest.warns(RuntimeWarning, match="NOT a security boundary"):
        ProcessExecutor(SandboxConfig(executor="process"))
    assert NOT_A_BOUNDARY in caplog.text


def test_an_honest_experiment_runs(process_runner, process_results):
    result = process_results["honest"]
    assert result.ok and result.executor == "process", result.message
    assert (
        process_runner.predictions(result).height
        == process_runner.reward_view.test_rows(process_runner.plan.folds).height
    )


def test_time_is_limited(process_results):
    assert process_results["infinite_loop"].status == "timeout"
    stubborn = process_results["ignore_the_alarm"]
    assert stubborn.status == "timeout" and stubborn.exit_code is None  # killed by the host


def test_memory_is_limited(process_results):
    assert process_results["memory_bomb"].status == "out_of_memory"


def test_a_fork_bomb_is_contained_and_leaves_nothing_behind(process_results):
    result = process_results["fork_bomb"]
    assert result.status in {"runtime_error", "timeout"}, result.message
    leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit() and _is_harness(pid)]
    assert leftovers == []


def test_the_network_is_cut_where_namespaces_are_permitted(process_runner, process_results):
    if not process_runner.executor.isolation:
        pytest.skip("no network namespace on this system")
    assert "Network is unreachable" in process_results["network"].message


def _is_harness(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"sharpe-rl-process-" in cmdline.read()
    except OSError:
        return False
