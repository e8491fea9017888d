"""Static checks catch the original failure modes before anything runs, and never reject honest code."""

from __future__ import annotations

import gc
import json
import random
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from sandbox_fixtures import HONEST_FEATURES, HONEST_MODELS, LOGISTIC

from sharpe_rl.checks import check_completion
from sharpe_rl.policy.corpus import MODEL_FAMILIES, inject_mistake, make_spec
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS
from sharpe_rl.spec import SpecError

COLUMNS = list(OHLCV_COLUMNS)


def completion(features: str = HONEST_FEATURES, model: str = LOGISTIC, prose: str = "") -> str:
    body = json.dumps({"name": "x", "features": features, "model": model}, indent=2)
    return f"{prose}\n```json\n{body}\n```\nHope this helps!" if prose else body


def error_of(text: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        check_completion(text, COLUMNS)
    return caught.value


def features_reading(*lines: str) -> str:
    body = "\n".join(f"    {line}" for line in lines)
    return f"import pandas as pd\n\ndef make_features(df):\n{body}\n    return out\n"


# ---- the original failure modes ----


def test_prose_around_the_json_is_fine():
    spec = check_completion(completion(prose="Here is my experiment: it uses {momentum} features."), COLUMNS)
    assert spec.name == "x"


@pytest.mark.parametrize(
    ("text", "error_class"),
    [
        ("I would use LightGBM with momentum features.", "json_parse"),
        ('{"name": "x", "features": "def make_features(df): ...", "model": ', "json_parse"),
        ('{"name": "x", "features": "def make_features(df): return df"}', "schema"),
    ],
)
def test_unparseable_or_incomplete_json(text, error_class):
    assert error_of(text).error_class == error_class


def test_broken_syntax_names_the_source_and_line():
    error = error_of(completion(model="from sklearn.linear_model import LogisticRegression\ndef make_model(:\n  pass"))
    assert error.error_class == "syntax" and "model" in str(error) and "line 2" in str(error)


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import os.path",
        "from subprocess import run",
        "import socket as s",
        "import importlib",
        "from . import sibling",
        "x = __import__('socket')",
        "x = __builtins__['__import__']('os')",
        "exec('import os')",
        "eval(compile('1', 'f', 'eval'))",
        "x = ().__class__.__base__.__subclasses__()",
        "x = make_features.__globals__",
    ],
)
def test_forbidden_imports_and_ways_around_them(source):
    error = error_of(completion(features=HONEST_FEATURES + "\n" + source + "\n"))
    assert error.error_class == "forbidden_import"


def test_allowed_imports_pass():
    imports = "import math\nfrom collections import deque\nimport scipy.stats as st\nfrom sklearn import ensemble\n"
    check_completion(completion(features=imports + HONEST_FEATURES), COLUMNS)


@pytest.mark.parametrize(
    ("features", "model", "missing"),
    [
        (HONEST_FEATURES.replace("make_features", "features"), LOGISTIC, "make_features"),
        (HONEST_FEATURES, LOGISTIC.replace("make_model", "build_model"), "make_model"),
    ],
)
def test_missing_interface(features, model, missing):
    error = error_of(completion(features, model))
    assert error.error_class == "bad_interface" and missing in str(error)


@pytest.mark.parametrize(
    ("lines", "missing"),
    [
        (["out = pd.DataFrame({'v': df['vwap']})"], ["vwap"]),
        (["out = df[['close', 'Close', 'volume']]"], ["Close"]),
        (["out = pd.DataFrame({'r': df.returns})"], ["returns"]),
        (["out = df.loc[:, 'adj_close'].to_frame()"], ["adj_close"]),
        (["out = df.loc[:, ['open', 'price']]"], ["price"]),
        (["df = df.copy()", "out = df[['quote_volume']]"], ["quote_volume"]),
        (["frame = df.sort_index().ffill()", "out = frame[['vwap', 'price']]"], ["price", "vwap"]),
    ],
)
def test_columns_the_dataset_does_not_have(lines, missing):
    error = error_of(completion(features_reading(*lines)))
    assert error.error_class == "missing_column"
    assert all(repr(name) in str(error) for name in missing)
    assert "open, high, low, close, volume" in str(error)


# ---- no false positives ----


@pytest.mark.parametrize(
    "lines",
    [
        ["df['ret'] = df['close'].pct_change()", "out = df[['ret']].rolling(3).mean()"],
        ["df = df.assign(ret=df.close.pct_change())", "out = df[['ret', 'volume']]"],
        ["df.insert(0, 'hl', df.high - df.low)", "out = df.loc[:, ['hl']]"],
        ["out = pd.DataFrame(index=df.index)", "out['x'] = df['close'].diff()", "out['y'] = out['x'].abs()"],
        ["out = df[['close']].copy()", "out['vwap'] = out['close']", "out = out[['vwap']]"],
        ["for w in (5, 10):", "    df[f'ma{w}'] = df['close'].rolling(w).mean()", "out = df[['ma5', 'ma10']]"],
        ["df.columns = [c.upper() for c in df.columns]", "out = df[['CLOSE']]"],
        ["df.rename(columns={'close': 'c'}, inplace=True)", "out = df[['c']]"],
        ["out = df.copy()", "if 'vwap' in df.columns:", "    out['v'] = df['vwap']"],
        ["try:", "    v = df['vwap']", "except KeyError:", "    v = df['close']", "out = v.to_frame()"],
        ["out = df.groupby(df.index.month).apply(lambda df: df['anything'].sum()).to_frame()"],
        ["out = df.resample('W').last()", "out = out[['weekly']] if 'weekly' in out else out"],
        ["out = pd.DataFrame({'s': df.close.rolling(5).std(), 'n': df.shape[0], 'i': df.index.dayofweek})"],
        ["d = df if len(df) else None", "out = d[['whatever']]"],
    ],
)
def test_legitimate_column_use_is_not_flagged(lines):
    check_completion(completion(features_reading(*lines)), COLUMNS)


def test_columns_added_by_a_helper_are_known():
    features = (
        "import pandas as pd\n\n"
        "def add_returns(frame):\n    frame['ret'] = frame['close'].pct_change()\n\n"
        "def make_features(df):\n    add_returns(df)\n    return df[['ret']]\n"
    )
    check_completion(completion(features), COLUMNS)


@pytest.mark.parametrize("family", list(HONEST_MODELS))
def test_the_sandbox_test_specs_pass(family):
    check_completion(completion(HONEST_FEATURES, HONEST_MODELS[family]), COLUMNS)


def test_no_false_positive_and_every_missing_column_caught_on_the_policy_corpus():
    rng = random.Random(7)
    families = list(MODEL_FAMILIES)
    for i in range(270):
        spec = make_spec(rng, families[i % len(families)])
        check_completion(spec.model_dump_json(), COLUMNS)  # honest: never flagged
        mistaken = inject_mistake(spec, families[i % len(families)], "missing_column", rng)
        with pytest.raises(SpecError) as caught:
            check_completion(mistaken.model_dump_json(), COLUMNS)
        assert caught.value.error_class == "missing_column"


# ---- names nothing binds: the sandbox's certain NameError, caught before it ----

#: What a trained policy wrote (docs/learning.md): a k-NN's name and import, the linear family's return line.
KNN_NAMED_LOGISTIC = (
    "from sklearn.neighbors import KNeighborsClassifier\nfrom sklearn.pipeline import make_pipeline\n"
    "from sklearn.preprocessing import StandardScaler\n\n"
    "def make_model():\n    return make_pipeline(StandardScaler(), LogisticRegression(C=0.5))\n"
)


def test_a_model_class_never_imported_fails_as_the_sandbox_would_fail_it():
    error = error_of(completion(model=KNN_NAMED_LOGISTIC))
    assert error.error_class == "runtime_error"  # the sandbox's class for a NameError: the same rung, the same reward
    assert "make_model uses 'LogisticRegression', which is never imported or defined" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        "    out = pd.DataFrame(index=df.index)\n    out['r'] = returns(df)\n    return out",  # a helper never defined
        "    out = pd.DataFrame(index=df.index)\n    out['r'] = df['close'].pct_change().rolling(window).mean()\n"
        "    return out",  # a setting never set
        "    return features",  # the frame it meant to build
    ],
)
def test_make_features_reading_a_name_nothing_binds_fails(body):
    error = error_of(completion(features=f"import pandas as pd\n\ndef make_features(df):\n{body}\n"))
    assert error.error_class == "runtime_error" and "make_features uses" in str(error)


@pytest.mark.parametrize(
    "model",
    [
        # bound elsewhere in the namespace both sources share, or later at module level, or locally
        "def make_model():\n    return LogisticRegression()\n\nfrom sklearn.linear_model import LogisticRegression\n",
        "def make_model():\n    from sklearn.linear_model import LogisticRegression\n    return LogisticRegression()\n",
        "try:\n    from xgboost import XGBClassifier as Model\nexcept ImportError:\n    Model = None\n\n"
        "def make_model():\n    return Model()\n",
        "def setup():\n    global Model\n    from sklearn.linear_model import LogisticRegression as Model\n\n"
        "setup()\n\ndef make_model():\n    return Model()\n",
        "class Model:\n    def fit(self, X, y):\n        return self\n    def predict_proba(self, X):\n"
        "        return __import_me__\n\ndef make_model():\n    return Model()\n",
        # read only on a path that may not run
        "from sklearn.linear_model import LogisticRegression\n\ndef make_model(kind='linear'):\n"
        "    if kind == 'knn':\n        return KNeighborsClassifier()\n    return LogisticRegression()\n",
        "from sklearn.linear_model import LogisticRegression\n\n"
        "def make_model():\n    return LogisticRegression() or KNeighborsClassifier()\n",
        "from sklearn.linear_model import LogisticRegression\n\n"
        "def make_model():\n    return LogisticRegression() if True else KNeighborsClassifier()\n",
        "from sklearn.linear_model import LogisticRegression\n\n"
        "def make_model():\n    make = lambda: KNeighborsClassifier()\n    return LogisticRegression()\n",
        "from sklearn.linear_model import LogisticRegression\n\n"
        "def make_model():\n    return LogisticRegression()\n    return KNeighborsClassifier()\n",
        "from sklearn.linear_model import LogisticRegression\n\n"
        "def make_model():\n    assert Unknown\n    return LogisticRegression()\n",
        # built-ins, and code that can bind names the source does not show
        "from sklearn.linear_model import LogisticRegression\n\ndef make_model():\n"
        "    return LogisticRegression(C=float(len(dict(a=1))))\n",
        "from sklearn.linear_model import *\n\ndef make_model():\n    return LogisticRegression()\n",
        "import sklearn.linear_model as lm\nglobals().update(vars(lm))\n\n"
        "def make_model():\n    return LogisticRegression()\n",
        # what runs is not the function's body as written
        "def wrap(f):\n    return f\n\n@wrap\ndef make_model():\n    return LogisticRegression()\n",
        "def make_model():\n    yield LogisticRegression()\n",
        "def make_model():\n    return LogisticRegression()\n\nmake_model = lambda: None\n",
    ],
)
def test_names_that_may_be_bound_or_may_not_be_read_are_not_flagged(model):
    try:
        check_completion(completion(model=model), COLUMNS)
    except SpecError as error:  # some fail another check (bad_interface, forbidden_import): never this one
        assert "never imported or defined" not in str(error)


# ---- concurrency: the static checks run on the task runner's threads ----


class _CyclicGarbage:
    """Garbage only the cycle collector frees, whose finalizer runs Python code: a thread switch can happen there."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        sum(range(1000))


def test_the_static_checks_are_safe_on_a_thread_pool():
    """CPython 3.11 before 3.11.8 (gh-106905): `ast.parse` in several threads at once can raise
    `SystemError: AST constructor recursion depth mismatch` when the garbage collector runs a
    finalizer, which switches threads, in the middle of building the tree. An overnight run died of
    it. Frequent collections with finalizers and a tiny switch interval make it happen in seconds."""
    texts = [completion(features=HONEST_FEATURES, model=model) for model in HONEST_MODELS.values()]
    errors: list[BaseException] = []

    def check_many(_: int) -> None:
        for text in texts * 5:
            _CyclicGarbage()
            try:
                check_completion(text, COLUMNS)
            except Exception as exc:  # anything but a pass is the failure this test is about
                errors.append(exc)

    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(50)
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(check_many, range(8)))
    finally:
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)
    assert errors == []


@pytest.mark.parametrize("expression", ["-" * 3000 + "1", "1" + " + 1" * 3000])
def test_code_nested_too_deeply_to_compile_is_a_syntax_error(expression):
    """A policy stuck repeating one token writes this; the parser gives up with RecursionError, not SyntaxError."""
    assert error_of(completion(model=f"{LOGISTIC}\nx = {expression}\n")).error_class == "syntax"
