"""The tiny policy's corpus: valid specs, causal features, every family runs, a documented share of mistakes."""

import ast
import json
import random
import re
import warnings
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from sharpe_rl.policy.corpus import (
    CORPUS_PROMPT_VERSIONS,
    FEATURE_SNIPPETS,
    MISTAKE_KINDS,
    MODEL_FAMILIES,
    build_corpus,
    features_source,
    inject_mistake,
    make_spec,
)
from sharpe_rl.spec import ExperimentSpec, parse_spec

SIZE, SHARE = 400, 0.05


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(SIZE, seed=0, mistake_share=SHARE)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    """A synthetic random walk of 260 daily OHLCV bars."""
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 260)))
    open_ = close * np.exp(rng.normal(0, 0.005, 260))
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) * 1.01,
            "low": np.minimum(open_, close) * 0.99,
            "close": close,
            "volume": rng.lognormal(10, 0.5, 260),
        },
        index=pd.date_range("2023-01-01", periods=260, freq="D", tz="UTC"),
    )


def run_spec(spec: ExperimentSpec, bars: pd.DataFrame) -> np.ndarray:
    """make_features -> next-bar-up labels -> fit on the first 200 bars -> predict_proba on the rest."""
    features_scope, model_scope = {}, {}
    exec(spec.features, features_scope)
    exec(spec.model, model_scope)
    X = features_scope["make_features"](bars).iloc[:-1]
    y = (bars["close"].shift(-1) > bars["close"]).astype(int).iloc[:-1]
    model = model_scope["make_model"]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on a random walk are expected
        model.fit(X.iloc[:200], y.iloc[:200])
        return np.asarray(model.predict_proba(X.iloc[200:]))


def test_every_completion_is_a_valid_spec_whose_code_parses(corpus):
    for example in corpus:
        spec = parse_spec(example.completion)
        assert example.completion == json.dumps(spec.model_dump())  # the layout the prompts show
        ast.parse(spec.features)
        ast.parse(spec.model)


def test_prompts_are_real_renderings_of_both_versions(corpus):
    assert Counter(e.prompt_version for e in corpus) == {v: SIZE // 2 for v in CORPUS_PROMPT_VERSIONS}
    for example in corpus:
        assert example.prompt.endswith("Experiment:\n")
        assert ("Example:" in example.prompt) == (example.prompt_version == "v1_example")


def test_families_are_balanced(corpus):
    counts = Counter(e.family for e in corpus)
    assert set(counts) == set(MODEL_FAMILIES)
    assert max(counts.values()) - min(counts.values()) <= 2


def test_the_mistake_share_is_the_documented_one(corpus):
    mistakes = Counter(e.mistake for e in corpus if e.mistake)
    assert sum(mistakes.values()) == round(SIZE * SHARE)
    assert set(mistakes) == set(MISTAKE_KINDS)


def test_the_corpus_is_deterministic_in_its_seed():
    assert build_corpus(30, seed=1, mistake_share=SHARE) == build_corpus(30, seed=1, mistake_share=SHARE)
    assert build_corpus(30, seed=1, mistake_share=SHARE) != build_corpus(30, seed=2, mistake_share=SHARE)


@pytest.mark.parametrize("snippet", sorted(FEATURE_SNIPPETS))
def test_every_feature_snippet_is_causal(snippet, bars):
    """A feature at bar t must not change when the bars after t are removed."""
    _, make = FEATURE_SNIPPETS[snippet]
    for seed in range(3):
        scope: dict = {}
        exec(features_source(make(random.Random(seed))), scope)
        full = scope["make_features"](bars)
        truncated = scope["make_features"](bars.iloc[:150])
        pd.testing.assert_frame_equal(full.iloc[:150], truncated)


def test_specs_use_only_the_columns_they_are_given():
    rng = random.Random(0)
    for family in MODEL_FAMILIES:
        spec = make_spec(rng, family, columns=("close",))
        assert set(re.findall(r"df\['(\w+)'\]", spec.features)) == {"close"}


@pytest.mark.parametrize("family", sorted(MODEL_FAMILIES))
def test_every_family_fits_and_its_mistakes_fail_as_documented(family, bars):
    rng = random.Random(0)
    spec = make_spec(rng, family)
    p = run_spec(spec, bars)
    assert p.shape == (59, 2) and np.isfinite(p).all()
    with pytest.raises(KeyError):
        run_spec(inject_mistake(spec, family, "missing_column", rng), bars)
    with pytest.raises(TypeError):
        run_spec(inject_mistake(spec, family, "wrong_argument", rng), bars)
