"""`sharpe-rl evaluate-policy --task-runner/--dask-address` reach the flow as its `task_runner`; without them the
flow executes where the run's executions ran. The flow itself is tests/test_pipeline.py's and test_scale_out.py's."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import flows.evaluate_policy
import sharpe_rl.evaluate_policy
from cli.app import app
from sharpe_rl.config import TaskRunnerConfig

runner = CliRunner()


@pytest.fixture
def flow_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The keyword arguments of each evaluate_policy flow call; the plan and the flow are stand-ins."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")})
    (tmp_path / "runs").mkdir()
    plan = SimpleNamespace(seed=7, final=SimpleNamespace(cycle=3))
    monkeypatch.setattr(sharpe_rl.evaluate_policy, "plan_comparison", lambda runs_dir, run, n, seed: plan)
    calls: list[dict] = []

    def flow(run: str, **parameters: object) -> list[dict]:
        calls.append(parameters)
        return []

    monkeypatch.setattr(flows.evaluate_policy, "evaluate_policy", flow)
    return calls


def evaluate(*options: str):
    return runner.invoke(app, ["evaluate-policy", "night", "--verbose", *options])


@pytest.mark.parametrize(
    "options, task_runner",
    [
        ([], None),  # where the run's executions ran
        (["--task-runner", "threads"], TaskRunnerConfig(kind="threads")),
        (
            ["--task-runner", "dask", "--dask-address", "tcp://h:8786"],
            TaskRunnerConfig(kind="dask", dask_address="tcp://h:8786"),
        ),
        (["--dask-address", "tcp://h:8786"], TaskRunnerConfig(kind="dask", dask_address="tcp://h:8786")),
    ],
    ids=["the run's", "threads", "dask", "an address alone"],
)
def test_the_task_runner_options_reach_the_flow(flow_calls, options, task_runner):
    result = evaluate(*options)
    assert result.exit_code == 0, result.output
    assert flow_calls == [{"n": 64, "seed": 7, "runs_dir": Path("runs"), "task_runner": task_runner}]


def test_dask_without_an_address_is_answered_in_one_line_before_anything_starts(flow_calls):
    result = evaluate("--task-runner", "dask")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --task-runner/--dask-address: the dask task runner needs")
    assert len(result.stderr.strip().splitlines()) == 1
    assert flow_calls == []
