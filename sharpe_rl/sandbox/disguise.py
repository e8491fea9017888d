"""The data in disguise: what a sandbox task shows of the bars, so that nothing the policy remembers applies.

A language model has read about these markets: "which coin did best each month" fits in a few
hundred characters of code keyed by date, and earns the reward on any window its pretraining saw.
So each task sees the bars under a disguise the host keeps secret:

- every timestamp shifted by a whole number of weeks, `MIN_OFFSET_WEEKS` to `MAX_OFFSET_WEEKS` ahead
  (10 to 50 years): the weekday and the hour of every bar are unchanged, its date and year match no
  market history;
- each symbol's open, high, low and close multiplied by its own power of two (2^k, |k| <=
  `PRICE_EXPONENT`): returns, ratios and every feature built from them are the same to the last bit
  (a power of two scales a float exactly), and a price level no longer says which coin it is;
- the symbols coded in a random order, and the bars of each time ordered by those codes: neither a
  code nor a row's place says which coin it is (the host's own order is alphabetical).

Volume is left as it is: volume levels are no calendar, and features on volume are often logs,
which a scale would change. The folds travel shifted like the bars. The harness answers in the
task's row order; `restore` puts the answers back in the host's order, and the host scores them
on its own, undisguised panel.

A disguise is drawn from a keyed hash of the host's secret key (kept beside the
result cache and never in a sandbox: `load_disguise_key`), the data view and the experiment's code: the same experiment
on the same data sees the same disguise (so results reproduce and cache), and nothing inside the
sandbox can compute it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_OFFSET_WEEKS = 52 * 10
MAX_OFFSET_WEEKS = 52 * 50
#: Prices are scaled by 2^k with k drawn from [-PRICE_EXPONENT, PRICE_EXPONENT].
PRICE_EXPONENT = 10
_WEEK_NS = 7 * 24 * 3600 * 10**9
_KEY_FILE = "disguise.key"


def load_disguise_key(cache_dir: Path) -> str:
    """The host's secret key for disguises (hex), kept in `cache_dir` and made there on first use."""
    path = cache_dir / _KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as f:
        f.write(secrets.token_hex(32))
    return path.read_text().strip()


@dataclass(frozen=True)
class Disguise:
    """One task's disguise: a time offset, a symbol code order and a price scale per symbol."""

    offset_ns: int
    codes: np.ndarray  # the host's symbol code -> the task's
    price_scale: np.ndarray  # per host symbol code: a power of two

    @classmethod
    def draw(cls, key: str, view_hash: str, code_hash: str, n_symbols: int) -> Disguise:
        """The disguise of one experiment (`code_hash`) on one data view, under the host's key."""
        digest = hmac.new(bytes.fromhex(key), f"{view_hash}\0{code_hash}".encode(), hashlib.sha256).digest()
        rng = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
        weeks = int(rng.integers(MIN_OFFSET_WEEKS, MAX_OFFSET_WEEKS + 1))
        exponents = rng.integers(-PRICE_EXPONENT, PRICE_EXPONENT + 1, n_symbols)
        return cls(
            offset_ns=weeks * _WEEK_NS,
            codes=rng.permutation(n_symbols).astype(np.int32),
            price_scale=np.ldexp(1.0, exponents),
        )

    def bars(self, timestamps: np.ndarray, symbols: np.ndarray, ohlcv: np.ndarray) -> tuple[np.ndarray, ...]:
        """The bars (host order) in disguise, in the task's order; returns (timestamps, codes, ohlcv, order),
        `order` the host row of each task row."""
        codes = self.codes[symbols]
        order = np.lexsort((codes, timestamps))
        disguised = ohlcv[order].copy()
        disguised[:, :4] *= self.price_scale[symbols[order]][:, None]
        return timestamps[order] + self.offset_ns, codes[order], disguised, order

    def shift(self, wire_fold: dict[str, int]) -> dict[str, int]:
        """A fold's bounds (nanosecond epoch integers, `Fold.to_wire`) on the disguised clock."""
        return {name: value if name == "index" else value + self.offset_ns for name, value in wire_fold.items()}

    @staticmethod
    def restore(answers: np.ndarray, order: np.ndarray, asked: np.ndarray) -> np.ndarray:
        """Answers given for the host rows `asked` (ascending) in the task's order, back in the host's order."""
        task_position = np.empty(len(order), dtype=np.int64)
        task_position[order] = np.arange(len(order))
        return answers[np.argsort(np.argsort(task_position[asked], kind="stable"), kind="stable")]
