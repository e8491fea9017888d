"""The evaluation as it was before the point-in-time protocol, in-process: the yardstick of two kinds of test.

`make_features` is called once on the whole data view (every symbol, every bar, as the whole-panel
contract shapes it), each fold's model is fitted on the training rows and predicts the whole test
window in one call. For causal code this is what the point-in-time protocol must reproduce (given
the same decision times); for code that reads the future it is what paid the leaks (so an attack
shown to earn a large Sharpe here, and nothing in the sandbox, is a real attack stopped, not a spec
that never worked). Given `task_codes` (each symbol's code in a sandbox task, `Disguise.codes`),
the model predicts the rows of each test time in a call of their own, in the task's order, as the
harness asks it to: what code that reads other rows of its `X` sees there.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from sharpe_rl.data.splits import Fold
from sharpe_rl.sandbox.contract import FEATURE_INDEX, OHLCV_COLUMNS
from sharpe_rl.sandbox.image import HARNESS_DIR
from sharpe_rl.sandbox.views import DataView
from sharpe_rl.spec import ExperimentSpec

sys.path.insert(0, str(HARNESS_DIR))  # the harness's modules import each other as top-level modules
from harness import label_bars
from worker import load_experiment, reseed


def vectorised_predictions(
    spec: ExperimentSpec,
    view: DataView,
    folds: list[Fold],
    horizon_ns: int,
    task_codes: np.ndarray | None = None,
    decisions: np.ndarray | None = None,
    fitted: list[int] | None = None,
) -> pl.DataFrame:
    """(timestamp, symbol, fold, p_up) for every test row, sorted by fold, timestamp, symbol.

    `task_codes`: None predicts each fold's test window in one call (the earlier evaluation); else the
    task's code of each of `view.symbols`, and each test time is predicted in one call, rows in code order.
    `decisions`: the times (ns) predictions are asked at, NaN elsewhere (None: every test bar).
    `fitted`: the times (ns) of the training rows models are fitted on (None: every bar; `SandboxRunner.training`).
    """
    make_features, make_model = load_experiment({"features": spec.features, "model": spec.model})
    timestamps, codes = view.timestamps, view.codes
    labels = label_bars(timestamps, codes, view.ohlcv[:, 3], horizon_ns)

    times = pd.DatetimeIndex(timestamps.astype("datetime64[ns]")).tz_localize("UTC")
    index = pd.MultiIndex.from_arrays([times, codes.astype(np.int64)], names=list(FEATURE_INDEX))
    reseed(0)
    out = make_features(pd.DataFrame(view.ohlcv.copy(), index=index, columns=list(OHLCV_COLUMNS)))
    features = out.reindex(index).to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    features[~np.isfinite(features)] = np.nan
    # training rows in the worker's order (in time, the rows of one time by their feature values); the test
    # window in one call, symbol by symbol, as the old harness predicted it
    train_order = np.lexsort((codes, *features.T[::-1], timestamps))
    test_order = np.lexsort((timestamps, codes))
    complete = np.isfinite(features).all(axis=1)
    asked_at = np.ones(len(timestamps), dtype=bool) if decisions is None else np.isin(timestamps, decisions)
    fit_on = np.ones(len(timestamps), dtype=bool) if fitted is None else np.isin(timestamps, fitted)

    parts = []
    for fold in folds:
        wire = fold.to_wire()
        in_train = (timestamps >= wire["train_start"]) & (timestamps <= wire["train_end"])
        train = train_order[(in_train & fit_on & complete & np.isfinite(labels))[train_order]]
        in_test = (timestamps >= wire["test_start"]) & (timestamps <= wire["test_end"])
        test = test_order[in_test[test_order]]
        reseed(0)
        model: Any = make_model()
        model.fit(features[train], labels[train].astype(np.int64))
        p_up = np.full(len(test), np.nan)
        if task_codes is None:
            calls = [np.arange(len(test))]
        else:  # the rows of each time, in the task's order
            order = np.lexsort((task_codes[codes[test]], timestamps[test]))
            calls = np.split(order, np.flatnonzero(np.diff(timestamps[test][order])) + 1)
        for call in calls:
            asked = call[complete[test[call]] & asked_at[test[call]]]
            if len(asked):
                p_up[asked] = np.asarray(model.predict_proba(features[test[asked]]), dtype=np.float64)[:, 1]
        rows = {
            "timestamp": view.panel.get_column("timestamp").gather(test),
            "symbol": view.panel["symbol"].gather(test),
        }
        parts.append(pl.DataFrame({**rows, "p_up": p_up}).with_columns(fold=pl.lit(fold.index, pl.Int32)))
    return pl.concat(parts).select("timestamp", "symbol", "fold", "p_up").sort("fold", "timestamp", "symbol")
