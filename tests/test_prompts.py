"""Prompt templates: rendered from the dataset's real schema and the evaluation's clock, versioned; the example runs."""

import ast
import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from sharpe_rl.archive import Elite
from sharpe_rl.config import EvalConfig
from sharpe_rl.data.clock import Clock
from sharpe_rl.policy.prompts import describe_interval, prompt_versions, render_prompt
from sharpe_rl.sandbox.contract import ALLOWED_PACKAGES
from sharpe_rl.spec import ExperimentSpec, parse_spec

OHLCV = ["open", "high", "low", "close", "volume"]
DAILY = Clock.of(EvalConfig(), timedelta(days=1))


def render(
    version: str, columns=OHLCV, interval=timedelta(days=1), horizon=None, symbols=("BTCUSDT", "ETHUSDT"), **clock
) -> str:
    return render_prompt(
        version, columns, interval, Clock.of(EvalConfig(horizon=horizon, **clock), interval), list(symbols)
    )


def listed_columns(prompt: str) -> list[str]:
    line = next(line for line in prompt.splitlines() if "Its columns are exactly: " in line)
    return line.split("Its columns are exactly: ")[1].split(". No other column")[0].split(", ")


def test_both_versions_are_available():
    assert {"v4_example", "v5_rules"} <= set(prompt_versions())


def test_v5_lists_exactly_the_dataset_columns():
    assert listed_columns(render("v5_rules")) == OHLCV
    assert listed_columns(render("v5_rules", columns=["close", "quote_volume", "trades"])) == [
        "close",
        "quote_volume",
        "trades",
    ]


def test_v5_renders_interval_decisions_horizon_history_symbols_and_the_allowed_packages():
    prompt = render("v5_rules", interval=timedelta(hours=4), horizon=3, symbols=["SOLUSDT", "XRPUSDT"])
    assert "4-hour bars" in prompt
    assert "Decisions: once per UTC day, at the close of its last bar." in prompt
    assert "close 12 hours after the decision" in prompt  # 3 bars of 4 hours
    assert "bars of the last 43 days up to and including the decision time" in prompt  # 256 bars, in whole days
    assert "Decisions: at every bar." in render("v5_rules")  # daily bars
    assert "Decisions: every 5 bars." in render("v5_rules", decide_every=5)
    assert "SOLUSDT, XRPUSDT" in prompt
    imports = next(line for line in prompt.splitlines() if line.startswith("- Import only"))
    for package in ("lightgbm", "xgboost", "sklearn", "torch", "numpy", "pandas", "math"):
        assert package in ALLOWED_PACKAGES and package in imports
    assert "requests" not in imports and " os" not in imports


def test_v5_states_the_whole_panel_contract_the_causality_rule_and_output_format_and_has_no_worked_example():
    prompt = render("v5_rules")
    assert "called once per decision time for the whole panel" in prompt
    assert "indexed by (timestamp, symbol)" in prompt and 'groupby(level="symbol")' in prompt
    assert 'groupby(level="timestamp").rank(pct=True)' in prompt  # cross-sectional features
    assert "probability of class 1 in column 1" in prompt  # what the worker reads
    assert "up to and including t" in prompt and "shift(-k)" in prompt and "center=True" in prompt
    assert '{"name": "<short name>", "features": "<python source>", "model": "<python source>"}' in prompt
    assert "def make_model" not in prompt


def test_v4_worked_example_is_a_lightgbm_spec_that_runs_on_the_whole_panel():
    example = parse_spec(render("v4_example"))
    assert "LGBMClassifier" in example.model
    ast.parse(example.features)
    scope: dict = {}
    exec(example.features, scope)
    rng = np.random.default_rng(0)
    times = pd.date_range("2024-01-01", periods=120, freq="D", tz="UTC")
    index = pd.MultiIndex.from_product([times, [0, 1, 2]], names=["timestamp", "symbol"])
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (120, 3)), axis=0)).ravel()
    bars = pd.DataFrame({"close": close}, index=index)
    features = scope["make_features"](bars)
    assert features.index.equals(bars.index) and features.shape[1] == 5
    # per symbol: symbol 1's returns are its own, not the neighbouring row's
    one = bars.xs(1, level="symbol")["close"]
    assert features.xs(1, level="symbol")["ret_1"].iloc[1:].to_numpy() == pytest.approx(one.pct_change().iloc[1:])


def test_prompts_end_with_the_same_cue():
    for version in prompt_versions():
        assert render(version).endswith("Experiment:\n")


def test_unknown_version_and_empty_columns_are_refused():
    with pytest.raises(ValueError, match="v5_rules"):
        render("v9_nothing")
    with pytest.raises(ValueError, match="columns"):
        render("v5_rules", columns=[])


@pytest.mark.parametrize(
    ("interval", "words"),
    [(timedelta(days=1), "1-day"), (timedelta(hours=4), "4-hour"), (timedelta(minutes=15), "15-minute"), ("1h", "1h")],
)
def test_describe_interval(interval, words):
    assert describe_interval(interval) == words


# -- elites of the quality-diversity archive as inspiration -------------------------------------


def elite(family: str, block: str, sharpe: float, model: str) -> Elite:
    spec = ExperimentSpec(
        name=f"{family} on {block}",
        features='def make_features(df):\n    return df[["close"]].pct_change()\n',
        model=f"def make_model():\n    {model}\n",
    )
    return Elite(
        model_family=family,
        block=block,
        run="run",
        cycle=3,
        index=1,
        name=spec.name,
        code_hash=spec.code_hash,
        sharpe_net=sharpe,
        spec_json=spec.model_dump_json(),
    )


ELITES = [
    elite(
        "sklearn/knn",
        "volume",
        0.812,
        "from sklearn.neighbors import KNeighborsClassifier\n    return KNeighborsClassifier()",
    ),
    elite("torch", "calendar", 1.5, 'return None  # a "quoted" comment'),
]


def test_v6_without_elites_is_v5():
    assert render("v6_inspiration") == render("v5_rules")


def test_v6_shows_each_elite_as_a_spec_in_the_completion_layout_before_the_cue():
    prompt = render("v6_inspiration", symbols=["BTCUSDT"])
    with_elites = render_prompt("v6_inspiration", OHLCV, timedelta(days=1), DAILY, ["BTCUSDT"], elites=ELITES)
    rules, block = with_elites.split("Experiments of earlier cycles that made money", 1)
    assert rules == prompt.removesuffix("Experiment:\n") + "\n"  # the rules unchanged, a blank line, the block
    assert with_elites.endswith("\nExperiment:\n")
    assert "sklearn/knn model on volume features, net Sharpe 0.81:" in block
    assert "torch model on calendar features, net Sharpe 1.50:" in block
    shown = [line for line in block.splitlines() if line.startswith("{")]
    assert len(shown) == 2
    for line, e in zip(shown, ELITES, strict=True):
        assert parse_spec(line) == ExperimentSpec.model_validate_json(e.spec_json)
        spec = ExperimentSpec.model_validate_json(e.spec_json)
        assert line == json.dumps({"name": spec.name, "features": spec.features, "model": spec.model})


def test_elites_given_to_a_version_that_does_not_show_them_are_refused():
    with pytest.raises(ValueError, match="v6_inspiration"):
        render_prompt("v5_rules", OHLCV, timedelta(days=1), DAILY, ["BTCUSDT"], elites=ELITES)


def test_a_run_prompt_says_how_many_symbols_there_are_and_names_them_only_when_asked():
    from sharpe_rl.config import RunConfig
    from sharpe_rl.policy.prompts import run_prompt

    symbols = ["BTCUSD", "ETHUSD", "LTCUSD"]
    hidden = run_prompt(RunConfig(), timedelta(days=1), symbols)
    assert "3 symbols, whose names are not given" in hidden
    assert not any(name in hidden for name in (*symbols, "BTC", "ETH", "LTC"))
    named = run_prompt(RunConfig(name_symbols=True), timedelta(days=1), symbols)
    assert "BTCUSD, ETHUSD, LTCUSD" in named
