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
from sharpe_rl.sandbox.result import ReportError, decode_p_up, read_report
from sharpe_rl.sandbox.runner import SandboxRunner

NONCE = "0123456789abcdef0123456789abcdef"
TIMINGS = {"load": 0.5, "fit": 0.2, "predict": 0.3, "total": 1.0}


def encode(values) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f8").tobytes()).decode()


def report(**changes) -> dict:
    base = {
        "status": "ok",
        "error_class": None,
        "message": "",
        "traceback": "",
        "timings": TIMINGS,
        "peak_memory_mb": 100.0,
        "p_up": encode([0.4, math.nan]),
    }
    return {**base, **changes}


def stdout_of(*reports: dict, noise: str = "", nonce: str = NONCE) -> bytes:
    return (noise + "".join(RESULT_MARKER + nonce + json.dumps(r) + "\n" for r in reports)).encode()


def test_the_last_line_with_the_nonce_wins():
    failed = report(status="timeout", error_class="timeout", message="slow", p_up=None)
    parsed = read_report(stdout_of(report(), failed, noise="hello\n"), NONCE)
    assert parsed.status == "timeout" and parsed.p_up is None


def test_a_line_without_the_nonce_is_never_read():
    forged = stdout_of(report(peak_memory_mb=1.0), nonce="f" * 32)
    assert read_report(stdout_of(report()) + forged, NONCE).peak_memory_mb == 100.0
    with pytest.raises(ReportError, match="no result"):
        read_report(forged, NONCE)


def test_probabilities_decode_one_per_row():
    p_up = decode_p_up(read_report(stdout_of(report()), NONCE).p_up or "", rows=2)
    assert p_up[0] == 0.4 and math.isnan(p_up[1])


@pytest.mark.parametrize(
    "stdout",
    [
        b"",
        b"the experiment printed this and died\n",
        (RESULT_MARKER + NONCE + "{not json").encode(),
        stdout_of(report(sharpe=3.0)),  # a score smuggled in: unknown keys are refused
        stdout_of(report(timings={**TIMINGS, "stolen key/1": 1.0})),  # the timings are a fixed set
        stdout_of(report(timings={**TIMINGS, "fit": math.inf})),
        stdout_of(report(status="ok", error_class="timeout")),
        stdout_of(report(status="timeout", error_class="timeout")),  # a failure with predictions
        stdout_of(report(status="ok", p_up=None)),
        stdout_of(report(status="great", error_class=None)),
        stdout_of(report(peak_memory_mb="100")),  # no type coercion
    ],
)
def test_malformed_or_forged_reports_are_refused(stdout):
    with pytest.raises(ReportError):
        read_report(stdout, NONCE)


@pytest.mark.parametrize("encoded", [encode([0.5]), encode([0.5, 0.5, 0.5]), "not base64!", "YWJj"])
def test_probabilities_of_the_wrong_count_or_form_are_refused(encoded):
    with pytest.raises(ReportError):
        decode_p_up(encoded, rows=2)


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
