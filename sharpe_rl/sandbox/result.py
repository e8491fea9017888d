"""The result of running one experiment, and the strict reading of what the sandbox reported.

The harness's report is read from the line that carries RESULT_MARKER and the task's nonce (a
secret of the host and the trusted harness; the experiment's process never sees it), then
validated strictly: no extra keys, no type coercion, a fixed set of timings, a consistent status.
Its only payload is the probabilities, one per test row in the order the host sent the rows; the
rows themselves are the host's own. Anything malformed is a `ReportError`, which the runner turns
into `bad_predictions`. Nothing in a report is ever used as a score.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sharpe_rl.sandbox.contract import RESULT_MARKER, ErrorClass


class ReportError(ValueError):
    """The sandbox's output holds no valid report."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class HarnessTimings(_Strict):
    """Seconds, measured by the trusted harness: loading the spec, the fits, the prediction steps, all."""

    load: float = Field(ge=0)
    fit: float = Field(ge=0)
    predict: float = Field(ge=0)
    total: float = Field(ge=0)


class HarnessReport(_Strict):
    """The JSON the harness prints after RESULT_MARKER and the nonce."""

    status: Literal["ok"] | ErrorClass
    error_class: ErrorClass | None
    message: str = Field(max_length=2000)
    traceback: str = Field(max_length=10_000)
    timings: HarnessTimings
    peak_memory_mb: float = Field(ge=0)
    p_up: str | None  # float64 little-endian, base64

    @model_validator(mode="after")
    def _consistent(self) -> HarnessReport:
        if self.status == "ok":
            if self.error_class is not None or self.p_up is None:
                raise ValueError("an ok report has predictions and no error class")
        elif self.error_class != self.status or self.p_up is not None:
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
        default_factory=dict, description="Seconds: load/fit/predict/total (the harness), wall (the host)."
    )
    peak_memory_mb: float | None = Field(None, description="Peak resident memory of the experiment's process.")
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

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def read_report(stdout: bytes, nonce: str) -> HarnessReport:
    """The report on the line carrying the marker and `nonce`, validated; ReportError when there is none."""
    marker = (RESULT_MARKER + nonce).encode()
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


def decode_p_up(encoded: str, rows: int) -> np.ndarray:
    """The report's probabilities; ReportError unless there is exactly one float64 per row."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ReportError(f"the probabilities are not valid base64 ({exc})") from exc
    if len(raw) != 8 * rows:
        raise ReportError(f"the sandbox returned {len(raw) / 8:g} probabilities for {rows} test rows")
    return np.frombuffer(raw, dtype="<f8").copy()
