"""Classification of what an experiment tried, against a hand-labelled set of specs."""

import random
from datetime import timedelta

import pytest
from fixtures.labelled_specs import labelled_specs

from sharpe_rl.classify import classify, classify_features, classify_model, classify_spec_json
from sharpe_rl.classify.parameters import feature_windows, model_settings
from sharpe_rl.config import EvalConfig
from sharpe_rl.data.clock import Clock
from sharpe_rl.grid import (
    FEATURE_BLOCKS,
    FEATURE_KIND_BLOCK,
    GRID_CELLS,
    MODEL_FAMILIES,
    SKLEARN_KINDS,
    TEMPLATE_FEATURE_KINDS,
)
from sharpe_rl.policy.corpus import FEATURE_SNIPPETS, features_source
from sharpe_rl.policy.prompts import render_prompt
from sharpe_rl.spec import ExperimentSpec, parse_spec

CASES = labelled_specs()
# The tricky cases the labelled set must keep covering.
TRICKY = {
    "lgb_from_import_as",  # alias of a class
    "extra_trees_module_alias",  # alias of a module
    "make_pipeline_logistic",  # the final estimator decides
    "lgbm_in_user_class",  # fit builds lgb.LGBMClassifier
    "torch_module_with_predict_proba",
    "commented_out_imports",
    "unused_xgboost_import",  # the returned RandomForest decides
    "calibrated_lgbm",
    "stacking_trees_knn",
    "statsmodels_logit_class",
}
# The panel contract's idioms the labelled set must keep covering (features of every symbol at once).
PANEL = {
    "panel_template",  # g = df.groupby(level="symbol"); g["close"].pct_change(1); g["close"].transform(lambda ...)
    "panel_log_returns_chained",  # df.groupby(level="symbol")["close"], x.groupby(level="symbol").diff(3)
    "panel_volatility",  # groupby(...).rolling(20).std().droplevel(0), a true range grouped by symbol
    "panel_per_symbol_apply",  # groupby(level="symbol").apply(helper)
    "panel_cross_section_rank",  # x.groupby(level="timestamp").rank(pct=True) / .transform("mean")
    "panel_cross_section_grouped_frame",  # by_time = df.groupby(level="timestamp"); by_time["volume"]
    "panel_cross_section_wide",  # unstack("symbol"), rank(axis=1)
    "panel_one_symbol_as_factor",  # xs(0, level="symbol")
}


def features_computing(expression: str) -> str:
    """A panel make_features with one feature, `expression` (`g` is the panel grouped by symbol)."""
    return (
        "import numpy as np\nimport pandas as pd\n\n\ndef make_features(df):\n"
        "    g = df.groupby(level='symbol')\n    out = pd.DataFrame(index=df.index)\n"
        f"    out['feature'] = {expression}\n    return out\n"
    )


def test_labelled_set_is_large_and_covers_the_tricky_cases():
    ids = [case["id"] for case in CASES]
    assert len(ids) >= 40
    assert len(set(ids)) == len(ids)
    assert set(ids) >= TRICKY | PANEL


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_model_family(case):
    found = classify_model(case["spec"]["model"])
    assert (found.label, found.members) == (case["family"], case["members"])


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_feature_blocks_and_template(case):
    found = classify_features(case["spec"]["features"])
    assert (found.blocks, found.is_custom) == (case["blocks"], case["custom"])


def test_accuracy_on_the_labelled_set_is_total():
    right = 0
    for case in CASES:
        model, features = classify_model(case["spec"]["model"]), classify_features(case["spec"]["features"])
        right += (model.label, model.members, features.blocks, features.is_custom) == (
            case["family"],
            case["members"],
            case["blocks"],
            case["custom"],
        )
    assert right == len(CASES)


@pytest.mark.parametrize(
    ("one_symbol", "panel", "kind"),
    [
        ("df['close'].pct_change(5)", "g['close'].pct_change(5)", "return"),
        ("np.log(df['close']).diff(3)", "np.log(df['close']).groupby(level='symbol').diff(3)", "return"),
        ("df['close'] / df['close'].shift(3) - 1", "df['close'] / g['close'].shift(3) - 1", "return"),
        (
            "df['close'].pct_change().rolling(20).std()",
            "g['close'].transform(lambda s: s.pct_change().rolling(20).std())",
            "std",
        ),
        (
            "df['close'].pct_change().rolling(30).skew()",
            "g['close'].pct_change().groupby(level='symbol').rolling(30).skew().droplevel(0)",
            "moments",
        ),
        (
            "((df['high'] - df['low']) / df['close']).rolling(10).mean()",
            "((df['high'] - df['low']) / df['close']).groupby(level='symbol')"
            ".transform(lambda s: s.rolling(10).mean())",
            "range",
        ),
        (
            "df['close'].rolling(5).mean() / df['close'].rolling(20).mean()",
            "g['close'].transform(lambda s: s.rolling(5).mean() / s.rolling(20).mean())",
            "sma",
        ),
        (
            "df['close'] / df['close'].ewm(span=12).mean()",
            "df['close'] / df.groupby(level='symbol')['close'].transform(lambda s: s.ewm(span=12).mean())",
            "ema",
        ),
        (
            "df['volume'] / df['volume'].rolling(20).mean()",
            "df['volume'] / g['volume'].transform(lambda s: s.rolling(20).mean())",
            "volume",
        ),
        (
            "df['close'].rolling(14).max() / df['close'].rolling(14).min()",
            "df.groupby(level=1).close.transform(lambda s: s.rolling(14).max() / s.rolling(14).min())",
            "stochastic",
        ),
    ],
)
def test_a_per_symbol_feature_is_the_same_kind_on_one_symbol_and_on_the_panel(one_symbol, panel, kind):
    """Grouping by symbol (by name, position or get_level_values) is how the panel computes one symbol's
    feature: it adds no kind of its own, and the level's name is not another symbol's."""
    assert classify_features(features_computing(one_symbol)).kinds == (kind,)
    assert classify_features(features_computing(panel)).kinds == (kind,)
    by_values = panel.replace("level='symbol'", "df.index.get_level_values('symbol')")
    assert classify_features(features_computing(by_values)).kinds == (kind,)


@pytest.mark.parametrize(
    "expression",
    [
        "g['close'].pct_change(20).groupby(level='timestamp').rank(pct=True)",
        "g['close'].pct_change() - g['close'].pct_change().groupby(level='timestamp').transform('mean')",
        "g['close'].pct_change(5).groupby(df.index.get_level_values('timestamp')).rank()",
        "np.sign(g['close'].pct_change()).groupby(level=0).transform('mean')",
        "df.groupby(level='timestamp')['volume'].rank(pct=True)",
        "df['close'] / df.groupby('timestamp').close.transform('median')",
        "df['close'].unstack().pct_change(5).rank(axis=1).stack()",
        "df['volume'].unstack(level='symbol').apply(lambda row: row / row.sum(), axis=1).stack()",
    ],
)
def test_features_that_compare_the_symbols_at_each_time_are_cross_sectional(expression):
    found = classify_features(features_computing(expression))
    assert found.kinds == ("cross_section",)
    assert found.blocks == ("cross_section",) and found.is_custom


@pytest.mark.parametrize(
    "expression",
    [
        "df['BTCUSDT_close'].pct_change()",  # the one-symbol contract: another pair's column
        "df['close'].where(df['symbol'] == 'ETHUSDT').pct_change()",
        "df['close'].where(df['symbol'] == 2)",
        "df['close'].xs(0, level='symbol').pct_change().reindex(df.index, level='timestamp')",
        "df.xs(3, level=1)['close'].pct_change().reindex(df.index, level=0)",
    ],
)
def test_features_that_name_a_symbol_are_cross_asset(expression):
    assert classify_features(features_computing(expression)).kinds == ("cross_asset",)


@pytest.mark.parametrize("snippet", sorted(FEATURE_SNIPPETS))
def test_the_tiny_policys_feature_snippets_sit_in_their_blocks(snippet):
    """The corpus's cross-sectional snippets fill the cross_section block; no per-symbol one reads as comparing
    or naming symbols."""
    lines = FEATURE_SNIPPETS[snippet][1](random.Random(0))
    blocks = classify_features(features_source(lines)).blocks
    cross_sectional = any("groupby(level='timestamp')" in line for line in lines)
    assert (blocks == ("cross_section",)) == cross_sectional
    assert "cross_asset" not in blocks


def test_a_wide_frame_read_over_time_is_not_cross_sectional():
    """One column per symbol, computed down each column (axis 0): a per-symbol feature."""
    found = classify_features(features_computing("df['close'].unstack().pct_change(5).stack()"))
    assert found.kinds == ("return",)


def test_the_prompt_example_is_the_template():
    """The template is defined by the prompt's own worked example, read with the same classifier."""
    clock = Clock.of(EvalConfig(), timedelta(hours=1))
    prompt = render_prompt(
        "v4_example", ["open", "high", "low", "close", "volume"], timedelta(hours=1), clock, ["BTCUSDT"]
    )
    example = classify(parse_spec(prompt))
    assert example.model_family == "lightgbm"
    assert set(example.features.kinds) == TEMPLATE_FEATURE_KINDS
    assert example.custom_features is False


def test_classification_fills_the_experience_fields():
    case = next(c for c in CASES if c["id"] == "voting_mixed")
    spec = ExperimentSpec(**case["spec"])
    found = classify(spec)
    assert found.model_family == "ensemble"
    assert found.model.members == ("lightgbm", "xgboost", "sklearn/trees")
    assert found.custom_features is True
    assert classify_spec_json(spec.model_dump_json()) == found


def test_results_use_the_documented_vocabulary():
    assert FEATURE_KIND_BLOCK.keys() >= TEMPLATE_FEATURE_KINDS
    assert set(FEATURE_KIND_BLOCK.values()) == set(FEATURE_BLOCKS)
    for case in CASES:
        model = classify_model(case["spec"]["model"])
        assert model.family in MODEL_FAMILIES
        assert (model.kind in SKLEARN_KINDS) if model.family == "sklearn" else model.kind is None
        assert set(model.members) <= {case["family"], *case["members"]}


def test_an_experiment_occupies_one_grid_cell_per_feature_block():
    for case in CASES:
        found = classify(ExperimentSpec(**case["spec"]))
        if found.model.family == "unknown" or found.custom_features is None:
            assert found.cells == ()
            continue
        assert set(found.cells) <= set(GRID_CELLS)
        assert {block for _, block in found.cells} == set(found.features.blocks or ("other",))
        assert {family for family, _ in found.cells} == {found.model_family}
    raw = ExperimentSpec(name="raw", features="def make_features(df):\n    return df\n", model="def make_model(:\n")
    assert classify(raw).cells == ()  # no model to place
    model = "from sklearn.linear_model import LogisticRegression\ndef make_model():\n    return LogisticRegression()\n"
    assert classify(raw.model_copy(update={"model": model})).cells == (("sklearn/linear", "other"),)


@pytest.mark.parametrize("source", ["", "def make_model(:\n", "x = 1\x00"])
def test_unreadable_model_source_is_unknown(source):
    assert classify_model(source).label == "unknown"


def test_recursive_helpers_terminate():
    source = """
def build(n):
    return build(n - 1) if n else build(n)

class Loop(Loop):
    pass

def make_model():
    a = b
    b = a
    return Loop() if build(3) else a
"""
    assert classify_model(source).label == "other"
    assert classify_features("def f(x):\n    return f(x)\n\ndef make_features(df):\n    return f(df)\n").kinds == ()


# ---- the numbers an experiment chose ---------------------------------------------------------------------------


def test_model_settings_are_the_literal_numbers_of_the_model_s_keywords():
    source = (
        "import lightgbm as lgb\nfrom sklearn.pipeline import make_pipeline\n"
        "from sklearn.preprocessing import StandardScaler\n\n"
        "DEPTH = 4\n\n"
        "def make_model():\n"
        "    return make_pipeline(StandardScaler(with_mean=True), lgb.LGBMClassifier(\n"
        "        n_estimators=300, learning_rate=0.05, max_depth=DEPTH, min_child_samples=2 * 10,\n"
        "        reg_lambda=-0.0, random_state=7, n_jobs=1, verbose=-1))\n"
    )
    assert model_settings(source) == {"n_estimators": 300.0, "learning_rate": 0.05, "reg_lambda": -0.0}
    assert model_settings("def make_model(:\n    return 1\n") == {}


def test_feature_windows_are_the_lengths_of_window_operations_in_source_order():
    source = (
        "import numpy as np\n\n"
        "def make_features(df):\n"
        "    g = df.groupby(level='symbol')\n"
        "    out = df[[]].copy()\n"
        "    out['ret'] = g['close'].pct_change(5)\n"
        "    out['vol'] = g['close'].transform(lambda s: s.rolling(window=30, min_periods=10).std())\n"
        "    out['ema'] = g['close'].transform(lambda s: s.ewm(span=12).mean())\n"
        "    out['lag'] = g['close'].shift(1)\n"
        "    out['log'] = np.log(df['close']).diff()\n"
        "    out['n'] = df['close'].rolling(N).mean()\n"
        "    return out\n"
    )
    assert feature_windows(source) == [5.0, 30.0, 12.0, 1.0]
    assert feature_windows("def make_features(df):\n    return df[['close']]\n") == []
