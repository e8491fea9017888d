"""What every executor does: run the harness on one task (sent on its stdin), and report raw facts.

An executor never interprets the experiment's output; it reports what happened to the process
(exit code, killed by the wall clock or by the memory limit) and the captured output, capped.
The runner turns that into an ExecutionResult.

Starting a sandbox costs more than most of what runs in it: a fresh interpreter importing pandas,
scikit-learn and the boosting libraries takes seconds. A sandbox's harness can start, and its
worker import those libraries, before its task exists, so each executor keeps a `WarmPool` of
sandboxes started ahead of their tasks. Each one still runs exactly one task and is then thrown
away: nothing is ever shared between two experiments.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from sharpe_rl.config import SandboxConfig
from sharpe_rl.sandbox import InfrastructureError

log = logging.getLogger(__name__)

#: Seconds the host waits beyond the harness's own time limit (process start, imports) before killing.
HOST_GRACE_SECONDS = 5.0
#: The environment that makes the sandbox import these before its task arrives (see worker.py): the
#: libraries most experiments use. torch and statsmodels are left to the experiments that import them.
PRELOAD = {
    "SHARPE_RL_PRELOAD": "pandas,sklearn.ensemble,sklearn.linear_model,sklearn.pipeline,sklearn.preprocessing,"
    "lightgbm,xgboost"
}
#: Seconds a task waits for a sandbox of the warm pool that is being started before starting its own.
START_WAIT_SECONDS = 10.0
#: How much of stderr is kept for the result.
STDERR_TAIL_BYTES = 4000


@dataclass(frozen=True)
class RawOutcome:
    """What happened to one sandbox process."""

    stdout: bytes  # capped; the harness's result line is the last thing it writes
    stderr_tail: str
    exit_code: int | None  # None when it was killed from the host
    timed_out: bool  # killed by the host's wall clock (or, process executor, the CPU-time limit)
    oom_killed: bool  # killed by the memory limit
    wall_seconds: float


class Executor(Protocol):
    name: str
    config: SandboxConfig

    def execute(self, task: bytes) -> RawOutcome:
        """Run the harness with `task` on its stdin; raise InfrastructureError if it cannot."""
        ...

    def close(self) -> None:
        """Remove the sandboxes started ahead of their tasks."""
        ...


Sandbox = TypeVar("Sandbox")


class WarmPool(Generic[Sandbox]):
    """Sandboxes started ahead of their tasks (from the first task on), each taken once, each take replaced.

    `start` makes a sandbox whose harness waits for its task, `alive` says whether one still waits,
    `discard` removes one. With size 0 every take starts a sandbox on the spot.

    The pool starts its sandboxes on one thread of its own that lives as long as the pool: a sandbox
    may live only as long as the thread that started it (bubblewrap's `--die-with-parent` is tied to
    that thread, and a sandbox started on a short-lived thread was SIGKILLed as the thread ended).
    """

    def __init__(
        self,
        size: int,
        start: Callable[[], Sandbox],
        alive: Callable[[Sandbox], bool],
        discard: Callable[[Sandbox], None],
    ) -> None:
        self.size = size
        self._start, self._alive, self._discard = start, alive, discard
        self._ready: queue.SimpleQueue[Sandbox] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._filled = False  # filled at the first take: a run whose results all come from the cache starts nothing
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()  # True: start one; False: stop
        self._starter: threading.Thread | None = None

    def take(self) -> Sandbox:
        """A waiting sandbox (started now when none comes in time); a replacement starts in the background.

        After the first take the pool owns `size` sandboxes, waiting or starting: every take starts one
        replacement, so it never grows past that, and a take waits for one being started rather than
        starting another.
        """
        if not self.size:
            return self._start()
        for _ in range(1 if self._filled else self.size + 1):
            self._refill()
        self._filled = True
        while True:
            try:
                sandbox = self._ready.get(timeout=START_WAIT_SECONDS)
            except queue.Empty:  # the engine is slow or failing: start one here, and report its fault
                return self._start()
            if self._alive(sandbox):
                return sandbox
            self._discard(sandbox)  # it died while waiting (the engine restarted, say): never give it a task
            self._refill()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._requests.put(False)
        while True:
            try:
                self._discard(self._ready.get_nowait())
            except queue.Empty:
                return

    def _refill(self) -> None:
        with self._lock:
            if self._starter is None:
                self._starter = threading.Thread(target=self._start_requested, daemon=True, name="sandbox-warm-pool")
                self._starter.start()
        self._requests.put(True)

    def _start_requested(self) -> None:
        """The pool's own thread: start a sandbox per request until the pool closes."""
        while self._requests.get():
            self._add_one()

    def _add_one(self) -> None:
        try:
            sandbox = self._start()
        except InfrastructureError as exc:  # a take will start one itself, and report the fault
            log.warning("could not start a sandbox ahead of its task: %s", exc)
            return
        with self._lock:
            if not self._closed:
                self._ready.put(sandbox)
                return
        self._discard(sandbox)


def host_time_limit(config: SandboxConfig) -> float:
    """Wall-clock seconds after which the host kills the sandbox."""
    return config.timeout_seconds + HOST_GRACE_SECONDS


def decode_tail(data: bytes, limit: int = STDERR_TAIL_BYTES) -> str:
    return data[-limit:].decode("utf-8", errors="replace")
