"""The experiment's own process: runs the generated code on the bars the harness has handed it so far.

Started by `harness.py` (the trusted side) as `python worker.py READ_FD WRITE_FD`, before the task
exists, with the pipe to the harness as its only way out: stdin is /dev/null, stdout is the
sandbox's stderr (so anything the experiment prints is a diagnostic, never a result), and it holds
no handle to the data or to the sandbox's stdout. Nothing here is a security measure: this process
is untrusted as soon as the generated code is loaded (it may rewrite any function of this module).
What keeps the reward honest is what the harness does and does not send it: bars in time order,
the bars of time t only after it has answered for t-1, labels only for training rows.

The messages are in `protocol.py`. What this side does with them:
- SPEC: executes the features source, then the model source, in one namespace; both must define
  `make_features(df)` and `make_model()` (else `bad_interface`).
- BARS / STEP: appends the bars (all symbols, in time order). A STEP then calls `make_features`
  once, on every symbol's bars of the last `lookback` up to and including t (`df` is indexed by
  (timestamp, symbol), columns exactly open, high, low, close, volume: `contract.FEATURE_INDEX`),
  takes the rows at t (one per symbol with a bar at t), and answers `predict_proba(X)[:, 1]` for
  them (`X`: float64; a row with a non-finite feature is not passed to the model and gets NaN,
  traded flat by the host).
- FIT: calls `make_features` once on the whole history so far, pools the labelled rows whose
  features are all finite (in time order, the rows of one time ordered by their feature values, so
  that the symbols' codes, random per task, do not change the fit), and fits a fresh `make_model()`
  on them (`X` float64, `y` int64 0/1).

Determinism: `random`, NumPy and torch are seeded when the spec loads and again before each fit's
features and model, so the same task gives the same answers.
"""

from __future__ import annotations

import builtins
import importlib
import json
import linecache
import os
import random
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pandas as pd
import protocol
from contract import (
    FEATURE_INDEX,
    OHLCV_COLUMNS,
    P_UP_COLUMN,
    WORKER_ERRORS,
    ErrorClass,
    ExperimentFailed,
    classify_exception,
)

#: Modules to import before the task arrives (comma-separated), so a waiting sandbox is warm.
PRELOAD_ENV = "SHARPE_RL_PRELOAD"
TRACEBACK_FRAMES = 8


class Bars:
    """Every bar delivered so far, in delivery order (time, then symbol code), in growing arrays."""

    def __init__(self) -> None:
        self.length = 0
        self.timestamps = np.empty(1024, dtype=np.int64)
        self.codes = np.empty(1024, dtype=np.int64)
        self.values = np.empty((1024, len(OHLCV_COLUMNS)), dtype=np.float64)

    def append(self, timestamps: np.ndarray, codes: np.ndarray, values: np.ndarray) -> None:
        end = self.length + len(timestamps)
        if end > len(self.timestamps):
            capacity = max(end, 2 * len(self.timestamps))
            self.timestamps = np.resize(self.timestamps, capacity)
            self.codes = np.resize(self.codes, capacity)
            self.values = np.resize(self.values, (capacity, len(OHLCV_COLUMNS)))
        self.timestamps[self.length : end] = timestamps
        self.codes[self.length : end] = codes
        self.values[self.length : end] = values
        self.length = end

    def frame(self, start: int) -> pd.DataFrame:
        """Bars [start, length) as the DataFrame `make_features` receives (see contract.FEATURE_INDEX)."""
        times = pd.DatetimeIndex(self.timestamps[start : self.length].astype("datetime64[ns]")).tz_localize("UTC")
        index = pd.MultiIndex.from_arrays([times, self.codes[start : self.length]], names=list(FEATURE_INDEX))
        return pd.DataFrame(self.values[start : self.length].copy(), index=index, columns=list(OHLCV_COLUMNS))


class Experiment:
    """The generated code and the history it has been given."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.seed = int(spec["seed"])
        self.lookback_ns = int(spec["lookback_ns"])
        reseed(self.seed)
        self.make_features, self.make_model = load_experiment(spec)
        self.bars = Bars()
        self.columns: list[str] | None = None
        self.model: Any = None

    def add_bars(self, payload: memoryview) -> None:
        timestamps, codes, values = protocol.unpack_bars(payload)
        self.bars.append(timestamps, codes, values)

    def fit(self, labels: np.ndarray) -> None:
        """Fit a fresh model on the first len(labels) bars delivered, those with a label and finite features."""
        reseed(self.seed)
        matrix = self.features(self.bars.frame(0))[: len(labels)]  # one call on the whole history
        times, codes = self.bars.timestamps[: len(labels)], self.bars.codes[: len(labels)]
        # in time, then by the features' values: an order that no symbol code (a secret, random per task) decides
        train = np.lexsort((codes, *matrix.T[::-1], times))
        train = train[np.isfinite(labels[train]) & np.isfinite(matrix[train]).all(axis=1)]
        if not len(train):
            raise ExperimentFailed(
                ErrorClass.bad_predictions,
                "no training row has all its features finite (a window longer than the history?)",
            )
        reseed(self.seed)
        model = self.make_model()
        missing = [method for method in ("fit", "predict_proba") if not callable(getattr(model, method, None))]
        if missing:
            raise ExperimentFailed(
                ErrorClass.bad_interface,
                f"make_model() returned a {type(model).__name__} without {', '.join(missing)}",
            )
        model.fit(matrix[train], labels[train].astype(np.int64))
        self.model = model

    def step(self, payload: memoryview) -> np.ndarray:
        """Append the bars up to t; return p_up for each bar at t (the last timestamp of the batch)."""
        self.add_bars(payload)
        bars = self.bars
        t = bars.timestamps[bars.length - 1]
        at_t = bars.length - int(np.searchsorted(bars.timestamps[: bars.length], t, side="left"))
        start = int(np.searchsorted(bars.timestamps[: bars.length], t - self.lookback_ns, side="right"))
        matrix = self.features(bars.frame(start))[-at_t:]  # one call for the whole panel, the rows at t
        p_up = np.full(at_t, np.nan)
        predictable = np.isfinite(matrix).all(axis=1)
        if predictable.any():
            proba = np.asarray(self.model.predict_proba(matrix[predictable]), dtype=np.float64)
            expected = int(predictable.sum())
            if proba.ndim != 2 or proba.shape[0] != expected or proba.shape[1] <= P_UP_COLUMN:
                raise ExperimentFailed(
                    ErrorClass.bad_predictions,
                    f"predict_proba returned shape {proba.shape} for {expected} rows; expected ({expected}, 2)",
                )
            p_up[predictable] = proba[:, P_UP_COLUMN]
        return p_up

    def features(self, df: pd.DataFrame) -> np.ndarray:
        """make_features on the panel's bars, aligned to them, as float64 (non-finite values are NaN)."""
        out = self.make_features(df)
        if isinstance(out, pd.Series):
            out = out.to_frame()
        if not isinstance(out, pd.DataFrame):
            raise ExperimentFailed(
                ErrorClass.bad_interface, f"make_features must return a pandas DataFrame, got {type(out).__name__}"
            )
        if not isinstance(out.index, pd.MultiIndex) or out.index.nlevels != len(FEATURE_INDEX):
            raise ExperimentFailed(
                ErrorClass.bad_interface,
                "make_features must return a DataFrame on df's (timestamp, symbol) index, one row per row of df",
            )
        out = out.reindex(df.index)
        columns = [str(c) for c in out.columns]
        if self.columns is None:
            if not columns:
                raise ExperimentFailed(ErrorClass.bad_interface, "make_features returned no feature columns")
            self.columns = columns
        elif columns != self.columns:
            raise ExperimentFailed(
                ErrorClass.value_error,
                f"make_features returned the columns {columns} here but {self.columns} before",
            )
        # copy=True: under pandas' copy-on-write a single float column comes back as a read-only view
        values = out.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        values[~np.isfinite(values)] = np.nan
        return values


def load_experiment(spec: dict[str, Any]) -> tuple[Callable[..., Any], Callable[..., Any]]:
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


def reseed(seed: int) -> None:
    """Reset every random generator the generated code may use."""
    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def serve(inbox: Connection, outbox: Connection) -> None:
    """Answer the harness's messages until it stops sending (or kills this process)."""
    experiment: Experiment | None = None
    while True:
        try:
            frame = memoryview(inbox.recv_bytes())
        except EOFError:
            return
        kind, payload = bytes(frame[:1]), frame[1:]
        try:
            if kind == protocol.SPEC:
                experiment = Experiment(json.loads(bytes(payload)))
                outbox.send_bytes(protocol.OK)
            elif kind == protocol.BARS:
                assert experiment is not None
                experiment.add_bars(payload)
            elif kind == protocol.FIT:
                assert experiment is not None
                experiment.fit(np.frombuffer(payload, dtype="<f8"))
                outbox.send_bytes(protocol.OK)
            elif kind == protocol.STEP:
                assert experiment is not None
                outbox.send_bytes(protocol.P_UP + experiment.step(payload).astype("<f8").tobytes())
        except BaseException as exc:  # anything the experiment raises, SystemExit included, is its result
            outbox.send_bytes(error_report(exc))
            return


def error_report(exc: BaseException) -> bytes:
    if isinstance(exc, ExperimentFailed):
        error_class, message = exc.error_class, str(exc)
    else:
        error_class, message = classify_exception(exc), type(exc).__name__
        if str(exc):
            message += f": {exc}"
    return protocol.error_frame(WORKER_ERRORS.index(error_class), message, user_traceback(exc))


def user_traceback(exc: BaseException) -> str:
    """The last frames of the traceback, without this module's own frames in front."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename != __file__]
    lines = traceback.format_list(frames[-TRACEBACK_FRAMES:])
    return "".join([*lines, *traceback.format_exception_only(exc)])


def main(argv: list[str]) -> None:
    read_fd, write_fd = int(argv[1]), int(argv[2])
    try:  # be the first process the kernel's OOM killer picks, so the harness survives to report
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    for name in filter(None, os.environ.get(PRELOAD_ENV, "").split(",")):
        importlib.import_module(name)
    serve(Connection(read_fd, writable=False), Connection(write_fd, readable=False))
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
