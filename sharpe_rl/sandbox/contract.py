"""The one error taxonomy and the wire format shared by the host and the in-sandbox harness.

This module is copied into the sandbox image beside the harness, so it uses the standard
library only. Static checks, the sandbox, the reward and the report all speak these classes.

The wire between the host and the sandbox, both ways:
- host -> harness, on the sandbox's stdin: one task, `TASK_MAGIC`, then an 8-byte little-endian
  length, then a JSON header of that length, then the raw little-endian arrays the header lists
  (`encode_task`). Nothing is mounted: the data exists inside the sandbox only in the trusted
  harness's memory.
- harness -> host, on the sandbox's stdout: one line, `RESULT_MARKER`, the task's nonce, then a
  JSON object (`result.HarnessReport`). The host reads only the line that carries its nonce.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from enum import StrEnum


class ErrorClass(StrEnum):
    """Why an experiment did not produce a usable strategy, from earliest to latest failure."""

    json_parse = "json_parse"  # no JSON object could be read from the completion
    schema = "schema"  # JSON, but not an ExperimentSpec (missing/extra keys, wrong types)
    syntax = "syntax"  # the features or model source does not parse
    forbidden_import = "forbidden_import"  # imports a package the prompt does not allow
    missing_column = "missing_column"  # reads a column the dataset does not have (KeyError)
    type_error = "type_error"  # TypeError (wrong argument, wrong type)
    value_error = "value_error"  # ValueError (bad shapes, bad parameter values)
    runtime_error = "runtime_error"  # any other exception
    timeout = "timeout"  # ran past the wall-clock limit
    out_of_memory = "out_of_memory"  # MemoryError or killed by the memory limit
    bad_interface = "bad_interface"  # no make_features/make_model, or no fit/predict_proba
    bad_predictions = "bad_predictions"  # NaN, wrong shape, constant, or no usable result


#: Errors found before anything runs: the policy did not write a runnable program.
FORMAT_ERRORS = frozenset({ErrorClass.json_parse, ErrorClass.schema, ErrorClass.syntax, ErrorClass.forbidden_import})

#: Packages the generated code may import (top-level module names).
ALLOWED_PACKAGES = frozenset(
    {
        "numpy",
        "pandas",
        "scipy",
        "sklearn",
        "statsmodels",
        "lightgbm",
        "xgboost",
        "torch",
        # the standard library modules a model author reasonably needs
        "math",
        "random",
        "functools",
        "itertools",
        "collections",
        "dataclasses",
        "typing",
        "warnings",
    }
)

#: The columns of every panel, and exactly what `make_features(df)` receives for one symbol.
OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")
#: What `make_features(df)` receives, written once (the worker builds it, the prompts describe it): one call per
#: decision time t for the whole panel; `df` holds every symbol's bars of the last `lookback` up to and including t,
#: indexed by (timestamp, symbol) — timestamp the bar's open time (UTC), symbol an integer code — sorted by timestamp
#: then symbol, with exactly the columns OHLCV_COLUMNS. It returns numeric features on df's index, one row per
#: (timestamp, symbol); the rows at t are predicted. Fitting makes the same call on the history up to the training
#: end. `predict_proba(X)` gets one row per symbol with a bar at t, and column 1 of its answer is p(up).
FEATURE_INDEX = ("timestamp", "symbol")
#: The column of predict_proba's answer that is read as the probability of the label 1.
P_UP_COLUMN = 1

#: The harness prints exactly one line starting with this marker and the task's nonce.
RESULT_MARKER = "@@SHARPE_RL_RESULT@@"

#: The first bytes of a task on the harness's stdin.
TASK_MAGIC = b"SHARPE-RL-TASK/1"
#: The harness's exit code when it could not read its task (a host bug, never the experiment's fault).
BAD_TASK_EXIT = 3
#: Seconds a sandbox started ahead of its task waits for it before exiting on its own (an abandoned
#: warm sandbox, say on a cluster worker whose run ended, does not wait forever).
IDLE_SECONDS = 900

#: Error classes the experiment's own process may report about itself (its exceptions and its
#: interface). Anything else it claims is recorded as runtime_error.
WORKER_ERRORS = (
    ErrorClass.missing_column,
    ErrorClass.type_error,
    ErrorClass.value_error,
    ErrorClass.runtime_error,
    ErrorClass.out_of_memory,
    ErrorClass.bad_interface,
    ErrorClass.bad_predictions,
    ErrorClass.syntax,
    ErrorClass.forbidden_import,
    ErrorClass.timeout,
)


class ExperimentFailed(Exception):
    """The experiment failed, with its error class, message and (its own) traceback: raised by the worker's
    checks of what the generated code returns, and by the harness for what the worker reports."""

    def __init__(self, error_class: ErrorClass, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.error_class = error_class
        self.traceback = traceback


def classify_exception(exc: BaseException) -> ErrorClass:
    """Map an exception raised by generated code to its error class."""
    if isinstance(exc, KeyError):
        return ErrorClass.missing_column
    if isinstance(exc, MemoryError):
        return ErrorClass.out_of_memory
    if isinstance(exc, TimeoutError):
        return ErrorClass.timeout
    if isinstance(exc, SyntaxError):
        return ErrorClass.syntax
    if isinstance(exc, ImportError):
        return ErrorClass.forbidden_import
    # ValueError first: scikit-learn's InvalidParameterError (a bad parameter value) is both
    if isinstance(exc, ValueError):
        return ErrorClass.value_error
    if isinstance(exc, TypeError):
        return ErrorClass.type_error
    return ErrorClass.runtime_error


#: The environment every executor gives the harness. Hash seed and single-threaded math libraries
#: make a rerun give bit-identical predictions (thread counts must be set before numpy loads).
#: LOKY_MAX_CPU_COUNT matters: LightGBM's scikit-learn API ignores OMP_NUM_THREADS and asks joblib
#: for the core count, and two spinning OpenMP threads on a busy machine fit ten times slower.
SANDBOX_ENV = {
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "LOKY_MAX_CPU_COUNT": "1",
    "MPLBACKEND": "Agg",
}


def bad_predictions_reason(p_up: Iterable[float], folds: Iterable[int]) -> str | None:
    """Why these out-of-sample probabilities are unusable, or None when they are usable.

    NaN marks a row the model could not predict (the host trades it flat); values must lie in
    [0, 1]; at least one value must be a number; and a model whose output is the same number for
    every row of every fold carries no signal, only a fixed position, so it is rejected too.
    """
    values_by_fold: dict[int, set[float]] = {}
    for value, fold in zip(p_up, folds, strict=True):
        if math.isnan(value):
            continue
        if not 0.0 <= value <= 1.0:
            return f"p_up must lie in [0, 1]; got {value!r}"
        values_by_fold.setdefault(int(fold), set()).add(float(value))
    if not values_by_fold:
        return "every prediction is NaN"
    if all(len(values) == 1 for values in values_by_fold.values()):
        return "p_up is constant within every fold: a fixed position, not a prediction"
    return None


def encode_task(header: dict, arrays: dict[str, tuple[str, bytes]]) -> bytes:
    """One task as the harness reads it from stdin: magic, header length, JSON header, raw arrays.

    `arrays` maps a name to (NumPy dtype string such as "<f8", raw bytes); the header gains an
    `arrays` entry listing each one's name, dtype and byte length, in order.
    """
    listing = [[name, dtype, len(raw)] for name, (dtype, raw) in arrays.items()]
    encoded = json.dumps({**header, "arrays": listing}).encode()
    return b"".join([TASK_MAGIC, len(encoded).to_bytes(8, "little"), encoded, *(raw for _, raw in arrays.values())])
