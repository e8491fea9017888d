"""The tiny policy's corpus: valid specs whose features run on a panel and are causal, every family runs, a
documented share of mistakes that fail as documented."""

import ast
import json
import random
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import pytest

from sharpe_rl.policy.corpus import (
    CORPUS_PROMPT_VERSIONS,
    FEATURE_SNIPPETS,
    MISTAKE_KINDS,
    MODEL_FAMILIES,
    CorpusExample,
    build_corpus,
    features_source,
    inject_mistake,
    make_spec,
)
from sharpe_rl.spec import ExperimentSpec, parse_spec

SIZE, SHARE = 400, 0.05
#: Bars of its own a symbol needs before every feature is defined (the longest window is 100 bars).
WARMUP = 100
#: The panel's symbol codes, not in the order of their prices' scale; code 1 is listed late, at LISTED_LATE_AT.
CODES = (3, 1, 0, 2)
LISTED_LATE_AT = 110
TIMES = 260
#: Fitting uses the labelled rows before this time; predictions are asked for the rows from it on.
TRAIN_END = 200
#: Where a snippet is cut to check causality (positions in the panel's times): every fifth time, and the times
#: around the late listing and around code 3's missing week. The rows up to each cut are compared.
SNIPPET_CUTS = sorted({*range(0, TIMES, 5), LISTED_LATE_AT - 1, LISTED_LATE_AT, LISTED_LATE_AT + 1, 139, 140, 147})
#: ... and a whole spec: before the late listing, at it, inside the missing week, the end.
SPEC_CUTS = (60, LISTED_LATE_AT, 143, TIMES - 2)


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(SIZE, seed=0, mistake_share=SHARE)


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    """Daily random walks of four symbols as `make_features` receives them: a (timestamp, symbol) MultiIndex,
    sorted, columns exactly OHLCV. Code 1 is listed late; code 3 misses a week, code 0 every 17th bar."""
    rng = np.random.default_rng(0)
    times = pd.date_range("2023-01-01", periods=TIMES, freq="D", tz="UTC", name="timestamp")
    frames = []
    for scale, code in enumerate(CODES):
        close = 10.0**scale * np.exp(np.cumsum(rng.normal(0, 0.02, TIMES)))
        open_ = close * np.exp(rng.normal(0, 0.005, TIMES))
        bars = pd.DataFrame(
            {
                "open": open_,
                "high": np.maximum(open_, close) * 1.01,
                "low": np.minimum(open_, close) * 0.99,
                "close": close,
                "volume": rng.lognormal(10, 0.5, TIMES),
            },
            index=pd.MultiIndex.from_arrays([times, np.full(TIMES, code)], names=["timestamp", "symbol"]),
        )
        keep = np.ones(TIMES, dtype=bool)
        if code == 1:
            keep[:LISTED_LATE_AT] = False
        elif code == 3:
            keep[140:147] = False
        elif code == 0:
            keep[::17] = False
        frames.append(bars[keep])
    return pd.concat(frames).sort_index()


def load(spec: ExperimentSpec) -> tuple[Callable[[pd.DataFrame], pd.DataFrame], Callable[[], object]]:
    """make_features and make_model, executed in one namespace as the sandbox worker does."""
    namespace: dict = {"__name__": "experiment"}
    exec(spec.features, namespace)
    exec(spec.model, namespace)
    return namespace["make_features"], namespace["make_model"]


def snippet_features(name: str, seeds: Iterable[int] = range(3)) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """make_features of one snippet, drawn with several seeds (so several windows) in one body."""
    _, make = FEATURE_SNIPPETS[name]
    namespace: dict = {}
    exec(features_source([line for seed in seeds for line in make(random.Random(seed))]), namespace)
    return namespace["make_features"]


def assert_runs_after_warmup(features: pd.DataFrame, panel: pd.DataFrame) -> None:
    """A numeric frame on the panel's index, finite once each symbol has WARMUP bars of its own."""
    assert features.index.equals(panel.index)
    assert len(features.columns) and all(pd.api.types.is_numeric_dtype(t) for t in features.dtypes)
    warm = panel.groupby(level="symbol").cumcount().to_numpy() >= WARMUP
    assert np.isfinite(features.to_numpy(dtype=float)[warm]).all()


def assert_causal(
    make_features: Callable[[pd.DataFrame], pd.DataFrame], panel: pd.DataFrame, cuts: Iterable[int]
) -> None:
    """The rows up to each cut time t, exactly the same whether or not the bars after t exist."""
    full = make_features(panel)
    times = panel.index.get_level_values("timestamp").unique()
    for position in cuts:
        t = times[position]
        cut, expected = make_features(panel.loc[:t]), full.loc[:t]
        assert cut.index.equals(expected.index) and list(cut.columns) == list(expected.columns)
        np.testing.assert_array_equal(cut.to_numpy(dtype=float), expected.to_numpy(dtype=float), f"cut at {t}")


def fit_and_predict(spec: ExperimentSpec, panel: pd.DataFrame) -> np.ndarray:
    """make_features -> next-bar-up labels per symbol -> fit before TRAIN_END -> predict_proba from it on.

    As the sandbox does, rows with a non-finite feature are neither fitted nor predicted."""
    make_features, make_model = load(spec)
    X = make_features(panel)
    next_close = panel.groupby(level="symbol")["close"].shift(-1)
    y = (next_close > panel["close"]).astype(int)
    usable = np.isfinite(X.to_numpy(dtype=float)).all(axis=1)
    early = panel.index.get_level_values("timestamp") < panel.index.get_level_values("timestamp").unique()[TRAIN_END]
    train = usable & early & next_close.notna().to_numpy()
    model = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on a random walk are expected
        model.fit(X[train].to_numpy(dtype=float), y[train].to_numpy())
        return np.asarray(model.predict_proba(X[usable & ~early].to_numpy(dtype=float)))


def run_mistaken(example: CorpusExample, panel: pd.DataFrame) -> None:
    """What the sandbox does first with a spec: make_features on the panel, then make_model()."""
    spec = parse_spec(example.completion)
    make_features, make_model = load(spec)
    make_features(panel)
    make_model()


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
        assert ("Example:" in example.prompt) == (example.prompt_version == "v4_example")


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
def test_every_feature_snippet_runs_on_the_panel(snippet, panel):
    assert_runs_after_warmup(snippet_features(snippet)(panel), panel)


@pytest.mark.parametrize("snippet", sorted(FEATURE_SNIPPETS))
def test_every_feature_snippet_is_causal(snippet, panel):
    """The features at (t, s) must not change when the bars after t are appended."""
    assert_causal(snippet_features(snippet), panel, SNIPPET_CUTS)


@pytest.mark.parametrize("snippet", sorted(FEATURE_SNIPPETS))
def test_per_symbol_snippets_see_one_symbol_and_cross_sectional_ones_compare_symbols(snippet, panel):
    """A per-symbol feature of s is what s's bars alone give (no bar of another symbol leaks in); a
    cross-sectional one (grouped by timestamp) changes when the other symbols are left out."""
    make_features = snippet_features(snippet)
    full = make_features(panel)
    cross_sectional = "groupby(level='timestamp')" in features_source(FEATURE_SNIPPETS[snippet][1](random.Random(0)))
    for code in CODES:
        alone = make_features(panel.xs(code, level="symbol", drop_level=False))
        same = np.array_equal(
            alone.to_numpy(dtype=float), full.xs(code, level="symbol", drop_level=False), equal_nan=True
        )
        assert same != cross_sectional, code


def test_a_sample_of_corpus_specs_runs_on_the_panel_and_is_causal(corpus, panel):
    sample = [example for example in corpus[:200] if example.mistake is None]
    assert len(sample) > 180
    for example in sample:
        make_features, _ = load(parse_spec(example.completion))
        assert_runs_after_warmup(make_features(panel), panel)
        assert_causal(make_features, panel, SPEC_CUTS)


def test_every_mistaken_example_fails_as_documented(corpus, panel):
    mistaken = [example for example in corpus if example.mistake]
    assert {example.mistake for example in mistaken} == set(MISTAKE_KINDS)
    for example in mistaken:
        with pytest.raises(KeyError if example.mistake == "missing_column" else TypeError):
            run_mistaken(example, panel)


def test_specs_use_only_the_columns_they_are_given():
    rng = random.Random(0)
    for family in MODEL_FAMILIES:
        spec = make_spec(rng, family, columns=("close",))
        assert set(re.findall(r"\b(?:df|g)\['(\w+)'\]", spec.features)) == {"close"}


@pytest.mark.parametrize("family", sorted(MODEL_FAMILIES))
def test_every_family_fits_and_its_mistakes_fail_as_documented(family, panel):
    rng = random.Random(0)
    spec = make_spec(rng, family)
    p = fit_and_predict(spec, panel)
    assert p.shape[0] > 150 and p.shape[1] == 2 and np.isfinite(p).all()
    with pytest.raises(KeyError):
        fit_and_predict(inject_mistake(spec, family, "missing_column", rng), panel)
    with pytest.raises(TypeError):
        fit_and_predict(inject_mistake(spec, family, "wrong_argument", rng), panel)


def test_a_missing_column_mistake_may_take_the_symbol_for_a_column(panel):
    """The symbol is an index level, not a column: `df['symbol']` fails as any other missing column."""
    rng = random.Random(0)
    spec = make_spec(rng, "knn")
    wrong = {inject_mistake(spec, "knn", "missing_column", random.Random(seed)).features for seed in range(40)}
    symbol = [features for features in wrong if "df.groupby(df['symbol'])" in features]
    assert symbol and len(wrong) > len(symbol)
    with pytest.raises(KeyError):
        load(spec.model_copy(update={"features": symbol[0]}))[0](panel)
