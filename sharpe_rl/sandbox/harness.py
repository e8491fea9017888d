"""The trusted side of the sandbox: owns the data and the protocol, and writes the one result.

Runs as the sandbox's main process (`python harness.py`, with `contract.py`, `protocol.py` and
`worker.py` beside it; in the image at `/opt/harness/`). The generated code never runs here: it
runs in a second process (`worker.py`) that this one starts before any data exists in the
sandbox, and that can reach nothing but a pipe to this process. The point-in-time protocol makes
reading the future impossible rather than detectable:

1. Makes itself non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`), so a process of the same user cannot
   read its memory, its file descriptors or its environment through /proc or ptrace; moves its
   stdout out of the way (fd 1 goes to stderr, the result has a private copy).
2. Starts the worker (stdin /dev/null, stdout = stderr, the two pipe ends its only other files;
   see `worker.py`), which imports its libraries while this process waits.
3. Reads the task from stdin (`contract.encode_task`: spec, folds, decision times, training times,
   horizon, seed, time limit, lookback, nonce, and the bars as arrays). Nothing is mounted into the sandbox. A
   sandbox whose task does not come within `contract.IDLE_SECONDS` exits without a word.
4. Labels every bar itself: 1 if the close `horizon_ns` after the bar's (same symbol) is higher, 0
   if not, NaN when that bar is missing for the symbol (a gap never stretches a label).
5. Per fold, in time order: hands the worker the bars up to the fold's training end, then the labels
   of the training rows only (a training row's label ends before the test window opens, so no label
   reaches into it: the host's folds leave that gap, and the harness drops any label that would look
   at the test window's first bar or later whatever the header says; the rows at the host's
   `training` times, or every bar when it sends none), and waits for the fit; then, for each
   decision time t of the test window (the host's `decisions`, the same times its scoring holds
   positions from), the bars after the previous step up to t, and waits for one probability per bar
   at t; the other test bars are NaN, and their positions are never read. The bars after t are sent
   only once the answer for t is in: the worker never holds a bar later than the time it is
   predicting. Folds follow each other in time, so earlier test bars are legitimate history for
   later folds.
6. Validates every answer (its kind, its exact length, each p_up in [0, 1] or NaN), measures the
   time of each phase and the worker's peak memory itself, and kills the worker's process group.
7. Prints `RESULT_MARKER + nonce + json` on its private stdout and exits at once.

The time limit counts from the task's arrival; a SIGALRM in this process (which the worker cannot
disarm) interrupts any wait, and the host's wall clock is the backstop.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any, BinaryIO

import numpy as np
import protocol
from contract import (
    BAD_TASK_EXIT,
    IDLE_SECONDS,
    RESULT_MARKER,
    TASK_MAGIC,
    WORKER_ERRORS,
    ErrorClass,
    ExperimentFailed,
)

WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
PR_SET_DUMPABLE = 4
TIMING_KEYS = ("load", "fit", "predict", "total")
#: Seconds to wait for a worker that closed its pipe to finish exiting before it is killed.
EXIT_GRACE_SECONDS = 1.0


class WorkerDied(ExperimentFailed):
    """The worker ended without answering (exit status in `status`)."""

    def __init__(self, status: int) -> None:
        if os.WIFSIGNALED(status):
            how = f"was killed by signal {os.WTERMSIG(status)}"
        else:
            how = f"exited with code {os.WEXITSTATUS(status)}"
        super().__init__(ErrorClass.runtime_error, f"the experiment's process {how} before answering")
        self.killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


class TimeLimitExceeded(BaseException):
    """Raised by SIGALRM in this process."""


class Worker:
    """The experiment's process and the two pipes to it."""

    def __init__(self) -> None:
        to_worker_read, to_worker_write = os.pipe()
        from_worker_read, from_worker_write = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-s", WORKER_PATH, str(to_worker_read), str(from_worker_write)],
            pass_fds=(to_worker_read, from_worker_write),
            stdin=subprocess.DEVNULL,
            stdout=2,
            start_new_session=True,  # one process group to kill, whatever it starts
        )
        os.close(to_worker_read)
        os.close(from_worker_write)
        self.outbox = Connection(to_worker_write, readable=False)
        self.inbox = Connection(from_worker_read, writable=False)
        self.status: int | None = None
        self.peak_memory_mb = 0.0

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        try:
            self.outbox.send_bytes(kind + payload)
        except (BrokenPipeError, ConnectionResetError):
            raise self.died() from None

    def ask(self, kind: bytes, payload: bytes = b"") -> tuple[bytes, memoryview]:
        """Send a message and return the kind and payload of the answer (an ERROR raises)."""
        self.send(kind, payload)
        try:
            frame = memoryview(self.inbox.recv_bytes(protocol.MAX_WORKER_FRAME))
        except EOFError:
            raise self.died() from None
        except OSError as exc:  # a frame longer than the protocol allows
            raise ExperimentFailed(
                ErrorClass.runtime_error, f"the experiment's process broke the protocol ({exc})"
            ) from None
        answer, body = bytes(frame[:1]), frame[1:]
        if answer == protocol.ERROR and len(body) >= 1:
            raise worker_error(body)
        return answer, body

    def died(self) -> WorkerDied:
        deadline = time.monotonic() + EXIT_GRACE_SECONDS
        while self.status is None and time.monotonic() < deadline:
            self._reap(os.WNOHANG)
            time.sleep(0.01)
        self.stop()
        assert self.status is not None
        return WorkerDied(self.status)

    def stop(self) -> None:
        """Kill the worker's process group and collect its exit status and peak memory."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.status is None:
            self._reap(0)

    def _reap(self, options: int) -> None:
        pid, status, usage = os.wait4(self.process.pid, options)
        if pid:
            self.status = status
            self.peak_memory_mb = usage.ru_maxrss / 1024  # Linux reports KiB
            self.process.returncode = status  # the Popen object must not wait for it again


def worker_error(body: memoryview) -> ExperimentFailed:
    """An ERROR frame as a failure; a class the worker may not claim becomes runtime_error."""
    code = body[0]
    error_class = WORKER_ERRORS[code] if code < len(WORKER_ERRORS) else ErrorClass.runtime_error
    text = bytes(body[1:]).decode("utf-8", errors="replace")
    message, _, traceback = text.partition("\0")
    return ExperimentFailed(
        error_class, message[: protocol.MAX_MESSAGE_CHARS], traceback[-protocol.MAX_TRACEBACK_CHARS :]
    )


def read_task(stream: BinaryIO) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and the arrays of the task on `stream` (see contract.encode_task)."""
    if stream.read(len(TASK_MAGIC)) != TASK_MAGIC:
        raise ValueError("the input does not start with a task")
    length = int.from_bytes(stream.read(8), "little")
    header = json.loads(stream.read(length))
    arrays = {}
    for name, dtype, size in header.pop("arrays"):
        raw = stream.read(size)
        if len(raw) != size:
            raise ValueError(f"the task ended inside the array {name}")
        arrays[name] = np.frombuffer(raw, dtype=dtype)
    return header, arrays


def forward_labels(timestamps: np.ndarray, close: np.ndarray, horizon_ns: int) -> np.ndarray:
    """1.0 if the close `horizon_ns` after a bar's (same symbol) is higher, 0.0 if not, NaN if that bar is missing.

    `timestamps` and `close` are one symbol's bars, in time order.
    """
    future_time = timestamps + horizon_ns
    j = np.minimum(np.searchsorted(timestamps, future_time), len(timestamps) - 1)
    present = timestamps[j] == future_time
    with np.errstate(divide="ignore", invalid="ignore"):
        forward_return = np.where(present, close[j] / close - 1.0, np.nan)
    return np.where(np.isfinite(forward_return), (forward_return > 0).astype(np.float64), np.nan)


def label_bars(timestamps: np.ndarray, symbols: np.ndarray, close: np.ndarray, horizon_ns: int) -> np.ndarray:
    """The label of every bar (bars sorted by time, then symbol)."""
    labels = np.full(len(timestamps), np.nan)
    for code in np.unique(symbols):
        rows = np.flatnonzero(symbols == code)
        labels[rows] = forward_labels(timestamps[rows], close[rows], horizon_ns)
    return labels


def run_task(
    header: dict[str, Any], arrays: dict[str, np.ndarray], worker: Worker, timings: dict[str, float]
) -> np.ndarray:
    """The point-in-time protocol (module docstring, step 5); returns p_up for every test bar, fold by fold."""
    timestamps, symbols = arrays["timestamp"], arrays["symbol"]
    ohlcv = arrays["ohlcv"].reshape(len(timestamps), 5)
    labels = label_bars(timestamps, symbols, ohlcv[:, 3], int(header["horizon_ns"]))

    def bars(start: int, end: int) -> bytes:
        return protocol.pack_bars(timestamps[start:end], symbols[start:end], ohlcv[start:end])

    times, first_rows = np.unique(timestamps, return_index=True)
    ends = np.append(first_rows[1:], len(timestamps))  # bars of times[i] are rows [first_rows[i], ends[i])
    decisions = set(header["decisions"])  # the host's decision times: asked there, and nowhere else
    # the bars a model is fitted on: the host's training times (the decisions' rule), or every bar
    fitted = np.ones(len(timestamps), bool) if header["training"] is None else np.isin(timestamps, header["training"])

    spec = {**header["spec"], "seed": header["seed"], "lookback_ns": header["lookback_ns"]}
    with timing(timings, "load"):
        expect(worker.ask(protocol.SPEC, json.dumps(spec).encode()), protocol.OK)
    sent = 0
    answers = []
    for fold in header["folds"]:
        train = int(np.searchsorted(timestamps, fold["train_end"], side="right"))
        if train > sent:
            worker.send(protocol.BARS, bars(sent, train))
            sent = train
        # a label is sent only when the bar it looks at comes before the test window's first bar, whatever the
        # folds and training times say: a header without the host's purge gap still cannot leak into the test
        looks_before_test = timestamps[:train] + int(header["horizon_ns"]) < fold["test_start"]
        rows = (timestamps[:train] >= fold["train_start"]) & fitted[:train] & looks_before_test
        fold_labels = np.where(rows, labels[:train], np.nan)
        with timing(timings, "fit"):
            expect(worker.ask(protocol.FIT, fold_labels.astype("<f8").tobytes()), protocol.OK)
        first = int(np.searchsorted(times, fold["test_start"], side="left"))
        last = int(np.searchsorted(times, fold["test_end"], side="right"))
        with timing(timings, "predict"):
            for i in range(first, last):
                rows = ends[i] - first_rows[i]
                if int(times[i]) not in decisions:  # positions change at decisions only
                    answers.append(np.full(rows, np.nan))
                    continue
                answers.append(read_p_up(worker.ask(protocol.STEP, bars(sent, ends[i])), rows))
                sent = ends[i]
    return np.concatenate(answers) if answers else np.empty(0)


@contextlib.contextmanager
def timing(timings: dict[str, float], key: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[key] += time.perf_counter() - started


def expect(answer: tuple[bytes, memoryview], kind: bytes) -> memoryview:
    got, body = answer
    if got != kind or (kind == protocol.OK and len(body)):
        raise ExperimentFailed(ErrorClass.runtime_error, "the experiment's process broke the protocol")
    return body


def read_p_up(answer: tuple[bytes, memoryview], n: int) -> np.ndarray:
    """The n probabilities of a P_UP answer; bad_predictions unless each is in [0, 1] or NaN."""
    body = expect(answer, protocol.P_UP)
    if len(body) != 8 * n:
        raise ExperimentFailed(
            ErrorClass.bad_predictions, f"predict_proba gave {len(body) / 8:g} probabilities for {n} rows"
        )
    p_up = np.frombuffer(body, dtype="<f8").copy()
    outside = ~np.isnan(p_up) & ~((p_up >= 0.0) & (p_up <= 1.0))
    if outside.any():
        raise ExperimentFailed(ErrorClass.bad_predictions, f"p_up must lie in [0, 1]; got {p_up[outside][0]!r}")
    return p_up


def oom_kills() -> int | None:
    """How many processes the memory limit of this sandbox has killed so far (None: not readable here)."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        with contextlib.suppress(OSError), open(path) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return None


def main() -> None:
    """Run one task from stdin, print the one result line on the real stdout, exit without running any hooks."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    sys.stdout.flush()
    result_fd = os.dup(1)  # not inherited by the worker (Python's fds are non-inheritable)
    os.dup2(2, 1)
    oom_before = oom_kills()
    worker = Worker()
    waiting, _, _ = select.select([sys.stdin.buffer], [], [], IDLE_SECONDS)
    if not waiting:  # nobody came for this sandbox
        worker.stop()
        os._exit(0)
    try:
        header, arrays = read_task(sys.stdin.buffer)
    except (ValueError, KeyError, TypeError) as exc:
        print(f"harness: could not read the task: {exc}", file=sys.stderr)
        os._exit(BAD_TASK_EXIT)

    started = time.perf_counter()
    timings = dict.fromkeys(TIMING_KEYS, 0.0)
    time_limit = float(header["time_limit_seconds"])
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    report: dict[str, Any]
    try:
        p_up = run_task(header, arrays, worker, timings)
        report = {"status": "ok", "error_class": None, "message": "", "traceback": ""}
        report["p_up"] = base64.b64encode(p_up.astype("<f8").tobytes()).decode("ascii")
    except TimeLimitExceeded:
        report = failure(ErrorClass.timeout, f"ran past the time limit of {time_limit:g} s")
    except ExperimentFailed as exc:
        report = failure(exc.error_class, str(exc), exc.traceback)
        if isinstance(exc, WorkerDied) and exc.killed and oom_kills() not in (None, oom_before):
            report = failure(ErrorClass.out_of_memory, "the experiment's process was killed at the memory limit")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
    worker.stop()
    timings["total"] = time.perf_counter() - started
    report |= {"timings": timings, "peak_memory_mb": worker.peak_memory_mb}
    line = (RESULT_MARKER + str(header["nonce"]) + json.dumps(report, allow_nan=False) + "\n").encode()
    while line:
        line = line[os.write(result_fd, line) :]
    os._exit(0)


def failure(error_class: ErrorClass, message: str, traceback: str = "") -> dict[str, Any]:
    return {
        "status": error_class.value,
        "error_class": error_class.value,
        "message": message,
        "traceback": traceback,
        "p_up": None,
    }


def _on_alarm(signum: int, frame: object) -> None:
    raise TimeLimitExceeded


if __name__ == "__main__":
    main()
