"""Small generated-code snippets the reward, archive and step tests build experiments from.

Features fall in distinct building blocks (trend, volume, calendar) and models in distinct families
(LightGBM, logistic regression), so the (family × blocks) cells they make are known. The model
templates take `{n}` (trees, or the inverse regularisation) to make distinct programs of one cell.
"""

TREND = """
def make_features(df):
    out = df[[]].copy()
    out["ma_ratio"] = df["close"].rolling(5).mean() / df["close"].rolling(20).mean()
    return out
"""
VOLUME = """
def make_features(df):
    out = df[[]].copy()
    out["volume_ratio"] = df["volume"] / df["volume"].rolling(20).mean()
    return out
"""
CALENDAR = """
def make_features(df):
    out = df[[]].copy()
    out["weekday"] = df.index.dayofweek
    return out
"""
TREND_AND_VOLUME = """
def make_features(df):
    out = df[[]].copy()
    out["ma_ratio"] = df["close"].rolling(5).mean() / df["close"].rolling(20).mean()
    out["volume_ratio"] = df["volume"] / df["volume"].rolling(20).mean()
    return out
"""
TREND_AND_CALENDAR = """
def make_features(df):
    out = df[[]].copy()
    out["ma_ratio"] = df["close"].rolling(5).mean() / df["close"].rolling(20).mean()
    out["weekday"] = df.index.dayofweek
    return out
"""
LIGHTGBM = """
from lightgbm import LGBMClassifier

def make_model():
    return LGBMClassifier(n_estimators={n}, verbose=-1)
"""
LOGISTIC = """
from sklearn.linear_model import LogisticRegression

def make_model():
    return LogisticRegression(C={n})
"""
