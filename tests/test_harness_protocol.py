"""The trusted harness's protocol, checked message by message with a recording stand-in for the worker.

These are the guarantees the reward rests on, stated on what the harness sends: the experiment's
process never receives a bar later than the time it is asked to predict, receives labels only for
training rows whose horizon ends before the test window, and is asked exactly at the host's
rebalance bars, fold after fold. The labels themselves are checked against answers written by
hand (tests/vectorised_reference.py imports the harness's labelling, so it cannot). And a worker
process that breaks the protocol (a frame too long, a wrong count of probabilities, an error code
it may not claim, an answer of the wrong kind) ends in the failure class the harness documents.
"""

from __future__ import annotations

import io
import json
import sys
from datetime import timedelta

import numpy as np
import pytest
from data_fixtures import three_symbol_panel

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.evaluation import EvaluationRef, load_evaluation
from sharpe_rl.sandbox.disguise import Disguise
from sharpe_rl.sandbox.image import HARNESS_DIR
from sharpe_rl.sandbox.runner import Job, SandboxRunner
from sharpe_rl.spec import ExperimentSpec

sys.path.insert(0, str(HARNESS_DIR))
import harness
import protocol
from contract import ErrorClass


class RecordingWorker:
    """Answers like an experiment that predicts 0.5 everywhere, and remembers what it was sent."""

    def __init__(self) -> None:
        self.latest_bar = np.iinfo(np.int64).min
        self.bars_seen = 0
        self.fits: list[np.ndarray] = []
        self.asked_at: list[int] = []
        self.timestamps = np.empty(0, dtype=np.int64)
        self.decisions: list[int] = []

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        assert kind == protocol.BARS
        self._receive(payload)

    def ask(self, kind: bytes, payload: bytes = b"") -> tuple[bytes, memoryview]:
        if kind == protocol.SPEC:
            json.loads(payload)
            return protocol.OK, memoryview(b"")
        if kind == protocol.FIT:
            labels = np.frombuffer(payload, dtype="<f8")
            assert len(labels) <= self.bars_seen  # labels only for bars it already holds
            self.fits.append(labels.copy())
            return protocol.OK, memoryview(b"")
        assert kind == protocol.STEP
        timestamps = self._receive(payload)
        t = timestamps[-1]
        self.asked_at.append(int(t))
        return protocol.P_UP, memoryview(np.full(int((timestamps == t).sum()), 0.5).tobytes())

    def _receive(self, payload: bytes) -> np.ndarray:
        timestamps, _, _ = protocol.unpack_bars(payload)
        assert len(timestamps) > 0
        assert timestamps[0] >= self.latest_bar and np.all(np.diff(timestamps) >= 0)  # in time order
        self.latest_bar = int(timestamps[-1])
        self.bars_seen += len(timestamps)
        self.timestamps = np.concatenate([self.timestamps, timestamps])
        return timestamps


SPEC = ExperimentSpec(name="x", features="def make_features(df):\n    return df", model="def make_model():\n    pass")


def run(eval_cfg: EvalConfig, tmp_path, holdout: bool = False) -> tuple[Job, RecordingWorker, np.ndarray]:
    """Run the harness's protocol against the recording worker; returns the job, the worker and the answers (the
    worker's `decisions` are the host's for the job, on the host's clock)."""
    runner = SandboxRunner(three_symbol_panel(), eval_cfg, SandboxConfig(executor="process", warm_pool=False), tmp_path)
    if holdout:
        job = Job(SPEC, runner.holdout_view, [runner.plan.holdout_fold])
    else:
        job = Job(SPEC, runner.reward_view, runner.plan.folds)
    task, order = runner.task(job, nonce="n")
    header, arrays = harness.read_task(io.BytesIO(task))
    worker = RecordingWorker()
    p_up = harness.run_task(header, arrays, worker, dict.fromkeys(harness.TIMING_KEYS, 0.0))
    # the worker saw the bars in disguise: its clock runs a secret number of weeks ahead of the host's
    offset = header["folds"][0]["test_start"] - job.folds[0].to_wire()["test_start"]
    worker.asked_at = [t - offset for t in worker.asked_at]
    worker.timestamps = worker.timestamps - offset
    worker.decisions = runner.decisions(job).tolist()
    return job, worker, Disguise.restore(p_up, order, job.view.test_indices(job.folds))


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("holdout", [False, True])
def test_no_bar_after_t_is_sent_before_the_answer_for_t(tmp_path, every, holdout):
    job, worker, p_up = run(EvalConfig(decide_every=every, horizon=3, embargo=1), tmp_path, holdout)
    # every answer was asked for the latest bar it held (RecordingWorker checked the time order)
    assert worker.asked_at == sorted(set(worker.asked_at))
    rows = job.view.test_rows(job.folds)
    assert len(p_up) == rows.height  # one probability per test row, in the host's order
    # asked at every decision (every `every` bars of these daily bars) from the first test bar on, which are the
    # times the host's scoring holds its positions from
    test_times = rows.get_column("timestamp").unique().sort().dt.epoch("ns").to_list()
    assert worker.asked_at == test_times[::every] == worker.decisions


@pytest.mark.parametrize("holdout", [False, True])
def test_labels_reach_only_training_rows_whose_horizon_ends_before_the_test(tmp_path, holdout):
    horizon = 3
    job, worker, _ = run(EvalConfig(horizon=horizon, embargo=2), tmp_path, holdout)
    assert len(worker.fits) == len(job.folds)
    day = 86400 * 10**9
    for fold, labels in zip(job.folds, worker.fits, strict=True):
        wire = fold.to_wire()
        labelled = worker.timestamps[: len(labels)][~np.isnan(labels)]
        assert labelled.max() <= wire["train_end"]
        # the close each label looks at (horizon days later) closes before the test window opens
        assert labelled.max() + horizon * day + day <= wire["test_start"]


def test_a_header_without_the_purge_gap_still_sends_no_label_that_looks_into_the_test(tmp_path):
    """The host's folds leave `horizon + embargo` between training and test, and it sends the training times; a
    header that does neither (a host bug, or a task written by anyone else) must not leak labels either: the
    harness drops every label that looks at the test window's first bar or later."""
    horizon, day = 3, 86400 * 10**9
    runner = SandboxRunner(
        three_symbol_panel(), EvalConfig(horizon=horizon), SandboxConfig(executor="process", warm_pool=False), tmp_path
    )
    task, _ = runner.task(Job(SPEC, runner.reward_view, runner.plan.folds), nonce="n")
    header, arrays = harness.read_task(io.BytesIO(task))
    forged = {
        **header,
        "training": None,  # every bar
        "folds": [{**fold, "train_end": fold["test_start"] - day} for fold in header["folds"]],  # no gap at all
    }
    worker = RecordingWorker()
    harness.run_task(forged, arrays, worker, dict.fromkeys(harness.TIMING_KEYS, 0.0))
    for fold, labels in zip(forged["folds"], worker.fits, strict=True):
        labelled = worker.timestamps[: len(labels)][~np.isnan(labels)]
        assert len(labels) and labelled.size  # it was fitted, on the labels that are safe
        assert labelled.max() + horizon * day < fold["test_start"]  # the bar each label looks at comes before it
        # and every label that is safe was sent: the guard drops the leaking ones only
        safe = (worker.timestamps[: len(labels)] + horizon * day < fold["test_start"]) & (
            worker.timestamps[: len(labels)] >= fold["train_start"]
        )
        labels_of_safe = harness.label_bars(
            arrays["timestamp"], arrays["symbol"], arrays["ohlcv"].reshape(-1, 5)[:, 3], horizon * day
        )[: len(labels)][safe]
        np.testing.assert_array_equal(labels[safe], labels_of_safe)


@pytest.mark.parametrize("fit_on", ["decisions", "bars"])
def test_models_are_fitted_on_the_rows_at_decision_times_or_on_every_bar(tmp_path, fit_on):
    job, worker, _ = run(EvalConfig(decide_every=5, fit_on=fit_on), tmp_path)
    timeline = np.unique(job.view.timestamps)
    for labels in worker.fits:
        labelled = np.unique(worker.timestamps[: len(labels)][~np.isnan(labels)])
        on_the_clock = np.isin(labelled, timeline[::5])  # the rule's bars from the first on: every 5th
        assert on_the_clock.all() if fit_on == "decisions" else on_the_clock.mean() < 0.3


def test_only_decisions_are_asked_and_the_rest_are_nan(tmp_path):
    job, worker, p_up = run(EvalConfig(decide_every=5), tmp_path)
    rows = job.view.test_rows(job.folds)
    times = rows.get_column("timestamp").unique().sort().dt.epoch("ns").to_list()
    assert worker.asked_at == times[::5]
    asked = rows.get_column("timestamp").dt.epoch("ns").is_in(worker.asked_at).to_numpy()
    assert np.all(p_up[asked] == 0.5) and np.all(np.isnan(p_up[~asked]))


def test_the_first_fold_trains_before_any_test_bar_is_sent(tmp_path):
    job, worker, _ = run(EvalConfig(), tmp_path)
    first_fit_rows = len(worker.fits[0])
    assert worker.timestamps[first_fit_rows - 1] <= job.folds[0].to_wire()["train_end"]
    assert worker.asked_at[0] == job.folds[0].to_wire()["test_start"]
    assert timedelta(0) < job.folds[0].test_start - job.folds[0].train_end


@pytest.mark.parametrize(
    "eval_cfg",
    [EvalConfig(), EvalConfig(horizon=3, embargo=1), EvalConfig(decide_every=5), EvalConfig(decide_every=7)],
)
def test_the_workload_a_run_announces_counts_the_feature_calls_the_harness_asks_for(tmp_path, eval_cfg):
    _, worker, _ = run(eval_cfg, tmp_path)
    calls = len(worker.asked_at) + len(worker.fits)  # one make_features call per decision and one per fit
    dataset = tmp_path / "panel.parquet"
    three_symbol_panel().write_parquet(dataset)
    ref = EvaluationRef.of(dataset, eval_cfg, SandboxConfig(executor="process"), tmp_path / "cache")
    loaded = load_evaluation(ref)
    assert loaded.feature_calls == calls
    assert f": {calls:,} make_features calls per experiment" in loaded.workload()
    assert "warning" not in loaded.workload()


def test_a_run_whose_experiments_cannot_finish_in_the_time_limit_is_warned(tmp_path):
    dataset = tmp_path / "panel.parquet"
    three_symbol_panel().write_parquet(dataset)
    tight = SandboxConfig(executor="process", timeout_seconds=0.1)
    loaded = load_evaluation(EvaluationRef.of(dataset, EvalConfig(), tight, tmp_path / "cache"))
    assert "past the sandbox's 0.1 s limit: most experiments will time out" in loaded.workload()
    assert "eval.decide_every" in loaded.workload()


# ---- labels, known answers: two symbols, B missing at t2, A's close equal at t1 and t2 ----

#: (time, symbol code, close), sorted by time then symbol, as the harness holds its bars.
LABELLED_BARS = [
    (0, 0, 10.0), (0, 1, 5.0),
    (1, 0, 11.0), (1, 1, 6.0),
    (2, 0, 11.0),
    (3, 0, 9.0), (3, 1, 4.0),
    (4, 0, 12.0), (4, 1, 7.0),
]  # fmt: skip
NAN = float("nan")
#: Written out by hand: 1 if the close `horizon` days later (daily bars t0..t4) is higher, 0 if it is
#: not (a tie is 0), NaN if that bar is missing (B at t2: a gap never stretches a label) or past the end.
HAND_LABELS = {
    #     A t0  B t0  A t1  B t1  A t2  A t3  B t3  A t4  B t4
    1: [1.0, 1.0, 0.0, NAN, 0.0, 1.0, 1.0, NAN, NAN],  # A: 10→11, 11→11 (tie), 11→9, 9→12; B: 5→6, 4→7
    2: [1.0, NAN, 0.0, 0.0, 1.0, NAN, NAN, NAN, NAN],  # A: 10→11, 11→9, 11→12; B: 6→4
}


@pytest.mark.parametrize("horizon", [1, 2])
def test_each_bar_is_labelled_by_its_own_close_horizon_days_later(horizon):
    times, codes, close = (np.array(column) for column in zip(*LABELLED_BARS, strict=True))
    timestamps = (np.datetime64("2024-01-01", "ns") + times * np.timedelta64(1, "D")).astype(np.int64)
    labels = harness.label_bars(timestamps, codes.astype(np.int32), close, horizon * 86400 * 10**9)
    np.testing.assert_array_equal(labels, HAND_LABELS[horizon])


# ---- a worker that breaks the protocol: each ends in its failure class, over a real pipe ----

#: A worker process that answers as protocol.py says (OK to SPEC and FIT, 0.5 for each bar at t)
#: except where `broken(kind, payload)` returns a raw frame to send instead: the generated code runs
#: in the worker's process and can write anything to its pipe.
FAKE_WORKER = """
import sys
from multiprocessing.connection import Connection

import numpy as np

sys.path.insert(0, {harness_dir!r})
import protocol
from contract import WORKER_ERRORS, ErrorClass


def rows_at_t(payload):
    timestamps, _, _ = protocol.unpack_bars(payload)
    return int((timestamps == timestamps[-1]).sum())


def broken(kind, payload):
    {broken}


inbox, outbox = Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)
while True:
    frame = inbox.recv_bytes()
    kind, payload = frame[:1], frame[1:]
    if kind == protocol.BARS:
        continue
    answer = protocol.P_UP + np.full(rows_at_t(payload), 0.5).tobytes() if kind == protocol.STEP else protocol.OK
    outbox.send_bytes(broken(kind, payload) or answer)
"""
BROKE_THE_PROTOCOL = "the experiment's process broke the protocol"
#: name -> (what `broken` returns, the error class and the message the harness must end in; {rows} is
#: the number of bars at the first test time, {frame} the longest frame the harness accepts).
BROKEN_WORKERS = {
    "a frame one byte too long": (
        "return protocol.P_UP + bytes(protocol.MAX_WORKER_FRAME) if kind == protocol.STEP else None",
        ErrorClass.runtime_error,
        BROKE_THE_PROTOCOL + " (bad message length)",
    ),
    "a frame of the longest length, read and judged": (
        "return protocol.P_UP + bytes(protocol.MAX_WORKER_FRAME - 1) if kind == protocol.STEP else None",
        ErrorClass.bad_predictions,
        "predict_proba gave {frame:g} probabilities for {rows} rows",
    ),
    "one probability too few": (
        "return protocol.P_UP + np.full(rows_at_t(payload) - 1, 0.5).tobytes() if kind == protocol.STEP else None",
        ErrorClass.bad_predictions,
        "predict_proba gave {fewer} probabilities for {rows} rows",
    ),
    "one probability too many": (
        "return protocol.P_UP + np.full(rows_at_t(payload) + 1, 0.5).tobytes() if kind == protocol.STEP else None",
        ErrorClass.bad_predictions,
        "predict_proba gave {more} probabilities for {rows} rows",
    ),
    "half a probability more": (
        "return protocol.P_UP + bytes(8 * rows_at_t(payload) + 4) if kind == protocol.STEP else None",
        ErrorClass.bad_predictions,
        "predict_proba gave {half:g} probabilities for {rows} rows",
    ),
    "an error code past the classes it may claim": (
        "return protocol.ERROR + bytes([len(WORKER_ERRORS)]) + b'made up\\0its traceback' if kind == protocol.FIT "
        "else None",
        ErrorClass.runtime_error,
        "made up",
    ),
    "the largest error code": (
        "return protocol.ERROR + bytes([255]) + b'made up\\0its traceback' if kind == protocol.FIT else None",
        ErrorClass.runtime_error,
        "made up",
    ),
    "an error code it may claim": (
        "return protocol.error_frame(WORKER_ERRORS.index(ErrorClass.value_error), 'bad C', 'its traceback') "
        "if kind == protocol.FIT else None",
        ErrorClass.value_error,
        "bad C",
    ),
    "an error report without its code": (
        "return protocol.ERROR if kind == protocol.FIT else None",
        ErrorClass.runtime_error,
        BROKE_THE_PROTOCOL,
    ),
    "probabilities for the spec": (
        "return protocol.P_UP if kind == protocol.SPEC else None",
        ErrorClass.runtime_error,
        BROKE_THE_PROTOCOL,
    ),
    "OK for a step": (
        "return protocol.OK if kind == protocol.STEP else None",
        ErrorClass.runtime_error,
        BROKE_THE_PROTOCOL,
    ),
    "an OK that says more": (
        "return protocol.OK + b'x' if kind == protocol.FIT else None",
        ErrorClass.runtime_error,
        BROKE_THE_PROTOCOL,
    ),
    "a kind the protocol does not have": (
        "return b'Z' + bytes(8) if kind == protocol.STEP else None",
        ErrorClass.runtime_error,
        BROKE_THE_PROTOCOL,
    ),
}


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> tuple[dict, dict[str, np.ndarray]]:
    """The harness's task for the reward folds of the synthetic panel, as it reads it from stdin."""
    runner = SandboxRunner(
        three_symbol_panel(),
        EvalConfig(),
        SandboxConfig(executor="process", warm_pool=False),
        tmp_path_factory.mktemp("task"),
    )
    task, _ = runner.task(Job(SPEC, runner.reward_view, runner.plan.folds), nonce="n")
    return harness.read_task(io.BytesIO(task))


@pytest.mark.parametrize("name", list(BROKEN_WORKERS))
def test_a_worker_that_breaks_the_protocol_ends_in_its_failure_class(task, tmp_path, monkeypatch, name):
    broken, error_class, message = BROKEN_WORKERS[name]
    fake = tmp_path / "worker.py"
    fake.write_text(FAKE_WORKER.format(harness_dir=str(HARNESS_DIR), broken=broken))
    monkeypatch.setattr(harness, "WORKER_PATH", str(fake))
    header, arrays = task
    worker = harness.Worker()
    try:
        with pytest.raises(harness.ExperimentFailed) as failed:
            harness.run_task(header, arrays, worker, dict.fromkeys(harness.TIMING_KEYS, 0.0))
    finally:
        worker.stop()
    rows = int((arrays["timestamp"] == header["folds"][0]["test_start"]).sum())
    counts = {"rows": rows, "fewer": rows - 1, "more": rows + 1, "half": rows + 0.5}
    expected = message.format(frame=(protocol.MAX_WORKER_FRAME - 1) / 8, **counts)
    assert (failed.value.error_class, str(failed.value)) == (error_class, expected)
    if "error code" in name:
        assert failed.value.traceback == "its traceback"
