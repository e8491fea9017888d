"""The result of running one experiment, and the strict reading of what the sandbox reported.

The harness's report is untrusted text: `read_report` takes the last `RESULT_MARKER` line of the
captured stdout and validates it strictly (no extra keys, no type coercion, consistent status);
`decode_predictions` turns its base64 arrays into a frame. Anything malformed is a `ReportError`,
which the runner turns into `bad_predictions`. Nothing in a report is ever used as a score.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sharpe_rl.sandbox.contract import RESULT_MARKER, ErrorClass

PREDICTION_SCHEMA = {
    "timestamp": pl.Datetime("us", "UTC"),
    "symbol": pl.String,
    "fold": pl.Int32,
    "p_up": pl.Float64,
}


class ReportError(ValueError):
    """The sandbox's output holds no valid report."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class WirePredictions(_Strict):
    """Predictions as the harness sends them: little-endian arrays, base64-encoded."""

    symbols: list[str]
    timestamp: str  # int64 ns since the epoch, UTC
    symbol: str  # int32 index into `symbols`
    fold: str  # int32
    p_up: str  # float64


class HarnessReport(_Strict):
    """The one line the harness prints after RESULT_MARKER."""

    status: Literal["ok"] | ErrorClass
    error_class: ErrorClass | None
    message: str = Field(max_length=2000)
    traceback: str = Field(max_length=10_000)
    timings: dict[str, float]
    peak_memory_mb: float
    predictions: WirePredictions | None

    @model_validator(mode="after")
    def _consistent(self) -> HarnessReport:
        if self.status == "ok":
            if self.error_class is not None or self.predictions is None:
                raise ValueError("an ok report has predictions and no error class")
        elif self.error_class != self.status or self.predictions is not None:
            raise ValueError("a failed report names its status as error class and has no predictions")
        return self


class ExecutionResult(BaseModel):
    """What running one experiment produced (the predictions themselves live in a Parquet file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["ok"] | ErrorClass
    error_class: ErrorClass | None = Field(description="None exactly when status is ok.")
    message: str = ""
    traceback: str = Field("", description="The last frames of the generated code's traceback.")
    timings: dict[str, float] = Field(
        default_factory=dict, description="Seconds: features/fit/predict/total inside, wall/lookahead_wall outside."
    )
    peak_memory_mb: float | None = Field(None, description="Peak resident memory of the harness process.")
    exit_code: int | None = Field(None, description="Exit code of the sandbox process (None when killed).")
    stderr_tail: str = Field("", description="The end of what the experiment printed.")
    spec_hash: str = Field(description="ExperimentSpec.code_hash of what ran.")
    data_hash: str = Field(description="Content hash of the data view the sandbox saw.")
    harness_hash: str = Field(description="Content hash of the image inputs (harness, packages).")
    cache_key: str
    predictions_path: Path | None = Field(
        None, description="Parquet (timestamp, symbol, fold, p_up), when status is ok."
    )
    executor: Literal["docker", "process"]
    cached: bool = Field(False, description="True when this result came from the cache, nothing ran.")
    lookahead_max_diff: float | None = Field(
        None, description="Largest |change of p_up| at or before the cut in the lookahead re-run, when it ran."
    )

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def read_report(stdout: bytes) -> HarnessReport:
    """The last marker line of `stdout`, validated; ReportError when there is none or it is invalid."""
    marker = RESULT_MARKER.encode()
    start = stdout.rfind(marker)
    if start == -1:
        raise ReportError("the sandbox printed no result")
    line = stdout[start + len(marker) :].split(b"\n", 1)[0]
    try:
        return HarnessReport.model_validate_json(line)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "result"
        raise ReportError(f"the sandbox's result is invalid ({where}: {first['msg']})") from exc


def decode_predictions(wire: WirePredictions) -> pl.DataFrame:
    """The predictions as a frame with PREDICTION_SCHEMA; ReportError when the arrays do not fit."""
    try:
        timestamp = _array(wire.timestamp, "<i8")
        symbol = _array(wire.symbol, "<i4")
        fold = _array(wire.fold, "<i4")
        p_up = _array(wire.p_up, "<f8")
    except (binascii.Error, ValueError) as exc:
        raise ReportError(f"the predictions are not valid base64 arrays ({exc})") from exc
    if not len(timestamp) == len(symbol) == len(fold) == len(p_up):
        raise ReportError("the prediction arrays have different lengths")
    if len(symbol) and (symbol.min() < 0 or symbol.max() >= len(wire.symbols)):
        raise ReportError("a prediction names a symbol index outside the symbol list")
    names = np.array(wire.symbols, dtype=object)[symbol] if len(symbol) else np.array([], dtype=object)
    return pl.DataFrame(
        {
            "timestamp": pl.Series(timestamp, dtype=pl.Int64).cast(pl.Datetime("ns", "UTC")).dt.cast_time_unit("us"),
            "symbol": pl.Series(names.tolist(), dtype=pl.String),
            "fold": pl.Series(fold, dtype=pl.Int32),
            "p_up": pl.Series(p_up, dtype=pl.Float64),
        },
        schema=PREDICTION_SCHEMA,
    )


def _array(encoded: str, dtype: str) -> np.ndarray:
    raw = base64.b64decode(encoded, validate=True)
    if len(raw) % np.dtype(dtype).itemsize:
        raise ValueError(f"{len(raw)} bytes is not a whole number of {dtype} values")
    return np.frombuffer(raw, dtype=dtype)
