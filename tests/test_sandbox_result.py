"""The host reads the sandbox's output strictly: anything but a well-formed report is bad_predictions."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.contract import RESULT_MARKER, bad_predictions_reason
from sharpe_rl.sandbox.result import ReportError, decode_predictions, read_report
from sharpe_rl.sandbox.runner import SandboxRunner


def encode(values, dtype: str) -> str:
    return base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode()


def report(**changes) -> dict:
    predictions = {
        "symbols": ["BTCUSDT", "ETHUSDT"],
        "timestamp": encode([1_700_000_000_000_000_000, 1_700_000_000_000_000_000], "<i8"),
        "symbol": encode([0, 1], "<i4"),
        "fold": encode([0, 0], "<i4"),
        "p_up": encode([0.4, math.nan], "<f8"),
    }
    base = {
        "status": "ok",
        "error_class": None,
        "message": "",
        "traceback": "",
        "timings": {"total": 1.0},
        "peak_memory_mb": 100.0,
        "predictions": predictions,
    }
    return {**base, **changes}


def stdout_of(*reports: dict, noise: str = "") -> bytes:
    return (noise + "".join(RESULT_MARKER + json.dumps(r) + "\n" for r in reports)).encode()


def test_the_last_result_line_wins():
    failed = report(status="timeout", error_class="timeout", message="slow", predictions=None)
    parsed = read_report(stdout_of(report(), failed, noise="hello\n"))
    assert parsed.status == "timeout" and parsed.predictions is None


def test_predictions_decode_to_the_stored_schema():
    frame = decode_predictions(read_report(stdout_of(report())).predictions)
    assert frame.columns == ["timestamp", "symbol", "fold", "p_up"]
    assert frame.get_column("symbol").to_list() == ["BTCUSDT", "ETHUSDT"]
    assert str(frame.get_column("timestamp")[0]) == "2023-11-14 22:13:20+00:00"
    assert math.isnan(frame.get_column("p_up")[1])


@pytest.mark.parametrize(
    "stdout",
    [
        b"",
        b"the experiment printed this and died\n",
        (RESULT_MARKER + "{not json").encode(),
        stdout_of(report(sharpe=3.0)),  # a score smuggled in: unknown keys are refused
        stdout_of(report(status="ok", error_class="timeout")),
        stdout_of(report(status="timeout", error_class="timeout")),  # a failure with predictions
        stdout_of(report(status="ok", predictions=None)),
        stdout_of(report(status="great", error_class=None)),
        stdout_of(report(peak_memory_mb="100")),  # no type coercion
    ],
)
def test_malformed_or_forged_reports_are_refused(stdout):
    with pytest.raises(ReportError):
        read_report(stdout)


@pytest.mark.parametrize(
    "predictions",
    [
        {"symbol": encode([0, 5], "<i4")},  # an index outside the symbol list
        {"p_up": encode([0.5], "<f8")},  # arrays of different lengths
        {"timestamp": "not base64!"},
        {"fold": base64.b64encode(b"abc").decode()},  # not a whole number of int32s
    ],
)
def test_malformed_prediction_arrays_are_refused(predictions):
    wire = read_report(stdout_of(report(predictions={**report()["predictions"], **predictions}))).predictions
    with pytest.raises(ReportError):
        decode_predictions(wire)


@pytest.mark.parametrize(
    ("p_up", "folds", "reason"),
    [
        ([0.2, 0.7, math.nan], [0, 0, 1], None),
        ([0.5, 0.5, 0.7, 0.8], [0, 0, 1, 1], None),  # constant in one fold only is fine
        ([math.nan, math.nan], [0, 1], "every prediction is NaN"),
        ([0.2, 1.5], [0, 0], "[0, 1]"),
        ([0.2, -0.1], [0, 0], "[0, 1]"),
        ([0.2, math.inf], [0, 0], "[0, 1]"),
        ([0.5, 0.5, 0.6, 0.6], [0, 0, 1, 1], "constant"),
    ],
)
def test_which_predictions_are_usable(p_up, folds, reason):
    found = bad_predictions_reason(p_up, folds)
    assert found is None if reason is None else reason in found


def test_no_engine_is_an_infrastructure_error_that_says_how_to_start_one(monkeypatch, tmp_path):
    import polars as pl

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    panel = pl.DataFrame(
        {
            "timestamp": pl.datetime_range(
                pl.datetime(2024, 1, 1), pl.datetime(2024, 12, 31), "1d", time_zone="UTC", eager=True
            ).dt.cast_time_unit("us"),
        }
    ).with_columns(symbol=pl.lit("BTCUSDT"), **{c: pl.lit(1.0) for c in ("open", "high", "low", "close", "volume")})
    with pytest.raises(InfrastructureError, match=r"no Docker engine.*dockerd.*--executor process"):
        SandboxRunner(panel, EvalConfig(), SandboxConfig(executor="docker"), tmp_path)
