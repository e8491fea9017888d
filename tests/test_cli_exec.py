"""`sharpe-rl exec`: exit 0 whenever the experiment was run, whatever its outcome; non-zero only
when the sandbox itself cannot run, with the reason."""

from __future__ import annotations

import json

import polars as pl
import pytest
from sandbox_fixtures import features_doing, spec
from typer.testing import CliRunner

from cli.app import app
from sharpe_rl.config import RunConfig
from sharpe_rl.data.splits import fold_rows, plan_evaluation, reward_panel, timeline
from sharpe_rl.noskill import no_skill_band
from sharpe_rl.scoring import score_predictions, shape_reward

cli = CliRunner()


@pytest.fixture
def workdir(tmp_path, monkeypatch, sandbox_panel):
    """A working directory holding the panel and a spec file; results go to its runs/cache."""
    monkeypatch.chdir(tmp_path)
    sandbox_panel.write_parquet(tmp_path / "panel.parquet")
    return tmp_path


def write_spec(workdir, text: str) -> str:
    (workdir / "spec.json").write_text(text)
    return "spec.json"


def exec_(*args: str):
    return cli.invoke(app, ["exec", *args, "--data", "panel.parquet"])


@pytest.mark.filterwarnings("ignore:the process executor is NOT a security boundary")
def test_an_ok_run_prints_the_result_and_the_score_a_run_gives_it_as_json(workdir, sandbox_panel):
    result = exec_(write_spec(workdir, spec("honest").model_dump_json()), "--executor", "process", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[result.output.index("{") :])
    assert printed["status"] == "ok" and printed["executor"] == "process"
    assert (workdir / "runs" / "cache" / "results" / f"{printed['cache_key']}.json").is_file()

    # the score a run would give it: the predictions scored on the reward window, on the host
    config = RunConfig()
    predictions = pl.read_parquet(printed["predictions_path"])
    plan = plan_evaluation(timeline(sandbox_panel), config.eval)
    scored = reward_panel(sandbox_panel, plan)
    metrics = score_predictions(predictions, scored, config.eval)
    band = no_skill_band(scored, fold_rows(scored, plan.folds), config.eval)  # the panel's no-skill noise
    assert printed["noskill"]["sigma"] == pytest.approx(band.sigma)
    assert band.sentence() in " ".join(exec_(write_spec(workdir, spec("honest").model_dump_json())).output.split())
    expected = {name: getattr(metrics, name) for name in ("sharpe_net", "sharpe_gross", "turnover", "hit_rate")}
    expected |= {
        "evidence": metrics.sharpe_net / band.sigma,
        "reward": shape_reward(metrics, config.reward, noskill_sigma=band.sigma),
    }
    assert printed["score"] == pytest.approx(expected)
    assert printed["outcome"] == "ok"


@pytest.mark.filterwarnings("ignore:the process executor is NOT a security boundary")
def test_a_failing_experiment_still_exits_zero(workdir):
    failing = spec("boom", features_doing("", "1 / 0")).model_dump_json()
    result = exec_(write_spec(workdir, failing), "--executor", "process")
    assert result.exit_code == 0, result.output
    assert "runtime_error" in result.output and "ZeroDivisionError" in result.output


def test_a_static_failure_runs_nothing_and_exits_zero(workdir):
    text = "Sure! " + json.dumps({"name": "x", "features": "import os\ndef make_features(df): ...", "model": "..."})
    result = exec_(write_spec(workdir, text), "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["status"] == "forbidden_import"
    assert printed["score"] == {"sharpe_net": None, "sharpe_gross": None, "turnover": None, "hit_rate": None} | {
        "evidence": None,
        "reward": RunConfig().reward.penalty_format,
    }
    assert not (workdir / "runs" / "cache" / "results").exists()  # nothing ran


def test_no_engine_exits_non_zero_and_says_how_to_start_one(workdir, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{workdir}/no-such.sock")
    result = exec_(write_spec(workdir, spec("honest").model_dump_json()), "--executor", "docker")
    assert result.exit_code == 2
    assert "no Docker engine" in result.output and "dockerd" in result.output


@pytest.mark.docker
@pytest.mark.usefixtures("sandbox_image")
def test_a_docker_run_prints_a_table(workdir):
    result = exec_(write_spec(workdir, spec("honest").model_dump_json()))
    assert result.exit_code == 0, result.output
    assert "status" in result.output and "ok" in result.output and "docker" in result.output
    assert "net Sharpe" in result.output and "reward" in result.output
