"""What every executor does: run the harness on one task (sent on its stdin), and report raw facts.

An executor never interprets the experiment's output; it reports what happened to the process
(exit code, killed by the wall clock or by the memory limit) and the captured output, capped.
The runner turns that into an ExecutionResult.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sharpe_rl.config import SandboxConfig

#: Seconds the host waits beyond the harness's own time limit (process start, imports) before killing.
HOST_GRACE_SECONDS = 5.0
#: The environment that makes the sandbox import these before its task arrives (see worker.py).
PRELOAD = {"SHARPE_RL_PRELOAD": "pandas"}
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


def host_time_limit(config: SandboxConfig) -> float:
    """Wall-clock seconds after which the host kills the sandbox."""
    return config.timeout_seconds + HOST_GRACE_SECONDS


def decode_tail(data: bytes, limit: int = STDERR_TAIL_BYTES) -> str:
    return data[-limit:].decode("utf-8", errors="replace")
