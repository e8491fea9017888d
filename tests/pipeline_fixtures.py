"""Helpers for the tests that drive the pipeline: run settings, scripted completions, MLflow look-ups."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _artifact_repos_cache
from transformers import AutoTokenizer

from sharpe_rl import steps as run_steps
from sharpe_rl.config import EvalConfig, PolicyConfig, RunConfig, SandboxConfig
from sharpe_rl.policy import learner
from sharpe_rl.policy.generation import Generation
from sharpe_rl.policy.learner import Batch, PolicyRef
from sharpe_rl.steps import RunRef
from sharpe_rl.tracking import EXPERIMENT_NAME, default_tracking_uri

RAISES = """
def make_features(df):
    raise ValueError("this experiment fails on purpose")
"""


def make_config(runs_dir: Path, dataset: Path, policy: Path, name: str, **updates) -> RunConfig:
    config = RunConfig(
        name=name,
        cycles=2,
        batch_size=4,
        dataset=dataset,
        runs_dir=runs_dir,
        eval=EvalConfig(n_folds=2),
        sandbox=SandboxConfig(executor="docker", workers=2, timeout_seconds=90, memory_mb=1024),
        policy=PolicyConfig(model=str(policy), max_new_tokens=700),
    )
    return config.model_copy(update=updates)


def spec_completion(name: str, features: str, model: str) -> str:
    return json.dumps({"name": name, "features": features, "model": model})


class ScriptedGenerator:
    """Generations of fixed completions, tokenised as the policy would: the pipeline around the policy, pinned."""

    def __init__(self, tokenizer, completions: list[str]) -> None:
        self.tokenizer = tokenizer
        self.completions = completions

    def generate(self, prompts: list[str], seed: int) -> list[Generation]:
        out = []
        for prompt, completion in zip(prompts, self.completions, strict=False):
            completion_ids = self.tokenizer(completion)["input_ids"] + [self.tokenizer.eos_token_id]
            out.append(
                Generation(
                    prompt=prompt,
                    completion=completion,
                    prompt_token_ids=self.tokenizer(prompt)["input_ids"],
                    completion_token_ids=completion_ids,
                    logprobs=[0.0] * len(completion_ids),
                )
            )
        return out


def scripted(monkeypatch, config: RunConfig, completions: list[str]) -> None:
    """Make the policy write `completions` every cycle (the update still trains the real policy on them)."""
    scripted_generator = ScriptedGenerator(AutoTokenizer.from_pretrained(config.policy.model), completions)

    def generate(policy: PolicyRef, prompts: list[str], *, cycle: int, seed: int) -> Batch:
        return Batch(cycle=cycle, generations=scripted_generator.generate(prompts, seed), seconds=0.0)

    monkeypatch.setattr(learner, "generate", generate)


def run_cycles(config: RunConfig, cycles: range | list[int] = range(1)) -> RunRef:
    """Start the run and run `cycles` through the cycle flow (with the run's task runner); returns the run."""
    from flows.cycle import cycle
    from flows.task_runners import task_runner

    run = run_steps.start(config)
    run_cycle = cycle.with_options(task_runner=task_runner(config.task_runner, config.sandbox.workers))
    policy = run.policy
    for index in cycles:
        policy = run_cycle(run, policy, index).policy
    return run


def copy_runs(source: Path, target: Path) -> Path:
    """A copy of a runs folder whose embedded MLflow store keeps its artifacts in the copy: the store records
    absolute artifact locations, which would otherwise still point into `source` (and a test writing to the copy
    would change the shared run's files)."""
    shutil.copytree(source, target)
    old, new = source.resolve().as_uri(), target.resolve().as_uri()
    with sqlite3.connect(target / "mlflow.db") as db:
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
    db.close()
    # MLflow remembers where a run's artifacts live by run id, for the whole process: the copy's ids are the same
    _artifact_repos_cache.clear()
    return target


def mlflow_client(runs_dir: Path, tracking_uri: str | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri or default_tracking_uri(runs_dir))


def parent_run(client: MlflowClient, run: str):
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`sharpe_rl.kind` = 'parent' and tags.`sharpe_rl.run` = '{run}'",
    )
    assert len(found) == 1, f"{len(found)} parent runs named {run}"
    return found[0]


def children(runs_dir: Path, run: str, tracking_uri: str | None = None) -> list:
    client = mlflow_client(runs_dir, tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`sharpe_rl.run` = '{run}' and tags.`sharpe_rl.kind` = 'experiment'",
    )
