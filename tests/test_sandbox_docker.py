"""The Docker sandbox against the real engine: isolation, limits, classification, cache.

No mocks: every attack runs in a real container of the sandbox image. Each must be contained,
classified, and leave the host and the next experiment unaffected. Attacks run in batches on two
workers (run_many), which also shows that one experiment's misbehaviour does not reach its neighbour.
"""

from __future__ import annotations

import time
from pathlib import Path

import docker
import polars as pl
import pytest
from sandbox_fixtures import HONEST_FEATURES, HONEST_MODELS, LOGISTIC, features_doing, spec

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.contract import IDLE_SECONDS
from sharpe_rl.sandbox.docker_executor import (
    CREATED_LABEL,
    EXPIRES_LABEL,
    RUN_LABEL,
    DockerExecutor,
    reap_containers,
)
from sharpe_rl.sandbox.executor import HOST_GRACE_SECONDS
from sharpe_rl.sandbox.result import ExecutionResult
from sharpe_rl.sandbox.runner import SandboxRunner
from sharpe_rl.spec import ExperimentSpec

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("sandbox_image")]

#: Small limits so that the attacks hit them fast; generous time for honest code on a busy machine.
LIMITS = {"timeout_seconds": 60, "memory_mb": 512, "pids_limit": 64, "tmpfs_mb": 16, "output_limit_kb": 1024}


def make_runner(panel: pl.DataFrame, cache_dir: Path, disguise_key: str | None = None, **limits) -> SandboxRunner:
    """A runner with no warm pool: the containers each test counts are the ones its experiments ran in (the same
    data disguise as another runner's when given its key)."""
    sandbox = SandboxConfig(**{"executor": "docker", "workers": 2, "warm_pool": False, **LIMITS, **limits})
    return SandboxRunner(panel, EvalConfig(), sandbox, cache_dir, disguise_key=disguise_key)


def run_batch(runner: SandboxRunner, specs: dict[str, ExperimentSpec]) -> dict[str, ExecutionResult]:
    return dict(zip(specs, runner.run_many(list(specs.values())), strict=True))


# ---- isolation and limits ----

FORGE = """
import base64, json, os, stat
import numpy as np


def forge(report):
    # write a result line to every pipe the process holds: one of them is the harness's stdout
    line = ("@@SHARPE_RL_RESULT@@" + json.dumps(report) + "\\n").encode()
    for fd in range(1, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, line)
        except OSError:
            pass


def forged_ok(extra=None):
    p_up = base64.b64encode(np.full(10_000, 0.987654).tobytes()).decode()
    timings = {"load": 0.0, "fit": 0.0, "predict": 0.0, "total": 0.0}
    return {"status": "ok", "error_class": None, "message": "", "traceback": "", "timings": timings,
            "peak_memory_mb": 1.0, "p_up": p_up, **(extra or {})}
"""

#: What the experiment's process tries in order to reach the data, the task or the harness's output.
#: The harness is PID 1 of the container and its parent; both must be out of reach. Its memory is
#: read at the start of its first readable mapping (/proc/<pid>/mem has nothing at offset 0: a read
#: there fails whatever the access); a descriptor is reached once it opens (a read of its stdin
#: would wait for ever).
REACH_THE_HARNESS = """
import ctypes, os
reached = [path for path in ("/data", "/task") if os.path.exists(path)]
for pid in sorted({1, os.getppid()}):
    try:
        with open(f"/proc/{pid}/maps") as maps:
            start = next(int(line.split("-")[0], 16) for line in maps if line.split()[1].startswith("r"))
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(start)
            if mem.read(1):
                reached.append(f"/proc/{pid}/mem")
    except (OSError, StopIteration):
        pass
    for name in ("environ", "maps"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                if f.read(1):
                    reached.append(f"/proc/{pid}/{name}")
        except OSError:
            pass
    for fd in (0, 1, 3):
        try:
            os.close(os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK))
            reached.append(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    # PTRACE_SEIZE: the access check of PTRACE_ATTACH, without stopping the harness (which would end
    # the run in a timeout instead of this report); the kernel detaches when this process exits
    if ctypes.CDLL(None, use_errno=True).ptrace(0x4206, pid, None, None) == 0:
        reached.append(f"ptrace {pid}")
if reached:
    raise RuntimeError("ESCAPED: " + ", ".join(reached))
"""


@pytest.fixture(scope="module")
def host_canary(tmp_path_factory) -> Path:
    canary = tmp_path_factory.mktemp("host") / "canary.txt"
    canary.write_text("a host file the sandbox must not see")
    return canary


def attack_specs(host_canary: Path) -> dict[str, tuple[ExperimentSpec, str, str]]:
    """name -> (spec, expected status, fragment of the expected message)."""
    attacks = {
        "network_connect": (
            features_doing("import socket", 'socket.create_connection(("1.1.1.1", 443), timeout=3)'),
            "runtime_error",
            "Network is unreachable",
        ),
        "network_dns": (
            features_doing("import socket", 'socket.getaddrinfo("pypi.org", 443)'),
            "runtime_error",
            "gaierror",
        ),
        "only_loopback": (
            features_doing(
                "import os", 'if sorted(os.listdir("/sys/class/net")) != ["lo"]: raise RuntimeError("ESCAPED")'
            ),
            "ok",
            "",
        ),
        "read_host_file": (features_doing("", f"open({str(host_canary)!r}).read()"), "runtime_error", "No such file"),
        "reach_the_harness": (features_doing("", REACH_THE_HARNESS), "ok", ""),
        "read_shadow": (features_doing("", 'open("/etc/shadow").read()'), "runtime_error", "Permission denied"),
        "write_harness": (
            features_doing("", 'open("/opt/harness/harness.py", "w").write("x")'),
            "runtime_error",
            "Read-only",
        ),
        "fill_tmp": (
            features_doing("", 'f = open("/tmp/fill", "wb")\nfor _ in range(64): f.write(b"x" * 2**20); f.flush()'),
            "runtime_error",
            "No space left",
        ),
        "exec_from_tmp": (
            features_doing(
                "import os, subprocess",
                'open("/tmp/run.sh", "w").write("#!/bin/sh\\necho hi\\n")\nos.chmod("/tmp/run.sh", 0o755)\n'
                'subprocess.run(["/tmp/run.sh"])',
            ),
            "runtime_error",
            "Permission denied",
        ),
        "become_root": (features_doing("import os", "os.setuid(0)"), "runtime_error", "Operation not permitted"),
        "fork_bomb": (
            features_doing("import os", "while True: os.fork()"),
            "runtime_error",
            "Resource temporarily unavailable",
        ),
        "memory_bomb": (features_doing("", "hog = bytearray(2 * 1024**3)"), "out_of_memory", "memory limit"),
        "memory_error": (features_doing("", "hog = np.ones(10**13)"), "out_of_memory", "MemoryError"),
        "stdout_flood": (
            features_doing(
                "import sys\nFLOODED = []",
                "if not FLOODED:\n"
                "    FLOODED.append(1)\n"
                '    chunk = "x" * 2**20\n'
                '    for _ in range(1024): sys.stdout.write(chunk + "\\n")',
            ),
            "ok",
            "",
        ),
        "kill_itself": (
            features_doing("import os, signal", "os.kill(os.getpid(), signal.SIGKILL)"),
            "runtime_error",
            "killed by signal 9",
        ),
        "kill_the_harness": (features_doing("import os, signal", "os.kill(1, signal.SIGKILL)"), "ok", ""),
        "exit_silently": (features_doing("import os", "os._exit(0)"), "runtime_error", "exited with code 0"),
        "sys_exit": (features_doing("import sys", "sys.exit(0)"), "runtime_error", "SystemExit"),
        "forge_a_result": (
            features_doing(FORGE, "forge(forged_ok())\nos._exit(0)"),
            "runtime_error",
            "the experiment's process",
        ),
        "forge_extra_score": (
            features_doing(FORGE, 'forge(forged_ok({"sharpe": 9.9}))\nos._exit(0)'),
            "runtime_error",
            "the experiment's process",
        ),
    }
    return {name: (spec(name, features), status, fragment) for name, (features, status, fragment) in attacks.items()}


@pytest.fixture(scope="module")
def attack_results(sandbox_panel, tmp_path_factory, host_canary):
    runner = make_runner(sandbox_panel, tmp_path_factory.mktemp("attacks"))
    specs = attack_specs(host_canary)
    results = run_batch(runner, {name: s for name, (s, _, _) in specs.items()})
    return {"runner": runner, "specs": specs, "results": results}


ATTACKS = [
    "network_connect", "network_dns", "only_loopback", "read_host_file", "reach_the_harness", "read_shadow",
    "write_harness", "fill_tmp", "exec_from_tmp", "become_root", "fork_bomb", "memory_bomb", "memory_error",
    "stdout_flood", "kill_itself", "kill_the_harness", "exit_silently", "sys_exit", "forge_a_result",
    "forge_extra_score",
]  # fmt: skip


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_is_contained_and_classified(attack_results, name):
    _, status, fragment = attack_results["specs"][name]
    result = attack_results["results"][name]
    assert "ESCAPED" not in result.message
    assert result.status == status, f"{name}: {result.status}: {result.message}\n{result.stderr_tail[-500:]}"
    assert fragment in result.message
    assert (result.predictions_path is not None) == (status == "ok")


def test_output_is_capped_on_the_host(attack_results):
    flood = attack_results["results"]["stdout_flood"]
    assert flood.ok and len(flood.stderr_tail) <= 4000


def test_the_harness_outlives_the_experiment_and_reports(attack_results):
    # the experiment's process died (killed, or by the memory limit): the harness still wrote the result
    for name in ("kill_itself", "memory_bomb", "exit_silently"):
        result = attack_results["results"][name]
        assert result.exit_code == 0 and set(result.timings) == {"load", "fit", "predict", "total", "wall"}, name


def test_forged_reports_never_reach_the_host(attack_results):
    for name in ("forge_a_result", "forge_extra_score"):
        result = attack_results["results"][name]
        assert not result.ok and result.peak_memory_mb != 1.0
        assert set(result.timings) == {"load", "fit", "predict", "total", "wall"}


# ---- time limits ----


@pytest.fixture(scope="module")
def timeout_results(sandbox_panel, tmp_path_factory):
    runner = make_runner(sandbox_panel, tmp_path_factory.mktemp("timeouts"), timeout_seconds=3)
    specs = {
        "infinite_loop": spec("loop", features_doing("", "while True: pass")),
        "sleep": spec("sleep", features_doing("import time", "time.sleep(600)")),
        "ignore_the_alarm": spec(
            "stubborn",
            features_doing("import signal, time", "signal.signal(signal.SIGALRM, signal.SIG_IGN)\ntime.sleep(600)"),
        ),
        "stop_the_harness": spec(
            "stop", features_doing("import os, signal, time", "os.kill(1, signal.SIGSTOP)\ntime.sleep(600)")
        ),
        "swallow_the_alarm": spec(
            "swallow",
            features_doing(
                "import time", "while True:\n    try:\n        time.sleep(600)\n    except Exception:\n        pass"
            ),
        ),
    }
    started = time.perf_counter()
    results = run_batch(runner, specs)
    return results, time.perf_counter() - started


def test_the_harness_stops_code_at_the_time_limit(timeout_results):
    # the alarm is the trusted harness's, in another process: the experiment cannot ignore, swallow or stop it
    results, elapsed = timeout_results
    for name in ("infinite_loop", "sleep", "ignore_the_alarm", "swallow_the_alarm", "stop_the_harness"):
        assert results[name].status == "timeout", name
        assert "time limit of 3 s" in results[name].message, results[name].message
        assert results[name].exit_code == 0
    assert elapsed < 30


# ---- every family runs ----


@pytest.fixture(scope="module")
def honest_results(sandbox_panel, tmp_path_factory):
    runner = make_runner(sandbox_panel, tmp_path_factory.mktemp("honest"))
    specs = {family: spec(family, HONEST_FEATURES, model) for family, model in HONEST_MODELS.items()}
    return runner, run_batch(runner, specs)


@pytest.mark.parametrize("family", list(HONEST_MODELS))
def test_honest_models_of_every_family_run(honest_results, family):
    runner, results = honest_results
    result = results[family]
    assert result.ok, f"{result.status}: {result.message}\n{result.traceback}"
    predictions = runner.predictions(result)
    expected = runner.reward_view.test_rows(runner.plan.folds).sort("fold", "timestamp", "symbol")
    assert predictions.select("timestamp", "symbol", "fold").equals(expected)
    p_up = predictions.get_column("p_up").drop_nans()
    assert p_up.len() > 0.9 * predictions.height and p_up.min() >= 0 and p_up.max() <= 1


# ---- the error taxonomy at run time (the static checks are bypassed here on purpose) ----

TAXONOMY = {
    "missing_column": (features_doing("", 'df["vwap"]'), LOGISTIC, "KeyError: 'vwap'"),
    "type_error": (features_doing("", 'df["close"].rolling(10, min_period=1).mean()'), LOGISTIC, "min_period"),
    "value_error": (
        HONEST_FEATURES,
        "from sklearn.linear_model import LogisticRegression\ndef make_model():\n    return LogisticRegression(C=-1.0)",
        "'C' parameter",
    ),
    "runtime_error": (features_doing("", "1 / 0"), LOGISTIC, "ZeroDivisionError"),
    "syntax": ("def make_features(df) return df", LOGISTIC, "SyntaxError"),
    "forbidden_import": (features_doing("import definitely_not_installed"), LOGISTIC, "definitely_not_installed"),
    "bad_interface/no_predict_proba": (
        HONEST_FEATURES,
        "from sklearn.linear_model import LinearRegression\ndef make_model():\n    return LinearRegression()",
        "without predict_proba",
    ),
    "bad_interface/no_make_model": (HONEST_FEATURES, "def make_modle():\n    return None", "make_model"),
    "bad_interface/features_not_a_frame": ("def make_features(df):\n    return df.values", LOGISTIC, "DataFrame"),
    "bad_predictions/all_nan": (HONEST_FEATURES, "PREDICT = 'np.full((len(X), 2), np.nan)'", "every prediction is NaN"),
    "bad_predictions/out_of_range": (HONEST_FEATURES, "PREDICT = 'np.full((len(X), 2), 2.0)'", "[0, 1]"),
    "bad_predictions/wrong_shape": (HONEST_FEATURES, "PREDICT = 'np.full(len(X), 0.5)'", "shape"),
    "bad_predictions/constant": (
        HONEST_FEATURES,
        "from sklearn.dummy import DummyClassifier\ndef make_model():\n    return DummyClassifier(strategy='prior')",
        "constant",
    ),
}
FIXED_OUTPUT_MODEL = """
import numpy as np

class Fixed:
    def fit(self, X, y):
        return self

    def predict_proba(self, X):
        return eval(PREDICT)

def make_model():
    return Fixed()
"""


@pytest.fixture(scope="module")
def taxonomy_results(sandbox_panel, tmp_path_factory):
    runner = make_runner(sandbox_panel, tmp_path_factory.mktemp("taxonomy"))
    specs = {}
    for name, (features, model, _) in TAXONOMY.items():
        source = model + "\n" + FIXED_OUTPUT_MODEL if model.startswith("PREDICT") else model
        specs[name] = spec(name, features, source)
    return run_batch(runner, specs)


@pytest.mark.parametrize("name", list(TAXONOMY))
def test_runtime_failures_get_their_error_class(taxonomy_results, name):
    result = taxonomy_results[name]
    expected = name.split("/")[0]
    assert result.status == expected == result.error_class, f"{result.status}: {result.message}"
    assert TAXONOMY[name][2] in result.message + result.traceback
    assert result.predictions_path is None


def test_a_traceback_shows_the_generated_line(taxonomy_results):
    assert 'File "<features>"' in taxonomy_results["missing_column"].traceback
    assert 'df["vwap"]' in taxonomy_results["missing_column"].traceback


# ---- the host and the next experiment, after all of the above ----


def test_host_and_next_experiment_are_unaffected(attack_results, timeout_results, honest_results, taxonomy_results):
    runner = attack_results["runner"]
    assert runner.run(spec("next", HONEST_FEATURES, LOGISTIC + "\n# next")).ok
    assert _containers_of(docker.from_env(), runner.run_id) == []


# ---- parallel, determinism, cache, holdout, reaper, infrastructure faults ----

SAME_TWICE = {family: spec(family, HONEST_FEATURES, HONEST_MODELS[family]) for family in ("lightgbm", "torch_mlp")}
SAME_TWICE["logistic"] = spec("logistic")


def test_parallel_runs_equal_serial_runs_bit_for_bit(sandbox_panel, tmp_path):
    serial = make_runner(sandbox_panel, tmp_path / "serial", workers=1)
    parallel = make_runner(sandbox_panel, tmp_path / "parallel", workers=2, disguise_key=serial.disguise_key)
    one_by_one = [serial.run(s) for s in SAME_TWICE.values()]
    done: list[int] = []
    together = parallel.run_many(list(SAME_TWICE.values()), on_done=lambda index, result: done.append(index))
    assert sorted(done) == [0, 1, 2]
    for a, b in zip(one_by_one, together, strict=True):
        assert a.ok and b.ok and not a.cached and not b.cached
        assert serial.predictions(a).equals(parallel.predictions(b))


def _containers_created(client: docker.DockerClient, run_id: str, since: float) -> int:
    events = client.events(
        since=since,
        until=time.time() + 1,
        filters={"type": "container", "event": "create", "label": f"{RUN_LABEL}={run_id}"},
        decode=True,
    )
    return sum(1 for _ in events)


def test_an_identical_experiment_never_runs_twice(sandbox_panel, tmp_path):
    client = docker.from_env()
    runner = make_runner(sandbox_panel, tmp_path)
    started = time.time() - 1
    first = runner.run(spec("first"))
    assert first.ok and not first.cached
    assert _containers_created(client, runner.run_id, started) == 1

    again = time.time()
    renamed = runner.run(spec("same code, another name"))
    other_process = make_runner(sandbox_panel, tmp_path)  # a fresh runner reads the same cache
    from_disk = other_process.run(spec("first"))
    assert renamed.cached and from_disk.cached
    assert renamed.cache_key == from_disk.cache_key == first.cache_key
    assert other_process.cached(first.cache_key).cached and other_process.cached("0" * 24) is None
    assert runner.predictions(from_disk).equals(runner.predictions(first))
    assert _containers_created(client, runner.run_id, again) == 0
    assert _containers_created(client, other_process.run_id, again) == 0

    changed = runner.run(spec("changed", HONEST_FEATURES, LOGISTIC.replace("500", "400")))
    assert not changed.cached and changed.cache_key != first.cache_key


def _containers_of(client: docker.DockerClient, run_id: str) -> list[dict]:
    return client.api.containers(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})


def _wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting: {condition.__code__.co_firstlineno}"
        time.sleep(0.2)


def test_warm_containers_wait_ahead_run_one_task_each_and_are_removed_on_close(sandbox_panel, tmp_path):
    client = docker.from_env()
    sandbox = SandboxConfig(**{**LIMITS, "executor": "docker", "workers": 2, "warm_pool": True})
    started = time.time() - 1
    with SandboxRunner(sandbox_panel, EvalConfig(), sandbox, tmp_path) as runner:
        assert _containers_of(client, runner.run_id) == []  # nothing starts before a task needs it
        results = [runner.run(spec(f"warm {i}", HONEST_FEATURES, LOGISTIC + f"\n# {i}")) for i in range(3)]
        assert all(result.ok for result in results), [result.message for result in results]
        _wait_for(lambda: len(_containers_of(client, runner.run_id)) == 2)  # 2 wait, the used ones are removed
    _wait_for(lambda: _containers_of(client, runner.run_id) == [])
    created = _containers_created(client, runner.run_id, started)
    assert created == 5  # 3 for the first task (1 + the pool of 2), one new for each later one: none ran twice


def test_the_holdout_run_predicts_only_the_holdout(sandbox_panel, tmp_path):
    runner = make_runner(sandbox_panel, tmp_path)
    result = runner.run_holdout(spec("holdout"))
    assert result.ok, result.message
    times = runner.predictions(result).get_column("timestamp")
    assert times.min() == runner.plan.holdout_start and times.max() == runner.plan.holdout_end
    assert runner.reward_view.panel.get_column("timestamp").max() == runner.plan.reward_end < runner.plan.holdout_start
    assert result.data_hash != runner.reward_view.data_hash


def test_the_reaper_removes_containers_a_crashed_run_left(sandbox_image):
    client = docker.from_env()
    run_id = f"crashed-{time.time_ns()}"
    hour_ago = str(int(time.time()) - 3600)
    for created in (hour_ago, str(int(time.time()))):
        client.containers.run(
            sandbox_image,
            entrypoint=["sleep", "600"],
            detach=True,
            network_mode="none",
            labels={RUN_LABEL: run_id, CREATED_LABEL: created},
        )
    assert reap_containers(client, run_id=run_id, older_than=1800) == 1
    assert len(client.api.containers(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})) == 1
    assert reap_containers(client, run_id=run_id) == 1
    assert client.api.containers(all=True, filters={"label": f"{RUN_LABEL}={run_id}"}) == []


def test_a_new_executor_removes_the_expired_containers_a_killed_process_left(sandbox_image):
    client = docker.from_env()
    run_id = f"killed-{time.time_ns()}"

    def container(expires: float) -> str:
        return client.containers.run(
            sandbox_image,
            entrypoint=["sleep", "600"],
            detach=True,
            network_mode="none",
            labels={RUN_LABEL: run_id, CREATED_LABEL: str(int(time.time())), EXPIRES_LABEL: str(int(expires))},
        ).id

    expired, running = container(time.time() - 3600), container(time.time() + 3600)
    try:
        DockerExecutor(SandboxConfig(image=sandbox_image, warm_pool=False), run_id="another-run")
        left = {c["Id"] for c in client.api.containers(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})}
        assert left == {running}  # the one past its expiry is gone; one still within it is never touched
        assert expired not in left
    finally:
        reap_containers(client, run_id=run_id)


def test_every_sandbox_container_carries_an_expiry_past_its_idle_wait_and_time_limit(sandbox_image):
    config = SandboxConfig(image=sandbox_image, warm_pool=False, timeout_seconds=30)
    executor = DockerExecutor(config, run_id=f"expiry-{time.time_ns()}")
    before = time.time()
    container = executor._start()
    try:
        expires = float(container.labels[EXPIRES_LABEL])
        assert before + IDLE_SECONDS + 30 <= expires <= time.time() + IDLE_SECONDS + 30 + HOST_GRACE_SECONDS + 1
    finally:
        container.remove(force=True)


def test_a_missing_image_is_an_infrastructure_error_that_says_what_to_do(sandbox_panel, tmp_path):
    with pytest.raises(InfrastructureError, match="make image"):
        SandboxRunner(sandbox_panel, EvalConfig(), SandboxConfig(image="sharpe-rl-sandbox:missing"), tmp_path)
