"""The in-sandbox harness: run one experiment's walk-forward folds and report one result line.

Runs as a script with `contract.py` beside it (in the image: `/opt/harness/`), with the generated
code in the same process, so nothing here is a security measure: the executor around it is the
boundary, and the host validates everything this prints. Usage:
`python harness.py [TASK_JSON [PANEL_NPZ]]` (defaults: contract.TASK_PATH, contract.DATA_PATH).

What it does, in order:
1. Moves stdout out of the way (everything the experiment prints goes to stderr) and arms a
   SIGALRM timer at the task's time limit.
2. Executes the features source, then the model source, in one namespace; both must define
   `make_features(df)` and `make_model()` (else `bad_interface`).
3. Calls `make_features(df)` per symbol, `df` being that symbol's bars indexed by timestamp with
   exactly the columns open, high, low, close, volume; aligns the result back to the symbol's bars
   (non-finite values count as missing).
4. Labels each bar 1 if the close `horizon` bars later on the union timeline is higher, 0 if not,
   NaN when that bar is missing for the symbol (so a gap never stretches a label).
5. Per fold: fits a fresh `make_model()` on the pooled training rows (finite features and label,
   inside [train_start, train_end]) and predicts `predict_proba(X)[:, 1]` for every test row in
   [test_start, test_end]; a row with a missing feature gets NaN (traded flat by the host).
   `X` is a float64 NumPy array (rows x feature columns), `y` an int64 array of 0/1.
6. Prints `RESULT_MARKER + json` on the real stdout and exits at once (no atexit hooks run).

Determinism: PYTHONHASHSEED and single-threaded math libraries come from the executor's
environment (contract.SANDBOX_ENV); `random`, NumPy and torch are re-seeded before each symbol's
features and before each fold's model, so the last fold gives the same predictions whether or
not earlier folds ran (the lookahead guard relies on that).
"""

from __future__ import annotations

import base64
import builtins
import json
import linecache
import os
import random
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from contract import (
    DATA_PATH,
    OHLCV_COLUMNS,
    RESULT_MARKER,
    TASK_PATH,
    ErrorClass,
    bad_predictions_reason,
    classify_exception,
)

MAX_MESSAGE_CHARS = 500
MAX_TRACEBACK_CHARS = 4000
TRACEBACK_FRAMES = 8


class ExperimentFailed(Exception):
    """A failure the harness itself detected, with the error class it belongs to."""

    def __init__(self, error_class: ErrorClass, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


class TimeLimitExceeded(BaseException):
    """Raised by SIGALRM. A BaseException, so `except Exception` in generated code cannot swallow it."""


def main(argv: list[str]) -> None:
    """Run the task, print the one result line on the real stdout, exit without running any hooks."""
    started = time.perf_counter()
    harness_pid = os.getpid()
    result_fd = _divert_stdout()
    task_path = argv[1] if len(argv) > 1 else TASK_PATH
    data_path = argv[2] if len(argv) > 2 else DATA_PATH
    with open(task_path) as f:
        task = json.load(f)
    time_limit = float(task["time_limit_seconds"])
    timings: dict[str, float] = {}

    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        predictions = run_experiment(task, data_path, timings)
        signal.setitimer(signal.ITIMER_REAL, 0)
        report: dict[str, Any] = {
            "status": "ok",
            "error_class": None,
            "message": "",
            "traceback": "",
            "predictions": predictions,
        }
    except BaseException as exc:  # anything the experiment raises, SystemExit included, is its result
        signal.setitimer(signal.ITIMER_REAL, 0)
        report = _failure_report(exc, time_limit)

    if os.getpid() != harness_pid:
        os._exit(1)  # a process the experiment forked: only the harness process reports
    timings["total"] = time.perf_counter() - started
    report["timings"] = timings
    usage = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    report["peak_memory_mb"] = usage / 1024  # Linux reports KiB
    line = (RESULT_MARKER + json.dumps(report, allow_nan=False) + "\n").encode()
    while line:
        line = line[os.write(result_fd, line) :]
    os._exit(0)


def run_experiment(task: dict[str, Any], data_path: str, timings: dict[str, float]) -> dict[str, Any]:
    """Features, labels and walk-forward folds; returns the wire form of the predictions."""
    seed = int(task["seed"])
    bars = load_bars(data_path)
    make_features, make_model = load_experiment(task["spec"])

    started = time.perf_counter()
    dataset = build_dataset(bars, make_features, int(task["horizon"]), seed)
    timings["features"] = time.perf_counter() - started

    timings["fit"] = timings["predict"] = 0.0
    parts = [run_fold(dataset, fold, make_model, seed, timings) for fold in task["folds"]]
    row_index = np.concatenate([rows for rows, _, _ in parts])
    fold_ids = np.concatenate([np.full(len(rows), index, dtype=np.int32) for rows, index, _ in parts])
    p_up = np.concatenate([p for _, _, p in parts])
    reason = bad_predictions_reason(p_up.tolist(), fold_ids.tolist())
    if reason:
        raise ExperimentFailed(ErrorClass.bad_predictions, reason)
    return {
        "symbols": dataset.symbols,
        "timestamp": _b64(dataset.timestamps[row_index], "<i8"),
        "symbol": _b64(dataset.symbol_codes[row_index], "<i4"),
        "fold": _b64(fold_ids, "<i4"),
        "p_up": _b64(p_up, "<f8"),
    }


def load_bars(path: str) -> dict[str, pd.DataFrame]:
    """Per symbol, its bars indexed by UTC timestamp with exactly the OHLCV columns."""
    with np.load(path, allow_pickle=False) as data:
        timestamps = data["timestamp"].astype("<i8")
        symbols = data["symbol"].astype(str)
        columns = {name: data[name].astype(np.float64) for name in OHLCV_COLUMNS}
    index = pd.DatetimeIndex(pd.to_datetime(timestamps, unit="ns", utc=True), name="timestamp")
    frame = pd.DataFrame(columns, index=index)
    return {symbol: frame[symbols == symbol] for symbol in sorted(set(symbols))}


def load_experiment(spec: dict[str, str]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Execute the two sources in one namespace; return make_features and make_model."""
    namespace: dict[str, Any] = {"__name__": "experiment", "__builtins__": builtins}
    for part in ("features", "model"):
        filename = f"<{part}>"
        source = spec[part]
        # lets tracebacks show the generated lines, which is what the policy learns from
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        exec(compile(source, filename, "exec"), namespace)
    missing = [name for name in ("make_features", "make_model") if not callable(namespace.get(name))]
    if missing:
        raise ExperimentFailed(ErrorClass.bad_interface, f"no callable {' or '.join(missing)} defined")
    return namespace["make_features"], namespace["make_model"]


@dataclass(frozen=True)
class Dataset:
    """Pooled rows of every symbol: features, labels, timestamps (ns) and symbol codes."""

    symbols: list[str]
    features: np.ndarray
    labels: np.ndarray
    timestamps: np.ndarray
    symbol_codes: np.ndarray
    complete: np.ndarray  # rows whose features are all finite


def build_dataset(bars: dict[str, pd.DataFrame], make_features: Callable[..., Any], horizon: int, seed: int) -> Dataset:
    timeline = np.unique(np.concatenate([_ns(df.index) for df in bars.values()]))
    columns: list[str] | None = None
    first_symbol = ""
    features, labels, timestamps, codes = [], [], [], []
    for code, (symbol, df) in enumerate(bars.items()):
        reseed(seed)
        out = make_features(df.copy())
        if isinstance(out, pd.Series):
            out = out.to_frame()
        if not isinstance(out, pd.DataFrame):
            raise ExperimentFailed(
                ErrorClass.bad_interface, f"make_features must return a pandas DataFrame, got {type(out).__name__}"
            )
        out = out.reindex(df.index)
        if columns is None:
            columns, first_symbol = [str(c) for c in out.columns], symbol
            if not columns:
                raise ExperimentFailed(ErrorClass.bad_interface, "make_features returned no feature columns")
        elif [str(c) for c in out.columns] != columns:
            raise ExperimentFailed(
                ErrorClass.value_error,
                f"make_features returned columns {list(out.columns)} for {symbol} but {columns} for {first_symbol}",
            )
        # copy=True: under pandas' copy-on-write a single float column comes back as a read-only view
        values = out.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        values[~np.isfinite(values)] = np.nan
        features.append(values)
        labels.append(forward_labels(_ns(df.index), df["close"].to_numpy(np.float64), timeline, horizon))
        timestamps.append(_ns(df.index))
        codes.append(np.full(len(df), code, dtype=np.int32))
    matrix = np.concatenate(features)
    return Dataset(
        symbols=list(bars),
        features=matrix,
        labels=np.concatenate(labels),
        timestamps=np.concatenate(timestamps),
        symbol_codes=np.concatenate(codes),
        complete=np.isfinite(matrix).all(axis=1),
    )


def forward_labels(timestamps: np.ndarray, close: np.ndarray, timeline: np.ndarray, horizon: int) -> np.ndarray:
    """1.0 if the close `horizon` bars later (union timeline) is higher, 0.0 if not, NaN if that bar is missing."""
    future_position = np.searchsorted(timeline, timestamps) + horizon
    has_future = future_position < len(timeline)
    future_time = timeline[np.minimum(future_position, len(timeline) - 1)]
    j = np.minimum(np.searchsorted(timestamps, future_time), len(timestamps) - 1)
    present = has_future & (timestamps[j] == future_time)
    with np.errstate(divide="ignore", invalid="ignore"):
        forward_return = np.where(present, close[j] / close - 1.0, np.nan)
    return np.where(np.isfinite(forward_return), (forward_return > 0).astype(np.float64), np.nan)


def run_fold(
    data: Dataset, fold: dict[str, int], make_model: Callable[..., Any], seed: int, timings: dict[str, float]
) -> tuple[np.ndarray, int, np.ndarray]:
    """Fit on the fold's training rows; return (test row indices, fold index, p_up per test row)."""
    index = int(fold["index"])
    t = data.timestamps
    train = (t >= fold["train_start"]) & (t <= fold["train_end"]) & data.complete & np.isfinite(data.labels)
    test_rows = np.flatnonzero((t >= fold["test_start"]) & (t <= fold["test_end"]))
    if not train.any():
        raise ExperimentFailed(
            ErrorClass.bad_predictions,
            f"fold {index} has no training row whose features are all finite (a window longer than the data?)",
        )
    reseed(seed)
    model = make_model()
    missing = [method for method in ("fit", "predict_proba") if not callable(getattr(model, method, None))]
    if missing:
        raise ExperimentFailed(
            ErrorClass.bad_interface, f"make_model() returned a {type(model).__name__} without {', '.join(missing)}"
        )
    started = time.perf_counter()
    model.fit(data.features[train], data.labels[train].astype(np.int64))
    timings["fit"] += time.perf_counter() - started

    p_up = np.full(len(test_rows), np.nan)
    predictable = data.complete[test_rows]
    if predictable.any():
        started = time.perf_counter()
        proba = np.asarray(model.predict_proba(data.features[test_rows[predictable]]), dtype=np.float64)
        timings["predict"] += time.perf_counter() - started
        expected_rows = int(predictable.sum())
        if proba.ndim != 2 or proba.shape[0] != expected_rows or proba.shape[1] < 2:
            raise ExperimentFailed(
                ErrorClass.bad_predictions,
                f"predict_proba returned shape {proba.shape} for {expected_rows} rows; expected ({expected_rows}, 2)",
            )
        p_up[predictable] = proba[:, 1]
    return test_rows, index, p_up


def reseed(seed: int) -> None:
    """Reset every random generator the generated code may use."""
    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def _failure_report(exc: BaseException, time_limit: float) -> dict[str, Any]:
    if isinstance(exc, TimeLimitExceeded):
        error_class, message = ErrorClass.timeout, f"ran past the time limit of {time_limit:g} s"
    elif isinstance(exc, ExperimentFailed):
        error_class, message = exc.error_class, str(exc)
    else:
        error_class, message = classify_exception(exc), type(exc).__name__
        if str(exc):
            message += f": {exc}"
    return {
        "status": error_class.value,
        "error_class": error_class.value,
        "message": message[:MAX_MESSAGE_CHARS],
        "traceback": _user_traceback(exc)[-MAX_TRACEBACK_CHARS:],
        "predictions": None,
    }


def _user_traceback(exc: BaseException) -> str:
    """The last frames of the traceback, without the harness's own frames in front."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename != __file__]
    lines = traceback.format_list(frames[-TRACEBACK_FRAMES:])
    return "".join([*lines, *traceback.format_exception_only(exc)])


def _divert_stdout() -> int:
    """Keep a private copy of stdout for the result; send fd 1 (and so every print) to stderr."""
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    return result_fd


def _on_alarm(signum: int, frame: object) -> None:
    raise TimeLimitExceeded


def _ns(index: pd.DatetimeIndex) -> np.ndarray:
    return index.as_unit("ns").asi8


def _b64(values: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


if __name__ == "__main__":
    main(sys.argv)
