"""Reward integrity: experiments written to earn a reward they do not deserve, run for real.

One section per class of attack found against the earlier sandbox (the reward-integrity issue,
classes 1 to 7), each written from its description. Where an attack reads the future, the same
spec is first run through the earlier, vectorised evaluation (tests/vectorised_reference.py) to
show that the leak was real there (net Sharpe far above anything honest); in the sandbox it must
run, and predict exactly what its leaked input is under the point-in-time protocol, where it
carries no future (a failure for any other reason would prove nothing). Honest code must still
run, and for causal code the point-in-time predictions must equal the vectorised ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sandbox_fixtures import HONEST_FEATURES, HONEST_MODELS, spec
from vectorised_reference import vectorised_predictions

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.data.panel import detect_interval
from sharpe_rl.data.splits import Fold, reward_panel
from sharpe_rl.sandbox.disguise import Disguise
from sharpe_rl.sandbox.result import ExecutionResult
from sharpe_rl.sandbox.runner import Job, SandboxRunner
from sharpe_rl.sandbox.views import DataView
from sharpe_rl.scoring import Metrics, score_predictions

pytestmark = pytest.mark.docker

#: No honest model comes near this net Sharpe on these panels; every leak below earned far more.
HONEST_SHARPE_CEILING = 3.0
LIMITS = {"timeout_seconds": 120, "memory_mb": 1024, "workers": 2}
TIMINGS = {"load", "fit", "predict", "total", "wall"}

# ---- class 1: a sub-tolerance leak (a feature reads the next bar; probabilities squeezed to 0.5 ± 1e-7)

NEXT_RETURN_FEATURES = """
import pandas as pd


def make_features(df):
    ret = df.groupby(level="symbol")["close"].pct_change()
    out = pd.DataFrame(index=df.index)
    out["next_ret"] = ret.groupby(level="symbol").shift(-1).fillna(0.0)
    out["ret_1"] = ret.fillna(0.0)
    return out
"""
#: What NEXT_RETURN_FEATURES is at a time t when the bars end at t: shift(-1) has nothing to read
#: at the latest bar and fillna makes it 0.0.
NEXT_RETURN_STAND_IN = """
import pandas as pd


def make_features(df):
    out = pd.DataFrame(index=df.index)
    out["next_ret"] = 0.0
    out["ret_1"] = df.groupby(level="symbol")["close"].pct_change().fillna(0.0)
    return out
"""
#: Ignores what it is fitted on: its answer at t depends on the features at t alone.
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
    out["ret_1"] = df.groupby(level="symbol")["close"].pct_change().fillna(0.0)
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

LEAKS = {
    "sub_tolerance": spec("sub_tolerance", NEXT_RETURN_FEATURES, SQUEEZED_MODEL),
    "transductive": spec("transductive", RETURN_FEATURES, PEEK_AHEAD_MODEL),
}
#: What each leak amounts to when the bars end at t, as they do in the sandbox: its predictions there
#: must be exactly this code's, predicting the rows of each time in a call of their own, in the
#: order of the task's disguised symbol codes.
POINT_IN_TIME_EQUIVALENT = {
    # shift(-1) has nothing to read at the latest bar and fillna makes next_ret 0.0 (Squeezed ignores
    # its training rows, where next_ret is a past bar's return, legitimately)
    "sub_tolerance": spec("sub_tolerance, causal", NEXT_RETURN_STAND_IN, SQUEEZED_MODEL),
    # X holds the rows of time t only, in the task's secret order: "row t + 1" is another symbol's row at t
    "transductive": LEAKS["transductive"],
}

# Class 3 (code that recognised the truncation guard by the task file or by counting folds, and
# leaked elsewhere) attacked a guard that is gone (docs/reward-integrity.md): with no task file and
# no re-run, its code is class 1's.


def score(predictions: pl.DataFrame, scored: pl.DataFrame, cfg: EvalConfig) -> Metrics:
    return score_predictions(predictions, scored, cfg, bar_interval=detect_interval(scored))


def horizon_ns(runner: SandboxRunner) -> int:
    return runner.clock.horizon // timedelta(microseconds=1) * 1000


@pytest.fixture(scope="module")
def runner(sandbox_panel, sandbox_image, tmp_path_factory) -> Iterator[SandboxRunner]:
    cache = tmp_path_factory.mktemp("cache")
    with SandboxRunner(sandbox_panel, EvalConfig(), SandboxConfig(executor="docker", **LIMITS), cache) as runner:
        yield runner


@pytest.fixture(scope="module")
def leak_results(runner) -> dict[tuple[str, bool], ExecutionResult]:
    """(leak, holdout) -> its result in the sandbox: the reward folds, and the holdout."""
    results = dict(zip([(name, False) for name in LEAKS], runner.run_many(list(LEAKS.values())), strict=True))
    return results | {(name, True): runner.run_holdout(leak) for name, leak in LEAKS.items()}


def window(runner: SandboxRunner, holdout: bool) -> tuple[DataView, list[Fold], pl.DataFrame]:
    """The data view, the folds and the panel the host scores them on (as sharpe_rl.evaluation does)."""
    whole = runner.holdout_view.panel
    if holdout:
        assert runner.plan.holdout_fold is not None
        scored = whole.filter(pl.col("timestamp") >= runner.plan.holdout_start)
        return runner.holdout_view, [runner.plan.holdout_fold], scored
    return runner.reward_view, runner.plan.folds, reward_panel(whole, runner.plan)


@pytest.mark.parametrize("holdout", [False, True], ids=["reward", "holdout"])
@pytest.mark.parametrize("name", list(LEAKS))
def test_the_leak_paid_in_the_vectorised_evaluation(runner, name, holdout):
    view, folds, scored = window(runner, holdout)
    metrics = score(vectorised_predictions(LEAKS[name], view, folds, horizon_ns(runner)), scored, runner.eval_cfg)
    assert metrics.valid and metrics.sharpe_net > HONEST_SHARPE_CEILING, metrics


# The holdout runs under the same protocol, so it exposes a leak instead of confirming it (class 4).


@pytest.mark.parametrize("holdout", [False, True], ids=["reward", "holdout"])
@pytest.mark.parametrize("name", list(LEAKS))
def test_the_leak_reads_no_future_in_the_sandbox(runner, leak_results, name, holdout):
    result = leak_results[name, holdout]
    assert result.ok, f"{result.status}: {result.message}\n{result.traceback}"  # a crash is no leak stopped
    view, folds, _ = window(runner, holdout)
    disguise = Disguise.draw(runner.disguise_key, view.data_hash, LEAKS[name].code_hash, len(view.symbols))
    decisions = runner.decisions(Job(LEAKS[name], view, folds))
    expected = vectorised_predictions(
        POINT_IN_TIME_EQUIVALENT[name], view, folds, horizon_ns(runner), task_codes=disguise.codes, decisions=decisions
    )
    assert runner.predictions(result).equals(expected)


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
    honest = spec(family, HONEST_FEATURES, HONEST_MODELS[family])
    view, folds = runner.reward_view, runner.plan.folds
    decisions = runner.decisions(Job(honest, view, folds))
    fitted = runner.training(Job(honest, view, folds))  # the bars at decisions, by default
    assert fitted is not None and len(fitted) < len(np.unique(view.timestamps)) / 5  # daily on 4h bars
    vectorised = vectorised_predictions(honest, view, folds, horizon_ns(runner), decisions=decisions, fitted=fitted)
    assert point_in_time.select("timestamp", "symbol", "fold").equals(vectorised.select("timestamp", "symbol", "fold"))
    # float32 networks may differ in the last bit between a batch of rows and the rows of one time
    tolerance = 1e-6 if family == "torch_mlp" else 1e-12
    np.testing.assert_allclose(
        point_in_time.get_column("p_up").to_numpy(), vectorised.get_column("p_up").to_numpy(), rtol=0, atol=tolerance
    )
