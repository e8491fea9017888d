"""The quality-diversity grid's vocabulary: model families, feature building blocks and their cells.

The reward's diversity bonus (`sharpe_rl.diversity`), the archive of elites (`sharpe_rl.archive`)
and the post-mortem all speak it; `sharpe_rl.classify` places an experiment in it.

Cells: the quality-diversity grid is (model-family label × feature building block). An experiment
occupies one cell per building block its features use (`Classification.cells`), so a LightGBM
model on returns and volume sits in (lightgbm, returns) and (lightgbm, volume). Whole combinations
of blocks would make nearly every experiment a cell of its own (44 combinations in the 48
experiments of docs/example-run), leaving nothing to count or compare.
"""

from __future__ import annotations

#: Model families, in the order the report lists them.
MODEL_FAMILIES = ("lightgbm", "xgboost", "sklearn", "torch", "statsmodels", "ensemble", "other", "unknown")
#: Kinds of scikit-learn estimator (the `kind` of family "sklearn").
SKLEARN_KINDS = ("trees", "boosting", "linear", "knn", "svm", "mlp", "naive_bayes", "other")
#: Feature building blocks, in the order the report lists them.
FEATURE_BLOCKS = (
    "returns",
    "volatility",
    "oscillators",
    "volume",
    "trend",
    "calendar",
    "cross_section",
    "cross_asset",
    "other",
)
#: The model-family labels a classified experiment can get (`ModelClass.label`), "unknown" excepted.
MODEL_LABELS = tuple(
    label
    for family in MODEL_FAMILIES
    if family != "unknown"
    for label in ([f"sklearn/{kind}" for kind in SKLEARN_KINDS] if family == "sklearn" else [family])
)
#: One cell of the quality-diversity grid: (model-family label, feature building block).
Cell = tuple[str, str]
#: Every cell of the grid, family by family.
GRID_CELLS: tuple[Cell, ...] = tuple((label, block) for label in MODEL_LABELS for block in FEATURE_BLOCKS)
#: Each feature kind, and the building block it belongs to.
FEATURE_KIND_BLOCK = {
    "return": "returns",  # pct_change, diff, log returns, x / x.shift(n)
    "std": "volatility",  # rolling/ewm standard deviation or variance
    "range": "volatility",  # high - low, true range, ATR
    "moments": "volatility",  # rolling skewness or kurtosis of returns
    "rsi": "oscillators",
    "stochastic": "oscillators",  # rolling min and max together: stochastic %K, Williams %R
    "macd": "oscillators",  # difference of two EMAs
    "zscore": "oscillators",  # (x - rolling mean) / rolling std
    "volume": "volume",  # anything computed from volume: ratios, OBV, VWAP
    "sma": "trend",  # rolling mean (moving-average ratios, crossovers, momentum)
    "ema": "trend",
    "calendar": "calendar",  # index.hour, dayofweek, month
    "cross_section": "cross_section",  # compares the symbols at each time: groupby(level="timestamp"), rank(axis=1)
    "cross_asset": "cross_asset",  # names a symbol: a ticker ("BTCUSDT_close"), xs(code, level="symbol")
    "raw": "other",  # a raw column or a lag of it, or arithmetic the reader does not recognise
}
#: The kinds the prompt's worked example uses: lagged returns, rolling volatility, a moving-average
#: ratio. Features that use any other kind (except raw columns) are custom feature engineering.
TEMPLATE_FEATURE_KINDS = frozenset({"return", "std", "sma"})
