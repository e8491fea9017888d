"""Market data: the OHLCV panel, its data card, the sources that produce it, and the evaluation timeline."""

from sharpe_rl.data.card import DataCard, Provenance, SymbolStats, card_path, verified_card
from sharpe_rl.data.panel import PANEL_SCHEMA, PanelError, detect_interval, load_panel, validate_panel, write_panel
from sharpe_rl.data.sources import FetchedPanel, SourceError, fetch_binance, fetch_sample, import_file

__all__ = [
    "PANEL_SCHEMA",
    "DataCard",
    "FetchedPanel",
    "PanelError",
    "Provenance",
    "SourceError",
    "SymbolStats",
    "card_path",
    "detect_interval",
    "fetch_binance",
    "fetch_sample",
    "import_file",
    "load_panel",
    "validate_panel",
    "verified_card",
    "write_panel",
]
