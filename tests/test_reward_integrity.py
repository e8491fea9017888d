"""Reward integrity: experiments written to earn a reward they do not deserve, run for real.

One section per class of attack found against the earlier sandbox (the reward-integrity issue,
classes 1 to 7), each written from its description. Where an attack reads the future, the same
spec is first run through the earlier, vectorised evaluation (tests/vectorised_reference.py) to
show that the leak was real there (net Sharpe far above anything honest); in the sandbox it must
end in a failure status or a net Sharpe in the range of honest models. Honest code must still run,
and for causal code the point-in-time predictions must equal the vectorised ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sandbox_fixtures import HONEST_FEATURES, HONEST_MODELS, spec
from vectorised_reference import vectorised_predictions

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.data.panel import detect_interval
from sharpe_rl.data.splits import reward_panel
from sharpe_rl.sandbox.result import ExecutionResult
from sharpe_rl.sandbox.runner import SandboxRunner
from sharpe_rl.scoring import score_predictions

pytestmark = pytest.mark.docker

#: No honest model comes near this net Sharpe on these panels; every leak below earned far more.
HONEST_SHARPE_CEILING = 3.0
LIMITS = {"timeout_seconds": 120, "memory_mb": 1024, "workers": 2}
TIMINGS = {"load", "fit", "predict", "total", "wall"}

# ---- class 1: a sub-tolerance leak (a feature reads the next bar; probabilities squeezed to 0.5 ± 1e-7)

NEXT_RETURN_FEATURES = """
import pandas as pd


def make_features(df):
    out = pd.DataFrame(index=df.index)
    out["next_ret"] = df["close"].pct_change().shift(-1).fillna(0.0)
    out["ret_1"] = df["close"].pct_change().fillna(0.0)
    return out
"""
SQUEEZED_MODEL = """
import numpy as np


class Squeezed:
    def fit(self, X, y):
        return self

    def predict_proba(self, X):
        p = 0.5 + 1e-7 * np.tanh(10 * X[:, 0]) + 1e-9 * np.tanh(X[:, 1])
        return np.column_stack([1 - p, p])


def make_model():
    return Squeezed()
"""

# ---- class 2: transductive prediction (predict_proba reads row t + 1 of the test window to predict row t)

RETURN_FEATURES = """
import pandas as pd


def make_features(df):
    out = pd.DataFrame(index=df.index)
    out["ret_1"] = df["close"].pct_change().fillna(0.0)
    return out
"""
PEEK_AHEAD_MODEL = """
import numpy as np


class PeekAhead:
    def fit(self, X, y):
        return self

    def predict_proba(self, X):
        following = np.append(X[1:, 0], 0.0)
        p = 0.5 + 1e-7 * np.tanh(10 * following) + 1e-9 * np.tanh(X[:, 0])
        return np.column_stack([1 - p, p])


def make_model():
    return PeekAhead()
"""

# ---- class 3: detecting the guard (read the fold boundaries, or count the folds) and leaking elsewhere

TASK_FILE_FEATURES = """
import json
import pandas as pd

try:
    LAST_TEST_START = json.load(open("/task/task.json"))["folds"][-1]["test_start"]
except OSError:
    LAST_TEST_START = None


def make_features(df):
    out = pd.DataFrame(index=df.index)
    leak = df["close"].pct_change().shift(-1).fillna(0.0)
    if LAST_TEST_START is not None:
        leak[df.index.asi8 >= LAST_TEST_START] = 0.0
    out["next_ret"] = leak
    out["ret_1"] = df["close"].pct_change().fillna(0.0)
    return out
"""
FOLD_COUNTING_MODEL = SQUEEZED_MODEL.replace(
    "def make_model():\n    return Squeezed()",
    "MODELS_MADE = [0]\n\n\ndef make_model():\n    MODELS_MADE[0] += 1\n    return Squeezed()",
).replace("1e-7 * np.tanh", "1e-7 * (MODELS_MADE[0] < 4) * np.tanh")

LEAKS = {
    "sub_tolerance": spec("sub_tolerance", NEXT_RETURN_FEATURES, SQUEEZED_MODEL),
    "transductive": spec("transductive", RETURN_FEATURES, PEEK_AHEAD_MODEL),
    "reads_the_task_file": spec("task_file", TASK_FILE_FEATURES, SQUEEZED_MODEL),
    "counts_the_folds": spec("counting", NEXT_RETURN_FEATURES, FOLD_COUNTING_MODEL),
}


def sharpe(predictions: pl.DataFrame, scored: pl.DataFrame, cfg: EvalConfig) -> float:
    metrics = score_predictions(predictions, scored, cfg, bar_interval=detect_interval(scored))
    return metrics.sharpe_net if metrics.valid else float("nan")


def sandbox_sharpe(runner: SandboxRunner, result: ExecutionResult, scored: pl.DataFrame) -> float | None:
    """The net Sharpe the host gives this result, None when the experiment failed (no reward to buy)."""
    if not result.ok:
        return None
    value = sharpe(runner.predictions(result), scored, runner.eval_cfg)
    return None if np.isnan(value) else value


@pytest.fixture(scope="module")
def runner(sandbox_panel, sandbox_image, tmp_path_factory) -> Iterator[SandboxRunner]:
    cache = tmp_path_factory.mktemp("cache")
    with SandboxRunner(sandbox_panel, EvalConfig(), SandboxConfig(executor="docker", **LIMITS), cache) as runner:
        yield runner


@pytest.fixture(scope="module")
def leak_results(runner):
    return dict(zip(LEAKS, runner.run_many(list(LEAKS.values())), strict=True))


@pytest.mark.parametrize("name", list(LEAKS))
def test_the_leak_paid_in_the_vectorised_evaluation(runner, sandbox_panel, name):
    predictions = vectorised_predictions(LEAKS[name], runner.reward_view, runner.plan.folds, runner.eval_cfg.horizon)
    assert sharpe(predictions, reward_panel(sandbox_panel, runner.plan), runner.eval_cfg) > HONEST_SHARPE_CEILING


@pytest.mark.parametrize("name", list(LEAKS))
def test_the_leak_earns_nothing_in_the_sandbox(runner, leak_results, sandbox_panel, name):
    result = leak_results[name]
    value = sandbox_sharpe(runner, result, reward_panel(sandbox_panel, runner.plan))
    assert value is None or value < HONEST_SHARPE_CEILING, f"{name}: net Sharpe {value} ({result.status})"


# ---- class 4: the holdout runs under the same protocol, so it exposes a leak instead of confirming it


@pytest.mark.parametrize("name", ["sub_tolerance", "transductive"])
def test_the_holdout_is_point_in_time_too(runner, sandbox_panel, name):
    holdout = sandbox_panel.filter(pl.col("timestamp") >= runner.plan.holdout_start)
    assert runner.plan.holdout_fold is not None
    leaked = vectorised_predictions(
        LEAKS[name], runner.holdout_view, [runner.plan.holdout_fold], runner.eval_cfg.horizon
    )
    assert sharpe(leaked, holdout, runner.eval_cfg) > HONEST_SHARPE_CEILING

    result = runner.run_holdout(LEAKS[name])
    value = sandbox_sharpe(runner, result, holdout)
    assert value is None or value < HONEST_SHARPE_CEILING, f"{name}: holdout net Sharpe {value}"


# ---- class 5: the result wire (the experiment shares no process, and no output, with what reports)

TAMPER_WITH_TIMINGS = """
import gc, sys
import pandas as pd


def flood(mapping):
    for i in range(1200):
        mapping[f"stolen key {i}/with slashes"] = float(i)


def make_features(df):
    frame = sys._getframe()
    while frame is not None:
        for name, value in list(frame.f_locals.items()):
            if name == "timings" and isinstance(value, dict):
                flood(value)
        frame = frame.f_back
    for thing in gc.get_objects():
        if isinstance(thing, dict) and {"fit", "predict", "total"} <= set(thing):
            flood(thing)
    out = pd.DataFrame(index=df.index)
    out["ret_1"] = df["close"].pct_change()
    return out
"""
FORGE_AND_EXIT = """
import json, os
import pandas as pd

FORGED = {"status": "ok", "error_class": None, "message": "", "traceback": "",
          "timings": {"load": 0.0, "fit": 0.0, "predict": 0.0, "total": 0.0, "forged": 1.0},
          "peak_memory_mb": 12345.0, "p_up": None}


def make_features(df):
    line = ("@@SHARPE_RL_RESULT@@" + json.dumps(FORGED) + "\\n").encode()
    for fd in range(1, 64):
        try:
            os.write(fd, line)
        except OSError:
            pass
    for path in ("/proc/1/fd/1", f"/proc/{os.getppid()}/fd/1", "/dev/stdout"):
        try:
            with open(path, "wb") as f:
                f.write(line)
        except OSError:
            pass
    os._exit(0)
"""
WIRE = {
    "tamper_with_timings": spec("tamper", TAMPER_WITH_TIMINGS),
    "forge_and_exit": spec("forge", FORGE_AND_EXIT),
}


@pytest.fixture(scope="module")
def wire_results(runner):
    return dict(zip(WIRE, runner.run_many(list(WIRE.values())), strict=True))


def test_nothing_the_experiment_does_adds_a_timing_or_a_key(wire_results):
    for name, result in wire_results.items():
        assert set(result.timings) == TIMINGS, name
        assert "stolen" not in json.dumps(result.model_dump(mode="json")), name
    assert wire_results["tamper_with_timings"].ok, wire_results["tamper_with_timings"].message


def test_a_forged_result_line_is_never_read(wire_results):
    result = wire_results["forge_and_exit"]
    assert result.status == "runtime_error" and "the experiment's process" in result.message
    assert result.peak_memory_mb != 12345.0 and "forged" not in result.timings


# ---- class 6: the process executor is a bubblewrap sandbox: the host's runs directory and network are out of reach


@pytest.fixture(scope="module")
def process_runner(sandbox_panel, tmp_path_factory) -> Iterator[SandboxRunner]:
    cache = tmp_path_factory.mktemp("runs") / "cache"
    with SandboxRunner(sandbox_panel, EvalConfig(), SandboxConfig(executor="process", **LIMITS), cache) as runner:
        yield runner


def doing_first(statement: str, prelude: str = "") -> str:
    """Honest features that run `statement` first (and `prelude` at module level)."""
    return prelude + HONEST_FEATURES.replace("def make_features(df):\n", f"def make_features(df):\n    {statement}\n")


def test_the_process_executor_cannot_read_the_runs_directory(process_runner):
    first = process_runner.run(spec("honest"))
    assert first.ok, first.message
    answer_key = process_runner.cache_dir / "results" / f"{first.cache_key}.json"
    planted = process_runner.cache_dir.parent / "planted.txt"
    planted.write_text("a file under runs/ the sandbox must not see")
    for path in (answer_key, planted, Path.home() / ".bashrc", Path(os.getcwd()) / "pyproject.toml"):
        result = process_runner.run(spec(f"read {path.name}", doing_first(f"open({str(path)!r}).read()")))
        assert result.status == "runtime_error" and "No such file" in result.message, f"{path}: {result.message}"


def test_the_process_executor_has_no_network_and_hides_the_harness(process_runner):
    connect = 'socket.create_connection(("1.1.1.1", 443), timeout=3)'
    result = process_runner.run(spec("net", doing_first(connect, "import socket\n")))
    assert result.status == "runtime_error" and "Network is unreachable" in result.message, result.message
    for name, result in zip(WIRE, process_runner.run_many(list(WIRE.values())), strict=True):
        assert set(result.timings) == TIMINGS, name
    assert process_runner.run_many([LEAKS["sub_tolerance"]])[0].status in ("ok", "bad_predictions")


# ---- class 7: diagnostics survive however large the result is (21 symbols)

PRINTING_MODEL = HONEST_MODELS["logistic"].replace(
    "def make_model():\n    return LogisticRegression(max_iter=500)",
    "class Loud(LogisticRegression):\n"
    "    def predict_proba(self, X):\n"
    "        print('DIAGNOSTIC-MARKER', flush=True)\n"
    "        return super().predict_proba(X)\n\n\n"
    "def make_model():\n    return Loud(max_iter=500)",
)
FAILING_MODEL = PRINTING_MODEL.replace("return super().predict_proba(X)", "raise ValueError('late failure')")


def test_stderr_survives_a_large_result(shared_daily_panel, sandbox_image, tmp_path):
    panel = shared_daily_panel.filter(pl.col("timestamp").dt.year() == 2023)
    assert panel.get_column("symbol").n_unique() == 21
    with SandboxRunner(panel, EvalConfig(), SandboxConfig(executor="docker", **LIMITS), tmp_path) as runner:
        ok, failed = runner.run_many(
            [spec("loud", HONEST_FEATURES, PRINTING_MODEL), spec("loud failure", HONEST_FEATURES, FAILING_MODEL)]
        )
    assert ok.ok and runner.predictions(ok).height > 2000, ok.message
    assert "DIAGNOSTIC-MARKER" in ok.stderr_tail
    assert failed.status == "value_error" and "DIAGNOSTIC-MARKER" in failed.stderr_tail


# ---- honest code: every family runs, and causal code predicts exactly what the vectorised evaluation did

EQUIVALENCE_FAMILIES = ["logistic", "random_forest", "hist_gradient_boosting", "lightgbm", "xgboost", "torch_mlp"]


@pytest.fixture(scope="module")
def four_hour_runner(shared_4h_panel, sandbox_image, tmp_path_factory) -> Iterator[SandboxRunner]:
    symbols = ["BTCUSDT", "ETHUSDT", "XRPUSDT", "LTCUSDT"]
    panel = shared_4h_panel.filter(pl.col("symbol").is_in(symbols))
    panel = panel.filter(pl.col("timestamp") > pl.col("timestamp").max() - pl.duration(days=150))
    cache = tmp_path_factory.mktemp("4h")
    with SandboxRunner(panel, EvalConfig(), SandboxConfig(executor="docker", **LIMITS), cache) as runner:
        yield runner


@pytest.fixture(scope="module")
def four_hour_results(four_hour_runner):
    specs = [spec(family, HONEST_FEATURES, HONEST_MODELS[family]) for family in EQUIVALENCE_FAMILIES]
    return dict(zip(EQUIVALENCE_FAMILIES, four_hour_runner.run_many(specs), strict=True))


@pytest.mark.parametrize("family", EQUIVALENCE_FAMILIES)
def test_point_in_time_predictions_equal_the_vectorised_ones_for_causal_code(
    four_hour_runner, four_hour_results, family
):
    runner = four_hour_runner
    result = four_hour_results[family]
    assert result.ok, f"{result.status}: {result.message}\n{result.traceback}"
    point_in_time = runner.predictions(result)
    vectorised = vectorised_predictions(
        spec(family, HONEST_FEATURES, HONEST_MODELS[family]), runner.reward_view, runner.plan.folds, 1
    )
    assert point_in_time.select("timestamp", "symbol", "fold").equals(vectorised.select("timestamp", "symbol", "fold"))
    # float32 networks may differ in the last bit between a batch of rows and the rows of one time
    tolerance = 1e-6 if family == "torch_mlp" else 1e-12
    np.testing.assert_allclose(
        point_in_time.get_column("p_up").to_numpy(), vectorised.get_column("p_up").to_numpy(), rtol=0, atol=tolerance
    )
