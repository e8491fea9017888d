"""The numbers an experiment chose, read from the syntax tree: its model's settings and its features' windows.

`model_settings` reads the numeric keyword arguments of the calls in the model source
(`LGBMClassifier(n_estimators=300, learning_rate=0.05)` gives both); `feature_windows` reads the
look-back lengths of the window operations in the feature source (`rolling(30)`, `ewm(span=12)`,
`pct_change(5)`, `shift(1)`). A value that is not a literal number (a name, an expression) is not
read: these are what the policy wrote down, for the post-mortem to say how they moved.
"""

from __future__ import annotations

import ast

from sharpe_rl.syntax import parse_python

#: Window operations (pandas and polars) and the keywords that name their length.
_WINDOW_CALLS = frozenset(
    {"rolling", "ewm", "shift", "pct_change", "diff", "rolling_mean", "rolling_std", "rolling_sum", "rolling_max",
     "rolling_min", "ewm_mean", "ewm_std", "expanding"}
)  # fmt: skip
_LENGTH_KEYWORDS = frozenset({"window", "span", "periods", "n", "window_size", "com", "halflife"})
#: Keywords that choose how a model runs, not what it learns: not settings.
_NOT_SETTINGS = frozenset(
    {"random_state", "seed", "random_seed", "n_jobs", "verbose", "verbosity", "nthread", "num_threads", "thread_count"}
)


def model_settings(source: str) -> dict[str, float]:
    """Numeric keyword arguments of the calls in `source`, by keyword (the last one written wins), seeds and thread
    counts left out; {} if unreadable."""
    settings: dict[str, float] = {}
    for call in _calls(source):
        for keyword in call.keywords:
            value = _number(keyword.value)
            if keyword.arg is not None and keyword.arg not in _NOT_SETTINGS and value is not None:
                settings[keyword.arg] = value
    return settings


def feature_windows(source: str) -> list[float]:
    """The lengths of the window operations in `source`, in source order; [] if unreadable."""
    windows = []
    for call in _calls(source):
        if not (isinstance(call.func, ast.Attribute) and call.func.attr in _WINDOW_CALLS):
            continue
        lengths = [_number(arg) for arg in call.args[:1]]
        lengths += [_number(k.value) for k in call.keywords if k.arg in _LENGTH_KEYWORDS]
        windows += [length for length in lengths if length is not None]
    return windows


def _calls(source: str) -> list[ast.Call]:
    try:
        tree = parse_python(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: null bytes in the source
        return []
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    return sorted(calls, key=lambda node: (node.lineno, node.col_offset))


def _number(node: ast.expr) -> float | None:
    """The value of a literal int or float (a leading minus allowed); None for anything else, booleans included."""
    sign = 1.0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1.0, node.operand
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return sign * float(node.value)
    return None
