"""`sharpe-rl sample`: what the current policy writes, with the static checks' outcome and the model family."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from data_fixtures import bars
from sandbox_fixtures import LOGISTIC, features_doing, spec
from transformers import AutoTokenizer
from typer.testing import CliRunner

from cli.app import app
from sharpe_rl.checks import check_completion
from sharpe_rl.classify import classify
from sharpe_rl.config import PolicyConfig, PPOConfig, RunConfig
from sharpe_rl.experience import Experience
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.policy.generation import Generation, TransformersGenerator
from sharpe_rl.policy.model import load_policy
from sharpe_rl.policy.ppo import PPOTrainer
from sharpe_rl.policy.preview import preview
from sharpe_rl.policy.prompts import run_prompt
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS
from sharpe_rl.spec import SpecError
from sharpe_rl.steps import run_config_path

cli = CliRunner()
SYMBOLS = ("BTCUSDT", "ETHUSDT")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with a daily two-symbol panel; runs live in its runs/."""
    monkeypatch.chdir(tmp_path)
    bars(SYMBOLS, n=60, step=timedelta(days=1)).write_parquet(tmp_path / "panel.parquet")
    return tmp_path


def sample(*args: str):
    return cli.invoke(app, ["sample", "--data", "panel.parquet", *args])


def sampled(*args: str) -> list[dict]:
    result = sample(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_each_completion_comes_with_the_pipelines_check_and_the_post_mortems_family(workdir, pipeline_policy):
    previews = sampled("--policy", str(pipeline_policy), "--n", "6")
    assert [p["index"] for p in previews] == list(range(6))
    for p in previews:
        try:
            spec = check_completion(p["completion"], OHLCV_COLUMNS)
        except SpecError as exc:
            assert (p["check"], p["message"]) == (exc.error_class, str(exc))
        else:
            assert p["check"] == "ok" and p["message"] is None
            assert p["model_family"] == classify(spec).model_family and p["name"] == spec.name
    assert any(p["check"] == "ok" for p in previews)  # a trained tiny policy writes runnable experiments


def generation(completion: str) -> Generation:
    return Generation("prompt", completion, [1], [2, 3], [0.0, 0.0])


def test_a_completion_that_parses_but_fails_a_check_still_shows_its_family():
    missing = json.dumps(spec("vwap", features_doing("", "vwap = df['vwap']"), LOGISTIC).model_dump())
    broken = '{"name": "half'
    fails_later, unparseable = preview([generation(missing), generation(broken)], OHLCV_COLUMNS)
    assert (fails_later.check, fails_later.model_family, fails_later.name) == (
        "missing_column",
        "sklearn/linear",
        "vwap",
    )
    assert "vwap" in fails_later.message and fails_later.completion_tokens == 2
    assert (unparseable.check, unparseable.model_family, unparseable.features) == ("json_parse", None, None)


def test_the_same_seed_gives_the_same_completions(workdir, pipeline_policy):
    first = sampled("--policy", str(pipeline_policy), "--n", "3", "--seed", "5")
    again = sampled("--policy", str(pipeline_policy), "--n", "3", "--seed", "5")
    other = sampled("--policy", str(pipeline_policy), "--n", "3", "--seed", "6")
    assert first == again
    assert [p["completion"] for p in first] != [p["completion"] for p in other]


def test_the_table_shows_the_source_each_outcome_and_a_summary(workdir, pipeline_policy):
    result = sample("--policy", str(pipeline_policy), "--n", "3")
    assert result.exit_code == 0, result.output
    previews = sampled("--policy", str(pipeline_policy), "--n", "3")
    assert "3 completions from the base policy" in result.stdout
    passed = sum(p["check"] == "ok" for p in previews)
    assert f"{passed} of 3 pass the static checks" in result.stdout
    for p in previews:
        assert p["check"] in result.stdout


def save_run(pipeline_policy: Path, name: str) -> RunConfig:
    """A run's saved settings, as `sharpe-rl run` leaves them, on the pipeline policy and this panel."""
    config = RunConfig(
        name=name,
        dataset=Path("panel.parquet"),
        policy=PolicyConfig(model=str(pipeline_policy), device="cpu"),
    )
    path = run_config_path(config.runs_dir, name)
    path.parent.mkdir(parents=True)
    path.write_text(config.model_dump_json())
    return config


def test_a_run_samples_from_its_latest_checkpoint(workdir, pipeline_policy):
    config = save_run(pipeline_policy, "tuned")
    base = sampled("--policy", str(pipeline_policy), "--n", "4")
    assert sampled("--run", "tuned", "--n", "4") == base  # no checkpoint yet: the base policy

    policy = load_policy(config.policy, seed=config.seed)
    tokenizer = AutoTokenizer.from_pretrained(pipeline_policy)
    generator = TransformersGenerator(policy.model, tokenizer, max_new_tokens=config.policy.max_new_tokens)
    prompt = run_prompt(config, timedelta(days=1), SYMBOLS)
    batch = generator.generate([prompt] * 4, seed=1)
    trainer = PPOTrainer(policy, PPOConfig(learning_rate=1e-2), seed=config.seed)
    trainer.update(
        [
            Experience.from_generation(g, run="tuned", cycle=0, index=i, prompt_version="v5_rules", reward=float(i % 2))
            for i, g in enumerate(batch)
        ]
    )
    Checkpoints(config.runs_dir, "tuned").save(trainer, cycle=0)

    result = sample("--run", "tuned", "--n", "4")
    assert "run tuned, after cycle 0" in result.stdout
    tuned = sampled("--run", "tuned", "--n", "4")
    expected = generator.generate([prompt] * 4, seed=0)  # the updated policy, in this process
    assert [p["completion"] for p in tuned] == [g.completion for g in expected]
    assert tuned != base


def test_an_unknown_run_or_policy_says_what_is_missing(workdir, pipeline_policy):
    result = sample("--run", "nope")
    assert result.exit_code == 1 and "no run 'nope'" in result.output
    result = sample("--policy", "no/such/policy")
    assert result.exit_code == 1 and "sharpe-rl build-policy" in result.output
    save_run(pipeline_policy, "tuned")
    result = sample("--run", "tuned", "--policy", "other")
    assert result.exit_code == 1 and "drop --policy" in result.output
