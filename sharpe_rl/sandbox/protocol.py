"""The pipe between the trusted harness and the experiment's process, inside the sandbox.

Copied into the sandbox image beside `harness.py` and `worker.py`; NumPy and the standard library
only. Every message is one length-prefixed frame (`multiprocessing.connection.Connection`'s
`send_bytes`/`recv_bytes`, never pickle): a one-byte kind, then its payload.

harness -> worker (trusted to untrusted)
    SPEC   JSON {"features": str, "model": str, "seed": int, "lookback_ns": int}
    BARS   the next bars in time order (no answer)
    FIT    float64 labels of the first len(labels) bars delivered so far (NaN: no label);
           the worker fits a fresh make_model() on those rows
    STEP   bars: the next bars in time order, the last of them at the decision time t; the worker
           answers for the bars at t, in the order they came
    (bars are packed by `pack_bars`: int64 ns timestamps, int32 symbol codes, float64 OHLCV)

worker -> harness (untrusted to trusted; the harness validates every frame)
    OK       the SPEC loaded, or the FIT is done
    P_UP     float64 probabilities, exactly one per bar at t, each in [0, 1] or NaN
    ERROR    one byte (an index into contract.WORKER_ERRORS), the message, NUL, the traceback
"""

from __future__ import annotations

import numpy as np

SPEC = b"S"
BARS = b"B"
FIT = b"F"
STEP = b"T"
OK = b"K"
P_UP = b"P"
ERROR = b"E"

#: Bytes per bar in a STEP frame: timestamp (8), symbol code (4), open/high/low/close/volume (5 x 8).
BAR_BYTES = 8 + 4 + 5 * 8
#: Longest frame the harness accepts from the worker (a P_UP of 1M symbols, or an error report).
MAX_WORKER_FRAME = 8 * 2**20
MAX_MESSAGE_CHARS = 500
MAX_TRACEBACK_CHARS = 4000


def pack_bars(timestamps: np.ndarray, symbols: np.ndarray, ohlcv: np.ndarray) -> bytes:
    """Bars as one payload: all timestamps, then all symbol codes, then the (n, 5) OHLCV block."""
    return b"".join(
        [
            np.ascontiguousarray(timestamps, dtype="<i8").tobytes(),
            np.ascontiguousarray(symbols, dtype="<i4").tobytes(),
            np.ascontiguousarray(ohlcv, dtype="<f8").tobytes(),
        ]
    )


def unpack_bars(payload: bytes | memoryview) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverse of `pack_bars`: (timestamps int64, symbol codes int32, OHLCV float64 (n, 5))."""
    n = len(payload) // BAR_BYTES
    timestamps = np.frombuffer(payload, dtype="<i8", count=n)
    symbols = np.frombuffer(payload, dtype="<i4", count=n, offset=8 * n)
    ohlcv = np.frombuffer(payload, dtype="<f8", count=5 * n, offset=12 * n).reshape(n, 5)
    return timestamps, symbols, ohlcv


def error_frame(code: int, message: str, traceback: str) -> bytes:
    text = message[:MAX_MESSAGE_CHARS] + "\0" + traceback[-MAX_TRACEBACK_CHARS:]
    return ERROR + bytes([code]) + text.encode("utf-8", errors="replace")
