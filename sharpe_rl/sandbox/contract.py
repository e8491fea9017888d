"""The one error taxonomy and the wire format shared by the host and the in-sandbox harness.

This module is copied into the sandbox image beside the harness, so it uses the standard
library only. Static checks, the sandbox, the reward and the report all speak these classes.
"""

from __future__ import annotations

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
    lookahead = "lookahead"  # predictions change when the future is removed


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

#: The harness prints exactly one line starting with this marker; the host parses the last one.
RESULT_MARKER = "@@SHARPE_RL_RESULT@@"


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
    if isinstance(exc, TypeError):
        return ErrorClass.type_error
    if isinstance(exc, ValueError):
        return ErrorClass.value_error
    return ErrorClass.runtime_error
