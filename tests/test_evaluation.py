"""`evaluate(completion, evaluation_ref)`: the one path from a completion to an outcome, and what it needs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sandbox_fixtures import spec

from sharpe_rl.config import EvalConfig, RewardConfig, SandboxConfig
from sharpe_rl.evaluation import DatasetMismatch, EvaluationRef, evaluate, load_evaluation


@pytest.fixture
def ref(tmp_path, sandbox_panel) -> EvaluationRef:
    dataset = tmp_path / "panel.parquet"
    sandbox_panel.write_parquet(dataset)
    return EvaluationRef.of(dataset, EvalConfig(), SandboxConfig(executor="docker"), tmp_path / "cache", seed=3)


def test_a_ref_is_small_plain_data_that_names_the_dataset_by_content(ref):
    assert ref.dataset.is_absolute() and len(ref.data_sha256) == 64
    assert EvaluationRef.model_validate_json(ref.model_dump_json()) == ref
    assert hash(ref) == hash(ref.model_copy())  # usable as a cache key, in a process or across them


def test_a_static_failure_is_an_outcome_and_needs_no_sandbox(ref):
    outcome = evaluate("I would use LightGBM.", ref)
    assert outcome.status == "json_parse" and outcome.result is None and outcome.spec is None
    assert outcome.reward(RewardConfig(), noskill_sigma=None) == RewardConfig().penalty_format
    assert not (ref.cache_dir / "results").exists()  # nothing was run or written


def test_code_that_fails_a_static_check_keeps_its_spec_and_its_penalty(ref):
    """The JSON parsed, the code did not pass: the outcome names what was tried, and pays what it paid before."""
    forbidden = spec("honest").model_copy(update={"model": "import os\n" + spec("honest").model})
    outcome = evaluate(forbidden.model_dump_json(), ref)
    assert outcome.status == "forbidden_import" and "'os'" in outcome.message
    assert outcome.spec == forbidden and outcome.result is None and outcome.metrics is None
    assert outcome.reward(RewardConfig(), noskill_sigma=None) == RewardConfig().penalty_format
    assert not (ref.cache_dir / "results").exists()


def test_a_dataset_that_changed_under_the_run_is_refused(ref):
    ref.dataset.write_bytes(ref.dataset.read_bytes() + b"\0")
    with pytest.raises(DatasetMismatch, match="is not the run's dataset"):
        evaluate(spec("honest").model_dump_json(), ref)


def test_loading_a_ref_builds_no_sandbox_until_one_runs(ref):
    loaded = load_evaluation(ref)
    assert loaded.symbols == ["BTCUSDT", "ETHUSDT", "SOLUSDT"] and "runner" not in vars(loaded)


def test_the_evaluation_side_imports_no_policy_tracking_or_orchestration():
    """What a Dask worker imports to run executions: no torch, transformers, MLflow or Prefect."""
    code = (
        "import sys, sharpe_rl.evaluation\n"
        "print(sorted(m for m in ('torch', 'transformers', 'mlflow', 'prefect') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
