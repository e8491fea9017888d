"""Experiment sources for the sandbox tests: honest ones of every allowed family, and builders for attacks."""

from __future__ import annotations

import textwrap

from sharpe_rl.spec import ExperimentSpec

HONEST_FEATURES = """
import numpy as np
import pandas as pd


def make_features(df):
    g = df.groupby(level="symbol")
    out = pd.DataFrame(index=df.index)
    out["ret_1"] = g["close"].pct_change()
    out["ret_5"] = g["close"].pct_change(5)
    out["vol_10"] = g["close"].transform(lambda s: s.pct_change().rolling(10).std())
    out["range"] = (df["high"] - df["low"]) / df["close"]
    out["volume_z"] = np.log1p(df["volume"]).groupby(level="symbol").diff()
    out["ret_5_rank"] = out["ret_5"].groupby(level="timestamp").rank(pct=True)
    return out
"""

LOGISTIC = """
from sklearn.linear_model import LogisticRegression


def make_model():
    return LogisticRegression(max_iter=500)
"""

#: One honest model per allowed family; all must run.
HONEST_MODELS = {
    "logistic": LOGISTIC,
    "random_forest": """
from sklearn.ensemble import RandomForestClassifier


def make_model():
    return RandomForestClassifier(n_estimators=25, max_depth=4, random_state=0)
""",
    "hist_gradient_boosting": """
from sklearn.ensemble import HistGradientBoostingClassifier


def make_model():
    return HistGradientBoostingClassifier(max_iter=30, random_state=0)
""",
    "lightgbm": """
import lightgbm as lgb


def make_model():
    return lgb.LGBMClassifier(n_estimators=30, num_leaves=7, verbose=-1)
""",
    "xgboost": """
import xgboost as xgb


def make_model():
    return xgb.XGBClassifier(n_estimators=30, max_depth=3, learning_rate=0.1)
""",
    "torch_mlp": """
import numpy as np
import torch


class TorchMLP:
    def fit(self, X, y):
        self.mean, self.std = X.mean(axis=0), X.std(axis=0) + 1e-9
        inputs = torch.tensor((X - self.mean) / self.std, dtype=torch.float32)
        targets = torch.tensor(y, dtype=torch.float32)
        self.net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        optimizer = torch.optim.Adam(self.net.parameters(), lr=0.01)
        for _ in range(30):
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self.net(inputs).squeeze(1), targets)
            loss.backward()
            optimizer.step()
        return self

    def predict_proba(self, X):
        with torch.no_grad():
            p = torch.sigmoid(self.net(torch.tensor((X - self.mean) / self.std, dtype=torch.float32))).numpy()
        return np.hstack([1 - p, p])


def make_model():
    return TorchMLP()
""",
    "statsmodels_logit": """
import numpy as np
import statsmodels.api as sm


class Logit:
    def fit(self, X, y):
        self.result = sm.Logit(y, sm.add_constant(X, has_constant="add")).fit(disp=0)
        return self

    def predict_proba(self, X):
        p = self.result.predict(sm.add_constant(X, has_constant="add"))
        return np.column_stack([1 - p, p])


def make_model():
    return Logit()
""",
}


def spec(name: str, features: str = HONEST_FEATURES, model: str = LOGISTIC) -> ExperimentSpec:
    return ExperimentSpec(name=name, features=textwrap.dedent(features), model=textwrap.dedent(model))


def features_doing(prelude: str, body: str = "") -> str:
    """Honest features, with `prelude` at module level and `body` run first inside make_features."""
    inner = textwrap.indent(textwrap.dedent(body).strip(), "    ") if body.strip() else "    pass"
    return (
        textwrap.dedent(prelude).strip()
        + "\nimport numpy as np\nimport pandas as pd\n\n\n"
        + "def make_features(df):\n"
        + inner
        + "\n"
        + '    g = df.groupby(level="symbol")\n'
        + "    out = pd.DataFrame(index=df.index)\n"
        + '    out["ret_1"] = g["close"].pct_change()\n'
        + '    out["ret_5"] = g["close"].pct_change(5)\n'
        + '    out["vol_10"] = g["close"].transform(lambda s: s.pct_change().rolling(10).std())\n'
        + "    return out\n"
    )
