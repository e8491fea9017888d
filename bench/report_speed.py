"""How long the post-mortem of an overnight run takes: 48 cycles × 16 experiments, plots included.

Builds a synthetic replay-buffer frame (the columns `ReplayBuffer.frame()` yields) whose specs
are realistic code: several model families, wrappers and pipelines, template and custom
features, with parameters varied so most programs are distinct and some repeat, the original
post-mortem's failure mix, and metrics on the experiments that ran. Then times `build_report`
(classification, tables, every PNG, Markdown and HTML) end to end. Goal: under 10 s.

    .venv/bin/python bench/report_speed.py [--cycles 48] [--batch 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from sharpe_rl.analysis.report import build_report

MODELS = {
    "lightgbm": """import lightgbm as lgb


def make_model():
    return lgb.LGBMClassifier(n_estimators={n}, learning_rate={lr}, num_leaves={leaves}, verbose=-1)
""",
    "xgboost": """from xgboost import XGBClassifier


def make_model():
    model = XGBClassifier(n_estimators={n}, max_depth={depth}, learning_rate={lr})
    return model
""",
    "forest": """from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier


def make_model():
    return CalibratedClassifierCV(RandomForestClassifier(n_estimators={n}, max_depth={depth}), cv=3)
""",
    "logistic": """from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def make_model():
    return make_pipeline(StandardScaler(), LogisticRegression(C={lr}, max_iter=1000))
""",
    "torch": """import numpy as np
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, n_in):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, {leaves}), nn.ReLU(), nn.Linear({leaves}, 1))

    def forward(self, x):
        return self.body(x)


class TorchClassifier:
    def fit(self, X, y):
        xt = torch.tensor(np.asarray(X, dtype=np.float32))
        yt = torch.tensor(np.asarray(y, dtype=np.float32)).view(-1, 1)
        self.net = Net(xt.shape[1])
        opt = torch.optim.Adam(self.net.parameters(), lr={lr})
        for _ in range({depth}):
            opt.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(self.net(xt), yt).backward()
            opt.step()
        return self

    def predict_proba(self, X):
        with torch.no_grad():
            p = torch.sigmoid(self.net(torch.tensor(np.asarray(X, dtype=np.float32)))).numpy().ravel()
        return np.column_stack([1 - p, p])


def make_model():
    return TorchClassifier()
""",
    "voting": """import lightgbm as lgb
from sklearn.ensemble import ExtraTreesClassifier, VotingClassifier


def make_model():
    members = [
        ("lgb", lgb.LGBMClassifier(n_estimators={n}, verbose=-1)),
        ("et", ExtraTreesClassifier(max_depth={depth})),
    ]
    return VotingClassifier(members, voting="soft")
""",
}
FEATURES = {
    "template": """import pandas as pd


def make_features(df):
    out = pd.DataFrame(index=df.index)
    for lag in (1, 2, {w1}):
        out[f"ret_{{lag}}"] = df["close"].pct_change(lag)
    out["vol"] = df["close"].pct_change().rolling({w2}).std()
    out["sma_ratio"] = df["close"].rolling({w1}).mean() / df["close"].rolling({w2}).mean() - 1
    return out
""",
    "rsi": """import pandas as pd


def rsi(close, window):
    delta = close.diff()
    gain = delta.clip(lower=0).rolling(window).mean()
    loss = (-delta.clip(upper=0)).rolling(window).mean()
    return 100 - 100 / (1 + gain / (loss + 1e-12))


def make_features(df):
    out = pd.DataFrame(index=df.index)
    out["ret"] = df["close"].pct_change()
    out["rsi"] = rsi(df["close"], {w1})
    out["volume_ratio"] = df["volume"] / df["volume"].rolling({w2}).mean()
    return out
""",
    "macd": """import pandas as pd


def make_features(df):
    close = df["close"]
    macd = close.ewm(span={w1}).mean() - close.ewm(span={w2}).mean()
    return pd.DataFrame({{"macd": macd / close, "ret": close.pct_change(), "hour": df.index.hour}})
""",
}
# The original post-mortem's failure mix: 43% failed, mostly KeyError, syntax, type errors, bad JSON.
ERRORS = (
    [None] * 57 + ["missing_column"] * 15 + ["syntax"] * 5 + ["type_error"] * 5 + ["json_parse"] * 4
    + ["value_error"] * 3 + ["timeout"] * 2 + ["schema"] * 2 + ["bad_predictions"] * 4
    + ["forbidden_import"] * 2 + ["runtime_error"]
)  # fmt: skip


def synthetic_frame(cycles: int, batch: int, seed: int = 0) -> pl.DataFrame:
    """A buffer frame of `cycles` × `batch` experiments with realistic code and outcomes."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    rows = []
    for cycle in range(cycles):
        # The policy drifts from the prompt's LightGBM example towards other families over the run.
        drift = cycle / max(cycles - 1, 1)
        weights = [1.0 - 0.6 * drift, 0.1 + 0.2 * drift, 0.1 + 0.2 * drift, 0.1 + 0.2 * drift, 0.2 * drift, 0.1 * drift]
        for index in range(batch):
            family = rng.choices(list(MODELS), weights)[0]
            features = rng.choices(list(FEATURES), [1.0 - 0.5 * drift, 0.3 * drift + 0.05, 0.2 * drift + 0.05])[0]
            params = {
                "n": rng.choice((100, 200, 300, 500)),
                "lr": rng.choice((0.01, 0.03, 0.05, 0.1)),
                "leaves": rng.choice((15, 31, 63)),
                "depth": rng.choice((3, 4, 6, 8)),
            }
            windows = {"w1": rng.choice((5, 10, 14)), "w2": rng.choice((20, 26, 50))}
            spec = {
                "name": f"{family}_{features}_{cycle}_{index}",
                "features": FEATURES[features].format(**windows),
                "model": MODELS[family].format(**params),
            }
            error = rng.choice(ERRORS)
            parsed = error not in ("json_parse", "schema")
            sharpe = rng.gauss(0.3 + 0.5 * drift, 0.8) if error is None else None
            rows.append(
                {
                    "run": "bench",
                    "cycle": cycle,
                    "index": index,
                    "prompt_version": "v4_example",
                    "spec_json": json.dumps(spec) if parsed else None,
                    "name": spec["name"] if parsed else None,
                    "error_class": error,
                    "reward": max(-1.0, min(1.0, sharpe / 3)) if sharpe is not None else -1.25,
                    "code_hash": _code_hash(spec) if parsed else None,
                    "metric_sharpe_net": sharpe,
                    "metric_dsr": rng.random() if sharpe is not None else None,
                    "metric_holdout_sharpe_net": sharpe - abs(rng.gauss(0.5, 0.5)) if sharpe is not None else None,
                    "created_at": start + timedelta(minutes=10 * cycle + index),
                }
            )
    return pl.DataFrame(rows)


def _code_hash(spec: dict) -> str:
    payload = json.dumps({"features": spec["features"], "model": spec["model"]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="Keep the report here (default: a temporary directory).")
    args = parser.parse_args()
    frame = synthetic_frame(args.cycles, args.batch)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        started = time.perf_counter()
        report = build_report(frame, out)
        elapsed = time.perf_counter() - started
        sizes = {name: path.stat().st_size for name, path in report.plots.items()}
    print(f"{frame.height} experiments ({args.cycles} cycles × {args.batch}): full report in {elapsed:.2f} s")
    print(f"markdown {len(report.markdown):,} chars, html {len(report.html):,} chars, plots (bytes) {sizes}")
    print("goal: under 10 s —", "met" if elapsed < 10 else "MISSED")


if __name__ == "__main__":
    main()
