"""The tiny policy's training corpus: (rendered prompt -> experiment JSON) pairs.

Each example is a real prompt (both prompt versions, varied bar intervals, horizons and symbols)
followed by the JSON object of one experiment, so the tiny policy learns to answer the prompts
the RL loop will actually show it. An experiment joins 2-6 feature snippets (returns,
volatility, RSI, z-scores, volume ratios, moving-average ratios, ranges, ..., and cross-sectional
ranks and spreads) with one of nine model families (LightGBM, XGBoost, random forest, extra
trees, histogram gradient boosting, logistic regression, k-NN, MLP, a small torch network), all
with varied parameters. Families are assigned round-robin, so each is about one ninth of the
corpus. An experiment is named after its family (`lgbm`, `knn`, ...).

The features follow the panel contract: `make_features(df)` gets every symbol's bars at once,
indexed by (timestamp, symbol) and sorted by timestamp then symbol, and returns one row per
(timestamp, symbol). Its body always starts with `g = df.groupby(level='symbol')`:
- per-symbol snippets read each symbol's own bars only: `g['close'].pct_change(5)` and
  `g['close'].shift(1)` on the groupby, windows through the groupby's own windows,
  `g['close'].rolling(20).mean().droplevel(0)` (or `x.groupby(level='symbol').rolling(...)` for a
  series `x` computed row by row), row-wise expressions such as `(df['high'] - df['low']) /
  df['close']` without grouping. Not `transform(lambda s: ...)`: it calls Python once per symbol
  at every decision, and on the 20-symbol 4h panel a feature set written with it took 30 ms a call
  against 8 ms with the groupby's windows (the same values);
- cross-sectional snippets compare the symbols at the same time: a per-symbol value, then
  `.groupby(level='timestamp').rank(pct=True)` or `.transform('mean')` (momentum, volatility and
  volume ranks, the return against the cross-sectional mean, breadth).
Intermediate variables have fixed names (`gain`, `rolling_mean`, `true_range`, `ret`, ...), so a
snippet's lines agree with each other whatever its window. Every feature is causal: the value at
(t, s) uses bars up to t only (trailing windows, `pct_change`, `diff`, `shift(1)`, `ewm`, the
other symbols' values at t), never `shift(-k)`, centred windows or whole-sample statistics.
Models that cannot take NaN (the first bars of rolling features) impute inside a pipeline, which
is fitted on the training fold only.

A share of the examples (`mistake_share`, 2% by default in `TinyPolicyConfig`) carries exactly
one realistic mistake, so that the RL loop has failures to learn away:
- `missing_column`: one column reference of `df` is replaced by one the dataset lacks
  (`df['Close']`, `df['vwap']`, ...), or the symbol is taken for a column
  (`df.groupby(df['symbol'])`; it is an index level), and fails with KeyError;
- `wrong_argument`: one keyword argument is misspelled (`n_estimator=`, `rolling(20,
  min_period=1)`, ...) and fails with TypeError.
Mistaken examples are still valid ExperimentSpecs whose code parses: they fail only when run.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sharpe_rl.config import EvalConfig
from sharpe_rl.data.clock import Clock
from sharpe_rl.policy.prompts import render_prompt
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS
from sharpe_rl.spec import ExperimentSpec

#: Corpus prompts are rendered in both versions, alternately.
CORPUS_PROMPT_VERSIONS = ("v4_example", "v5_rules")
MISTAKE_KINDS = ("missing_column", "wrong_argument")

_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "AVAXUSDT", "LINKUSDT")
_INTERVALS = (timedelta(days=1), timedelta(hours=4), timedelta(hours=1), timedelta(minutes=15))
_HORIZONS = (1, 1, 1, 2, 3, 5, 6, 12, 24)
_WRONG_COLUMNS = ("vwap", "adj_close", "price", "returns", "quote_volume")
#: The grouping every make_features starts with (`g = ...`): per-symbol features go through it.
GROUP_BY_SYMBOL = "df.groupby(level='symbol')"


@dataclass(frozen=True)
class CorpusExample:
    """One training pair for the tiny policy."""

    prompt_version: str
    prompt: str
    completion: str  # the experiment as one JSON object, exactly what the policy should write
    family: str
    mistake: str | None  # None, or one of MISTAKE_KINDS


# --- feature snippets: (rng) -> lines inside make_features ----------------------------------

Snippet = Callable[[random.Random], list[str]]


def _returns(rng: random.Random) -> list[str]:
    k = rng.choice([1, 2, 3, 5, 10, 20])
    return [f"out['ret_{k}'] = g['close'].pct_change({k})"]


def _log_returns(rng: random.Random) -> list[str]:
    k = rng.choice([1, 3, 7, 14])
    return [f"out['logret_{k}'] = np.log(df['close']).groupby(level='symbol').diff({k})"]


def _volatility(rng: random.Random) -> list[str]:
    w = rng.choice([5, 10, 20, 30, 60])
    return [f"out['vol_{w}'] = g['close'].pct_change().groupby(level='symbol').rolling({w}).std().droplevel(0)"]


def _rsi(rng: random.Random) -> list[str]:
    w = rng.choice([7, 14, 21])
    return [
        "delta = g['close'].diff()",
        f"gain = delta.clip(lower=0).groupby(level='symbol').rolling({w}).mean().droplevel(0)",
        f"loss = (-delta.clip(upper=0)).groupby(level='symbol').rolling({w}).mean().droplevel(0)",
        f"out['rsi_{w}'] = 100 - 100 / (1 + gain / (loss + 1e-12))",
    ]


def _zscore(rng: random.Random) -> list[str]:
    w = rng.choice([10, 20, 50])
    return [
        f"rolling_mean = g['close'].rolling({w}).mean().droplevel(0)",
        f"rolling_std = g['close'].rolling({w}).std().droplevel(0)",
        f"out['zscore_{w}'] = (df['close'] - rolling_mean) / (rolling_std + 1e-12)",
    ]


def _volume_ratio(rng: random.Random) -> list[str]:
    w = rng.choice([5, 10, 20, 50])
    return [f"out['volume_ratio_{w}'] = df['volume'] / (g['volume'].rolling({w}).mean().droplevel(0) + 1e-12)"]


def _volume_zscore(rng: random.Random) -> list[str]:
    w = rng.choice([10, 20, 50])
    return [
        "log_volume = np.log1p(df['volume'])",
        f"log_volume_mean = log_volume.groupby(level='symbol').rolling({w}).mean().droplevel(0)",
        f"log_volume_std = log_volume.groupby(level='symbol').rolling({w}).std().droplevel(0)",
        f"out['volume_z_{w}'] = (np.log1p(df['volume']) - log_volume_mean) / (log_volume_std + 1e-12)",
    ]


def _ma_ratio(rng: random.Random) -> list[str]:
    fast, slow = rng.choice([(3, 10), (5, 20), (10, 50), (20, 100)])
    return [
        f"out['ma_ratio_{fast}_{slow}'] = g['close'].rolling({fast}).mean().droplevel(0) "
        f"/ g['close'].rolling({slow}).mean().droplevel(0) - 1"
    ]


def _ema_gap(rng: random.Random) -> list[str]:
    span = rng.choice([8, 12, 26, 50])
    ema = f"g['close'].ewm(span={span}, adjust=False).mean().droplevel(0)"
    return [f"out['ema_gap_{span}'] = df['close'] / {ema} - 1"]


def _range(rng: random.Random) -> list[str]:
    w = rng.choice([1, 5, 10])
    if w == 1:
        return ["out['range'] = (df['high'] - df['low']) / df['close']"]
    return [
        "bar_range = (df['high'] - df['low']) / df['close']",
        f"out['range_{w}'] = bar_range.groupby(level='symbol').rolling({w}).mean().droplevel(0)",
    ]


def _close_location(rng: random.Random) -> list[str]:
    return ["out['close_location'] = (df['close'] - df['low']) / (df['high'] - df['low'] + 1e-12)"]


def _gap(rng: random.Random) -> list[str]:
    return ["out['gap'] = df['open'] / g['close'].shift(1) - 1"]


def _drawdown(rng: random.Random) -> list[str]:
    w = rng.choice([20, 50, 100])
    return [f"out['drawdown_{w}'] = df['close'] / g['close'].rolling({w}).max().droplevel(0) - 1"]


def _atr(rng: random.Random) -> list[str]:
    w = rng.choice([7, 14, 28])
    return [
        "prev_close = g['close'].shift(1)",
        "true_range = pd.concat([df['high'] - df['low'], (df['high'] - prev_close).abs(), "
        "(df['low'] - prev_close).abs()], axis=1).max(axis=1)",
        f"out['atr_{w}'] = true_range.groupby(level='symbol').rolling({w}).mean().droplevel(0) / df['close']",
    ]


def _stochastic(rng: random.Random) -> list[str]:
    w = rng.choice([9, 14, 30])
    return [
        f"lowest = g['low'].rolling({w}).min().droplevel(0)",
        f"highest = g['high'].rolling({w}).max().droplevel(0)",
        f"out['stoch_{w}'] = (df['close'] - lowest) / (highest - lowest + 1e-12)",
    ]


def _skew(rng: random.Random) -> list[str]:
    w = rng.choice([20, 30, 60])
    return [f"out['skew_{w}'] = g['close'].pct_change().groupby(level='symbol').rolling({w}).skew().droplevel(0)"]


def _parkinson(rng: random.Random) -> list[str]:
    w = rng.choice([10, 20, 30])
    return [
        "log_range_sq = np.log(df['high'] / df['low']) ** 2",
        f"out['parkinson_{w}'] = np.sqrt(log_range_sq.groupby(level='symbol')"
        f".rolling({w}).mean().droplevel(0) / (4 * np.log(2)))",
    ]


def _up_share(rng: random.Random) -> list[str]:
    w = rng.choice([5, 10, 20])
    return [
        "up = (g['close'].diff() > 0).astype(float)",
        f"out['up_share_{w}'] = up.groupby(level='symbol').rolling({w}).mean().droplevel(0)",
    ]


# Cross-sectional snippets: each compares the symbols at the same time (groupby on the "timestamp" level).


def _momentum_rank(rng: random.Random) -> list[str]:
    k = rng.choice([1, 5, 10, 20, 60])
    return [f"out['mom_rank_{k}'] = g['close'].pct_change({k}).groupby(level='timestamp').rank(pct=True)"]


def _return_vs_market(rng: random.Random) -> list[str]:
    k = rng.choice([1, 3, 5, 10])
    return [
        f"ret = g['close'].pct_change({k})",
        f"out['ret_vs_market_{k}'] = ret - ret.groupby(level='timestamp').transform('mean')",
    ]


def _volatility_rank(rng: random.Random) -> list[str]:
    w = rng.choice([10, 20, 30, 60])
    return [
        f"vol = g['close'].pct_change().groupby(level='symbol').rolling({w}).std().droplevel(0)",
        f"out['vol_rank_{w}'] = vol.groupby(level='timestamp').rank(pct=True)",
    ]


def _volume_rank(rng: random.Random) -> list[str]:
    w = rng.choice([5, 10, 20, 50])
    return [
        f"volume_ratio = df['volume'] / (g['volume'].rolling({w}).mean().droplevel(0) + 1e-12)",
        f"out['volume_rank_{w}'] = volume_ratio.groupby(level='timestamp').rank(pct=True)",
    ]


def _breadth(rng: random.Random) -> list[str]:
    k = rng.choice([1, 5, 20])
    return [f"out['breadth_{k}'] = np.sign(g['close'].pct_change({k})).groupby(level='timestamp').transform('mean')"]


#: Each snippet with the columns it reads; a spec only uses snippets its dataset can feed.
FEATURE_SNIPPETS: dict[str, tuple[frozenset[str], Snippet]] = {
    "returns": (frozenset({"close"}), _returns),
    "log_returns": (frozenset({"close"}), _log_returns),
    "volatility": (frozenset({"close"}), _volatility),
    "rsi": (frozenset({"close"}), _rsi),
    "zscore": (frozenset({"close"}), _zscore),
    "volume_ratio": (frozenset({"volume"}), _volume_ratio),
    "volume_zscore": (frozenset({"volume"}), _volume_zscore),
    "ma_ratio": (frozenset({"close"}), _ma_ratio),
    "ema_gap": (frozenset({"close"}), _ema_gap),
    "range": (frozenset({"high", "low", "close"}), _range),
    "close_location": (frozenset({"high", "low", "close"}), _close_location),
    "gap": (frozenset({"open", "close"}), _gap),
    "drawdown": (frozenset({"close"}), _drawdown),
    "atr": (frozenset({"high", "low", "close"}), _atr),
    "stochastic": (frozenset({"high", "low", "close"}), _stochastic),
    "skew": (frozenset({"close"}), _skew),
    "parkinson": (frozenset({"high", "low"}), _parkinson),
    "up_share": (frozenset({"close"}), _up_share),
    "momentum_rank": (frozenset({"close"}), _momentum_rank),
    "return_vs_market": (frozenset({"close"}), _return_vs_market),
    "volatility_rank": (frozenset({"close"}), _volatility_rank),
    "volume_rank": (frozenset({"volume"}), _volume_rank),
    "breadth": (frozenset({"close"}), _breadth),
}


def features_source(lines: list[str]) -> str:
    """The source of a `make_features(df)` whose body is `lines`.

    numpy is always imported and `g` (the panel grouped by symbol) always defined, used or not:
    for a tiny model, a line that depends on one written much later is a long-range dependency it
    gets wrong (NameError) for no benefit.
    """
    body = "\n".join(f"    {line}" for line in lines)
    return (
        "import numpy as np\nimport pandas as pd\n\n\n"
        f"def make_features(df):\n    g = {GROUP_BY_SYMBOL}\n"
        f"    out = pd.DataFrame(index=df.index)\n{body}\n    return out\n"
    )


# --- model families: (rng) -> model source ---------------------------------------------------


def _lightgbm(rng: random.Random) -> str:
    extra = rng.choice(["", ", subsample=0.8, subsample_freq=1", ", colsample_bytree=0.8", ", min_child_samples=50"])
    return (
        "import lightgbm as lgb\n\n\ndef make_model():\n"
        f"    return lgb.LGBMClassifier(n_estimators={rng.choice([100, 200, 300, 500])}, "
        f"learning_rate={rng.choice([0.01, 0.03, 0.05, 0.1])}, num_leaves={rng.choice([7, 15, 31, 63])}{extra}, "
        "verbose=-1)\n"
    )


def _xgboost(rng: random.Random) -> str:
    return (
        "import xgboost as xgb\n\n\ndef make_model():\n"
        f"    return xgb.XGBClassifier(n_estimators={rng.choice([100, 200, 400])}, "
        f"max_depth={rng.choice([2, 3, 4, 6])}, "
        f"learning_rate={rng.choice([0.02, 0.05, 0.1])}, subsample={rng.choice([0.7, 0.8, 1.0])}, "
        f"colsample_bytree={rng.choice([0.7, 0.8, 1.0])}, eval_metric='logloss')\n"
    )


def _forest(class_name: str) -> Callable[[random.Random], str]:
    def make(rng: random.Random) -> str:
        return (
            f"from sklearn.ensemble import {class_name}\n\n\ndef make_model():\n"
            f"    return {class_name}(n_estimators={rng.choice([100, 200, 300])}, "
            f"max_depth={rng.choice([3, 5, 8, None])}, min_samples_leaf={rng.choice([5, 10, 20, 50])}, "
            "random_state=0)\n"
        )

    return make


def _hist_gradient_boosting(rng: random.Random) -> str:
    return (
        "from sklearn.ensemble import HistGradientBoostingClassifier\n\n\ndef make_model():\n"
        f"    return HistGradientBoostingClassifier(max_iter={rng.choice([100, 200, 300])}, "
        f"learning_rate={rng.choice([0.03, 0.05, 0.1])}, max_depth={rng.choice([3, 5, None])}, "
        f"l2_regularization={rng.choice([0.0, 0.1, 1.0])}, random_state=0)\n"
    )


def _scaled_pipeline(import_line: str, estimator: str) -> str:
    return (
        "from sklearn.impute import SimpleImputer\n"
        f"{import_line}\n"
        "from sklearn.pipeline import make_pipeline\n"
        "from sklearn.preprocessing import StandardScaler\n\n\n"
        "def make_model():\n"
        f"    return make_pipeline(SimpleImputer(), StandardScaler(), {estimator})\n"
    )


def _logistic_regression(rng: random.Random) -> str:
    return _scaled_pipeline(
        "from sklearn.linear_model import LogisticRegression",
        f"LogisticRegression(C={rng.choice([0.01, 0.1, 1.0, 10.0])}, max_iter=1000)",
    )


def _knn(rng: random.Random) -> str:
    return _scaled_pipeline(
        "from sklearn.neighbors import KNeighborsClassifier",
        f"KNeighborsClassifier(n_neighbors={rng.choice([5, 15, 25, 50])}, "
        f"weights='{rng.choice(['uniform', 'distance'])}')",
    )


def _mlp(rng: random.Random) -> str:
    return _scaled_pipeline(
        "from sklearn.neural_network import MLPClassifier",
        f"MLPClassifier(hidden_layer_sizes={rng.choice(['(16,)', '(32,)', '(64,)', '(32, 16)'])}, "
        f"alpha={rng.choice([0.0001, 0.001, 0.01])}, max_iter={rng.choice([200, 300, 500])}, random_state=0)",
    )


def _torch(rng: random.Random) -> str:
    return f"""import numpy as np
import torch
from torch import nn


class TorchClassifier:
    def __init__(self, hidden=32, epochs=100, lr=0.01):
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr

    def _inputs(self, X):
        X = np.nan_to_num(np.asarray(X, dtype=np.float32))
        return torch.tensor((X - self.mean_) / self.std_)

    def fit(self, X, y):
        X = np.nan_to_num(np.asarray(X, dtype=np.float32))
        self.mean_ = X.mean(axis=0)
        self.std_ = X.std(axis=0) + 1e-6
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(X.shape[1], self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1))
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        loss_fn = nn.BCEWithLogitsLoss()
        inputs = self._inputs(X)
        targets = torch.tensor(np.asarray(y, dtype=np.float32)).reshape(-1, 1)
        for _ in range(self.epochs):
            optimizer.zero_grad()
            loss = loss_fn(self.net(inputs), targets)
            loss.backward()
            optimizer.step()
        return self

    def predict_proba(self, X):
        with torch.no_grad():
            p = torch.sigmoid(self.net(self._inputs(X))).numpy().ravel()
        return np.column_stack([1 - p, p])


def make_model():
    return TorchClassifier(hidden={rng.choice([16, 32, 64])}, epochs={rng.choice([50, 100, 200])}, \
lr={rng.choice([0.003, 0.01, 0.03])})
"""


#: family -> (short name used in experiment names, model source generator)
MODEL_FAMILIES: dict[str, tuple[str, Callable[[random.Random], str]]] = {
    "lightgbm": ("lgbm", _lightgbm),
    "xgboost": ("xgb", _xgboost),
    "random_forest": ("rf", _forest("RandomForestClassifier")),
    "extra_trees": ("extratrees", _forest("ExtraTreesClassifier")),
    "hist_gradient_boosting": ("hgb", _hist_gradient_boosting),
    "logistic_regression": ("logreg", _logistic_regression),
    "knn": ("knn", _knn),
    "mlp": ("mlp", _mlp),
    "torch": ("torchnet", _torch),
}

#: A misspelled keyword per family that the estimator rejects with TypeError. LightGBM and
#: XGBoost accept unknown keywords with a warning, so their mistake goes into the features.
_WRONG_KEYWORDS = {
    "random_forest": ("n_estimators=", "n_estimator="),
    "extra_trees": ("min_samples_leaf=", "min_sample_leaf="),
    "hist_gradient_boosting": ("max_iter=", "n_estimators="),
    "logistic_regression": ("max_iter=", "max_iters="),
    "knn": ("n_neighbors=", "n_neighbours="),
    "mlp": ("hidden_layer_sizes=", "hidden_layers="),
    "torch": ("hidden=", "hidden_size="),
}


def make_spec(rng: random.Random, family: str, columns: Sequence[str] = OHLCV_COLUMNS) -> ExperimentSpec:
    """A valid, causal experiment of `family` whose features read only `columns`."""
    usable = [name for name, (needs, _) in FEATURE_SNIPPETS.items() if needs <= set(columns)]
    if not usable:
        raise ValueError(f"no feature snippet can be built from columns {list(columns)}")
    chosen = rng.sample(usable, min(len(usable), rng.randint(2, 6)))
    lines = [line for name in chosen for line in FEATURE_SNIPPETS[name][1](rng)]
    short, make_model_source = MODEL_FAMILIES[family]
    # The name is the family's short name. Names are free text the tiny policy writes first; with
    # one per family and first feature ("lgbm_rsi14": 500 names, each a rare token), it also wrote
    # stray names into the code, in about one completion in fifty.
    return ExperimentSpec(name=short, features=features_source(lines), model=make_model_source(rng))


def inject_mistake(spec: ExperimentSpec, family: str, kind: str, rng: random.Random) -> ExperimentSpec:
    """The same experiment with one realistic mistake of `kind` (see the module docstring)."""
    features, model = spec.features, spec.model
    if kind == "missing_column":
        # a column of df the dataset lacks, or the symbol taken for a column (it is an index level)
        targets = [*re.finditer(r"df\['(\w+)'\]", features), *re.finditer(re.escape(GROUP_BY_SYMBOL), features)]
        match = rng.choice(targets)
        if match.group(0) == GROUP_BY_SYMBOL:
            wrong = "df.groupby(df['symbol'])"
        else:
            wrong = f"df['{rng.choice([match.group(1).capitalize(), *_WRONG_COLUMNS])}']"
        features = features[: match.start()] + wrong + features[match.end() :]
    elif kind == "wrong_argument" and family in _WRONG_KEYWORDS:
        right, wrong = _WRONG_KEYWORDS[family]
        model = model.replace(right, wrong, 1)
    elif kind == "wrong_argument":
        features, count = re.subn(r"\.rolling\((\d+)\)", r".rolling(\1, min_period=1)", features, count=1)
        if not count:  # every make_features builds its frame with this call
            features = features.replace("pd.DataFrame(index=", "pd.DataFrame(idx=", 1)
    else:
        raise ValueError(f"unknown mistake kind {kind!r}; expected one of {MISTAKE_KINDS}")
    return spec.model_copy(update={"features": features, "model": model})


def _clock(rng: random.Random, interval: timedelta) -> Clock:
    """A prompt's decisions and label: mostly the defaults for its bars, sometimes every bar or another horizon."""
    decide_every = rng.choice([None, None, None, 1])
    horizon = rng.choice([None, None, *_HORIZONS])
    return Clock.of(EvalConfig(decide_every=decide_every, horizon=horizon), interval)


def _symbols(rng: random.Random) -> list[str] | int:
    """A prompt's symbols: named, or (as runs show them by default) only counted."""
    symbols = sorted(rng.sample(_SYMBOLS, rng.randint(2, 6)))
    return symbols if rng.random() < 0.5 else len(symbols)


def build_corpus(
    size: int, seed: int, mistake_share: float, columns: Sequence[str] = OHLCV_COLUMNS
) -> list[CorpusExample]:
    """`size` examples, deterministic in `seed`; exactly round(size * mistake_share) carry a mistake."""
    rng = random.Random(seed)
    mistaken = set(rng.sample(range(size), round(size * mistake_share)))
    families = list(MODEL_FAMILIES)
    examples = []
    for i in range(size):
        version = CORPUS_PROMPT_VERSIONS[i % len(CORPUS_PROMPT_VERSIONS)]
        family = families[(i // len(CORPUS_PROMPT_VERSIONS)) % len(families)]
        interval = rng.choice(_INTERVALS)
        prompt = render_prompt(
            version,
            columns=columns,
            interval=interval,
            clock=_clock(rng, interval),
            symbols=_symbols(rng),
        )
        spec = make_spec(rng, family, columns)
        mistake = rng.choice(MISTAKE_KINDS) if i in mistaken else None
        if mistake is not None:
            spec = inject_mistake(spec, family, mistake, rng)
        examples.append(
            CorpusExample(
                prompt_version=version,
                prompt=prompt,
                completion=json.dumps(spec.model_dump()),  # the layout the prompts show
                family=family,
                mistake=mistake,
            )
        )
    return examples
