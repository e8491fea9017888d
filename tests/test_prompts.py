"""Prompt templates: rendered from the dataset's real schema, versioned, and the v1 example runs."""

import ast
import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from sharpe_rl.archive import Elite
from sharpe_rl.policy.prompts import describe_interval, prompt_versions, render_prompt
from sharpe_rl.sandbox.contract import ALLOWED_PACKAGES
from sharpe_rl.spec import ExperimentSpec, parse_spec

OHLCV = ["open", "high", "low", "close", "volume"]


def render(version: str, columns=OHLCV, interval=timedelta(days=1), horizon=1, symbols=("BTCUSDT", "ETHUSDT")) -> str:
    return render_prompt(version, columns, interval, horizon, list(symbols))


def listed_columns(prompt: str) -> list[str]:
    line = next(line for line in prompt.splitlines() if "Its columns are exactly: " in line)
    return line.split("Its columns are exactly: ")[1].split(". No other column")[0].split(", ")


def test_both_versions_are_available():
    assert {"v1_example", "v2_rules"} <= set(prompt_versions())


def test_v2_lists_exactly_the_dataset_columns():
    assert listed_columns(render("v2_rules")) == OHLCV
    assert listed_columns(render("v2_rules", columns=["close", "quote_volume", "trades"])) == [
        "close",
        "quote_volume",
        "trades",
    ]


def test_v2_renders_interval_horizon_symbols_and_the_allowed_packages():
    prompt = render("v2_rules", interval=timedelta(hours=4), horizon=3, symbols=["SOLUSDT", "XRPUSDT"])
    assert "4-hour bars" in prompt
    assert "3 bars later" in prompt
    assert "SOLUSDT, XRPUSDT" in prompt
    imports = next(line for line in prompt.splitlines() if line.startswith("- Import only"))
    for package in ("lightgbm", "xgboost", "sklearn", "torch", "numpy", "pandas", "math"):
        assert package in ALLOWED_PACKAGES and package in imports
    assert "requests" not in imports and " os" not in imports


def test_v2_states_the_causality_rule_and_output_format_and_has_no_worked_example():
    prompt = render("v2_rules")
    assert "up to and including bar t" in prompt and "shift(-k)" in prompt and "center=True" in prompt
    assert '{"name": "<short name>", "features": "<python source>", "model": "<python source>"}' in prompt
    assert "def make_model" not in prompt


def test_v1_worked_example_is_a_lightgbm_spec_that_runs():
    example = parse_spec(render("v1_example"))
    assert "LGBMClassifier" in example.model
    ast.parse(example.features)
    scope: dict = {}
    exec(example.features, scope)
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 120)))
    bars = pd.DataFrame({"close": close}, index=pd.date_range("2024-01-01", periods=120, freq="D", tz="UTC"))
    features = scope["make_features"](bars)
    assert features.index.equals(bars.index) and features.shape[1] == 5


def test_prompts_end_with_the_same_cue():
    for version in prompt_versions():
        assert render(version).endswith("Experiment:\n")


def test_unknown_version_and_empty_columns_are_refused():
    with pytest.raises(ValueError, match="v2_rules"):
        render("v9_nothing")
    with pytest.raises(ValueError, match="columns"):
        render("v2_rules", columns=[])


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


def test_v3_without_elites_is_v2():
    assert render("v3_inspiration") == render("v2_rules")


def test_v3_shows_each_elite_as_a_spec_in_the_completion_layout_before_the_cue():
    prompt = render("v3_inspiration", symbols=["BTCUSDT"])
    with_elites = render_prompt("v3_inspiration", OHLCV, timedelta(days=1), 1, ["BTCUSDT"], elites=ELITES)
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
    with pytest.raises(ValueError, match="v3_inspiration"):
        render_prompt("v2_rules", OHLCV, timedelta(days=1), 1, ["BTCUSDT"], elites=ELITES)


def test_a_run_prompt_says_how_many_symbols_there_are_and_names_them_only_when_asked():
    from sharpe_rl.config import RunConfig
    from sharpe_rl.policy.prompts import run_prompt

    symbols = ["BTCUSD", "ETHUSD", "LTCUSD"]
    hidden = run_prompt(RunConfig(), timedelta(days=1), symbols)
    assert "3 symbols, whose names are not given" in hidden
    assert not any(name in hidden for name in (*symbols, "BTC", "ETH", "LTC"))
    named = run_prompt(RunConfig(name_symbols=True), timedelta(days=1), symbols)
    assert "BTCUSD, ETHUSD, LTCUSD" in named
