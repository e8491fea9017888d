"""Honest experiments the policy really wrote that the sandbox once got wrong (found in a real run).

Both ran with the process executor here, because the fault was in the harness and in the host's
comparison, which every executor shares.
"""

from __future__ import annotations

import textwrap

import pytest

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.sandbox.runner import SandboxRunner
from sharpe_rl.spec import ExperimentSpec

TORCH_MODEL = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch import nn


    class TorchClassifier:
        def __init__(self, hidden=32, epochs=100, lr=0.01):
            self.hidden, self.epochs, self.lr = hidden, epochs, lr

        def _inputs(self, X):
            X = np.nan_to_num(np.asarray(X, dtype=np.float32))
            return torch.tensor((X - self.mean_) / self.std_)

        def fit(self, X, y):
            X = np.nan_to_num(np.asarray(X, dtype=np.float32))
            self.mean_, self.std_ = X.mean(axis=0), X.std(axis=0) + 1e-6
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(X.shape[1], self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1))
            optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
            loss_fn = nn.BCEWithLogitsLoss()
            inputs = self._inputs(X)
            targets = torch.tensor(np.asarray(y, dtype=np.float32)).reshape(-1, 1)
            for _ in range(self.epochs):
                optimizer.zero_grad()
                loss_fn(self.net(inputs), targets).backward()
                optimizer.step()
            return self

        def predict_proba(self, X):
            with torch.no_grad():
                p = torch.sigmoid(self.net(self._inputs(X))).numpy().ravel()
            return np.column_stack([1 - p, p])


    def make_model():
        return TorchClassifier(hidden=32, epochs=50, lr=0.01)
    """
)

ONE_FEATURE = """
import pandas as pd


def make_features(df):
    out = pd.DataFrame(index=df.index)
    delta = df['close'].diff()
    gain = delta.clip(lower=0).rolling(21).mean()
    loss = (-delta.clip(upper=0)).rolling(21).mean()
    out['rsi_21'] = 100 - 100 / (1 + gain / (loss + 1e-12))
    return out
"""

CAUSAL_FEATURES = """
import pandas as pd


def make_features(df):
    out = pd.DataFrame(index=df.index)
    prev_close = df['close'].shift(1)
    true_range = pd.concat(
        [df['high'] - df['low'], (df['high'] - prev_close).abs(), (df['low'] - prev_close).abs()], axis=1
    ).max(axis=1)
    out['atr_7'] = true_range.rolling(7).mean() / df['close']
    out['ret_10'] = df['close'].pct_change(10)
    out['gap'] = df['open'] / df['close'].shift(1) - 1
    rolling_mean = df['close'].rolling(50).mean()
    rolling_std = df['close'].rolling(50).std()
    out['zscore_50'] = (df['close'] - rolling_mean) / (rolling_std + 1e-12)
    out['range'] = (df['high'] - df['low']) / df['close']
    out['close_location'] = (df['close'] - df['low']) / (df['high'] - df['low'] + 1e-12)
    return out
"""


@pytest.fixture(scope="module")
def runner(sandbox_panel, tmp_path_factory) -> SandboxRunner:
    sandbox = SandboxConfig(executor="process", workers=1, timeout_seconds=120, warm_pool=False)
    return SandboxRunner(sandbox_panel, EvalConfig(), sandbox, tmp_path_factory.mktemp("cache"))


def test_a_single_feature_column_is_not_a_read_only_error(runner):
    result = runner.run(ExperimentSpec(name="rsi", features=ONE_FEATURE, model=TORCH_MODEL))
    assert result.status == "ok", result.message


def test_a_causal_float32_torch_model_runs(runner):
    # once flagged as lookahead by a truncation guard that compared raw float32 probabilities
    result = runner.run(ExperimentSpec(name="torch", features=CAUSAL_FEATURES, model=TORCH_MODEL))
    assert result.status == "ok", result.message
