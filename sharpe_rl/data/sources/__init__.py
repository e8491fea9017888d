"""Where panels come from: `sample` (offline default, from PyPI), `binance` (public dumps) and `file` (yours).

Each source writes a panel under `data/` with its data card beside it and returns `FetchedPanel`s.
"""

from sharpe_rl.data.sources.base import FetchedPanel, ProgressFn, SourceError
from sharpe_rl.data.sources.binance import fetch_binance
from sharpe_rl.data.sources.local import import_file
from sharpe_rl.data.sources.sample import fetch_sample

__all__ = ["FetchedPanel", "ProgressFn", "SourceError", "fetch_binance", "fetch_sample", "import_file"]
