"""The pipeline end to end: Prefect flows over the real sandbox, policy, buffer, MLflow and checkpoints.

Under one `prefect_test_harness` (a temporary Prefect server for the whole module):
- two cycles of the tiny policy with the Docker executor leave the buffer, MLflow and the checkpoint
  in the state a user relies on;
- an injected transient Docker fault is retried and succeeds; an experiment that raises is a result,
  recorded once with its error class and never retried;
- a cycle whose specs were all executed before starts no container.
The resume test kills a real `sharpe-rl run` process mid-cycle and restarts it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import docker
import pytest
from mlflow.tracking import MlflowClient
from peft import LoraConfig
from prefect.testing.utilities import prefect_test_harness
from sandbox_fixtures import HONEST_FEATURES, LOGISTIC
from transformers import AutoTokenizer

from sharpe_rl import steps as run_steps
from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.config import EvalConfig, PolicyConfig, RunConfig, SandboxConfig
from sharpe_rl.experience import Experience
from sharpe_rl.policy import generation as generation_module
from sharpe_rl.policy import steps as policy_steps
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.policy.generation import Generation, make_generator
from sharpe_rl.policy.steps import Batch
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.docker_executor import RUN_LABEL, DockerExecutor
from sharpe_rl.tracking import EXPERIMENT_NAME, default_tracking_uri

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.usefixtures("sandbox_image")]

RAISES = """
def make_features(df):
    raise ValueError("this experiment fails on purpose")
"""


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def fresh_policies():
    policy_steps.release()
    yield
    policy_steps.release()


def make_config(runs_dir: Path, dataset: Path, policy: Path, name: str, **updates) -> RunConfig:
    config = RunConfig(
        name=name,
        cycles=2,
        batch_size=4,
        dataset=dataset,
        runs_dir=runs_dir,
        eval=EvalConfig(n_folds=2, lookahead_check=False),
        sandbox=SandboxConfig(executor="docker", workers=2, timeout_seconds=90, memory_mb=1024),
        policy=PolicyConfig(model=str(policy), max_new_tokens=700),
    )
    return config.model_copy(update=updates)


@pytest.fixture
def run_config(tmp_path: Path, pipeline_dataset: Path, pipeline_policy: Path):
    def make(name: str, **updates) -> RunConfig:
        return make_config(tmp_path / "runs", pipeline_dataset, pipeline_policy, name, **updates)

    return make


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, pipeline_dataset: Path, pipeline_policy: Path) -> RunConfig:
    """A run of two cycles of the tiny policy with the Docker executor, through the rl_run flow."""
    from flows.rl_run import rl_run

    config = make_config(tmp_path_factory.mktemp("e2e") / "runs", pipeline_dataset, pipeline_policy, "e2e")
    assert rl_run(config) == "e2e"
    policy_steps.release()
    return config


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

    def generate(policy, prompt, n, *, cycle, seed):
        return Batch(cycle=cycle, generations=scripted_generator.generate([prompt] * n, seed), seconds=0.0)

    monkeypatch.setattr(policy_steps, "generate", generate)


def run_one_cycle(config: RunConfig) -> None:
    from flows.cycle import cycle

    run = run_steps.start(config)
    cycle(run, run.policy, 0)


def children(runs_dir: Path, run: str) -> list:
    client = MlflowClient(default_tracking_uri(runs_dir))
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`sharpe_rl.run` = '{run}' and tags.`sharpe_rl.kind` = 'experiment'",
    )


# ---- two cycles end to end ----


def test_two_cycles_fill_the_buffer_mlflow_and_the_checkpoint(finished_run):
    runs = finished_run.runs_dir
    frame = ReplayBuffer(runs).frame(run="e2e")
    assert frame.height == 8 and sorted(Counter(frame["cycle"].to_list()).items()) == [(0, 4), (1, 4)]
    assert frame["reward"].is_finite().all()
    statuses = Counter(frame["error_class"].fill_null("ok").to_list())
    assert sum(statuses.values()) == 8

    client = MlflowClient(default_tracking_uri(runs))
    parent = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id],
        filter_string="tags.`sharpe_rl.kind` = 'parent' and tags.`sharpe_rl.run` = 'e2e'",
    )[0]
    assert parent.info.status == "FINISHED"
    for key in (
        "reward_mean",
        "ok_pct",
        "failure_pct_json_parse",
        "entropy_bits",
        "ppo_kl",
        "ppo_policy_loss",
        "time_generate",
        "time_execute",
        "time_update",
    ):
        assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, key)) == [0, 1], key
    assert len(children(runs, "e2e")) == 8
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.json", "cycles", "adapter", "report", "prompts"} <= artifacts
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "adapter")} == {
        "adapter/cycle-000",
        "adapter/cycle-001",
    }

    assert Checkpoints(runs, "e2e").latest_cycle() == 1
    assert (runs / "reports" / "e2e" / "report.html").is_file()


def test_a_past_cycle_reruns_and_reproduces(finished_run):
    from flows.rerun import rerun

    rows = rerun("e2e", 1, runs_dir=finished_run.runs_dir)
    before = {e.index: e for e in ReplayBuffer(finished_run.runs_dir).experiences("e2e", 1)}
    assert [row["index"] for row in rows] == sorted(before)
    for row in rows:
        assert row["original_status"] == (before[row["index"]].error_class or "ok")
        assert row["reproduces"], row
        if row["original_status"] == "ok":
            assert row["max_prediction_diff"] == 0.0 and row["rerun_sharpe"] == row["original_sharpe"]


def test_reset_archives_checkpoints_and_buffer_and_the_run_restarts_from_the_base(finished_run, tmp_path):
    from flows.reset import reset

    runs = tmp_path / "runs"
    shutil.copytree(finished_run.runs_dir, runs)
    archived = reset(runs)
    assert archived["checkpoints of e2e"] and Path(archived["checkpoints of e2e"]).is_dir()
    assert Path(archived["replay buffer"], "e2e").is_dir()
    assert Path(archived["holdout scores"], "e2e.parquet").is_file()  # the end of the run scored the holdout
    assert ReplayBuffer(runs).frame().is_empty() and Checkpoints(runs, "e2e").latest_cycle() is None
    run = run_steps.start(finished_run.model_copy(update={"runs_dir": runs}))
    assert run.pending_cycles == [0, 1] and run.policy.cycle is None  # the base policy


# ---- retries: infrastructure faults only ----


def test_a_transient_docker_fault_is_retried_and_a_failing_experiment_is_not(run_config, monkeypatch):
    config = run_config("retry", cycles=1, batch_size=2)
    completions = [spec_completion("ok", HONEST_FEATURES, LOGISTIC), spec_completion("raises", RAISES, LOGISTIC)]
    scripted(monkeypatch, config, completions)

    calls: Counter[str] = Counter()
    real_execute = DockerExecutor.execute
    faults = {"left": 1}

    def flaky_execute(self, task_path, data_path):
        name = json.loads(Path(task_path).read_text())["spec"]["name"]
        calls[name] += 1
        if name == "ok" and faults["left"]:
            faults["left"] -= 1
            raise InfrastructureError("Docker API error (injected): the engine restarted")
        return real_execute(self, task_path, data_path)

    monkeypatch.setattr(DockerExecutor, "execute", flaky_execute)
    monkeypatch.setattr("tasks.execute.execute_experiment.retry_delay_seconds", [0, 0, 0, 0])
    run_one_cycle(config)

    experiences = {e.name: e for e in ReplayBuffer(config.runs_dir).experiences("retry", 0)}
    assert experiences["ok"].error_class is None  # retried after the fault, then ran
    assert experiences["raises"].error_class == "value_error"
    assert "fails on purpose" in experiences["raises"].error_message
    assert calls == {"ok": 2, "raises": 1}  # the failing experiment ran once: a result, not a retry
    assert len(children(config.runs_dir, "retry")) == 2


# ---- cache: what already ran never runs again ----


def test_a_cycle_of_already_executed_specs_starts_no_container(run_config, monkeypatch):
    completions = [spec_completion("logistic", HONEST_FEATURES, LOGISTIC), spec_completion("raises", RAISES, LOGISTIC)]
    first = run_config("cache-a", cycles=1, batch_size=2)
    scripted(monkeypatch, first, completions)
    run_one_cycle(first)

    engine = docker.from_env()
    since = time.time()
    second = run_config("cache-b", cycles=1, batch_size=2)
    run_one_cycle(second)
    started = engine.events(
        since=since, until=time.time(), decode=True, filters={"type": "container", "event": "start"}
    )
    assert list(started) == []
    a = {e.name: e for e in ReplayBuffer(first.runs_dir).experiences("cache-a", 0)}
    b = {e.name: e for e in ReplayBuffer(second.runs_dir).experiences("cache-b", 0)}
    assert a["logistic"].metrics == b["logistic"].metrics and b["logistic"].error_class is None
    assert b["raises"].error_class == "value_error"


# ---- the vLLM backend follows the policy through the adapters the run saves ----


class RecordingVLLM:
    """Stands in for VLLMGenerator (vLLM needs a GPU): samples the base model, records the adapters it is given."""

    adapters: ClassVar[list[Path | None]]  # set per test

    def __init__(self, cfg: PolicyConfig) -> None:
        self.inner = make_generator(cfg.model_copy(update={"backend": "transformers"}))

    def set_adapter(self, path: Path | None) -> None:
        self.adapters.append(path)

    def generate(self, prompts: list[str], seed: int) -> list[Generation]:
        return self.inner.generate(prompts, seed)


def test_a_vllm_run_samples_each_cycle_from_the_adapter_just_saved(run_config, monkeypatch):
    monkeypatch.setattr(generation_module, "VLLMGenerator", RecordingVLLM)
    monkeypatch.setattr(RecordingVLLM, "adapters", [], raising=False)
    config = run_config("vllm", batch_size=2, sandbox=SandboxConfig(executor="process"))
    config = config.model_copy(
        update={"policy": config.policy.model_copy(update={"backend": "vllm", "max_new_tokens": 32})}
    )
    run = run_steps.start(config)
    batch = policy_steps.generate(run.policy, run.prompt, 2, cycle=0, seed=0)
    assert RecordingVLLM.adapters == []  # a fresh run samples the base policy
    rewarded = [
        Experience.from_generation(g, run="vllm", cycle=0, index=i, prompt_version="v2_rules", reward=float(i))
        for i, g in enumerate(batch.generations)
    ]
    update = policy_steps.update(run.policy, 0, rewarded)
    adapter = Checkpoints(config.runs_dir, "vllm").path(0) / "adapter"
    assert RecordingVLLM.adapters == [adapter]  # the next cycle samples the adapter just saved
    assert LoraConfig.from_pretrained(str(adapter)).r == config.policy.lora_r  # what vLLM's LoRARequest loads
    run_steps.finish(run)

    resumed = run_steps.start(config)  # a new process: nothing in memory
    assert resumed.policy == update.policy and resumed.pending_cycles == [1]
    policy_steps.generate(resumed.policy, resumed.prompt, 2, cycle=1, seed=1)
    assert RecordingVLLM.adapters[-1] == adapter  # a resumed run samples its latest adapter
    run_steps.finish(resumed)


# ---- resume after a real kill ----


def cli_run(config: RunConfig, runs_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sharpe_rl.cli",
        "run",
        "--name",
        config.name,
        "--cycles",
        str(config.cycles),
        "--batch-size",
        str(config.batch_size),
        "--data",
        str(config.dataset),
        "--runs-dir",
        str(runs_dir),
        "--workers",
        "2",
        "--policy",
        config.policy.model,
    ]


def test_a_killed_run_resumes_without_losing_or_duplicating_anything(run_config, tmp_path, pipeline_policy):
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    runs = tmp_path / "runs"
    reference, killed = run_config("straight"), run_config("killed")

    done = subprocess.run(cli_run(reference, runs), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    process = subprocess.Popen(
        cli_run(killed, runs), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    checkpoints = Checkpoints(runs, "killed")
    deadline = time.monotonic() + 600
    while checkpoints.latest_cycle() is None:  # cycle 0 committed ...
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.5)
    buffer = ReplayBuffer(runs)
    while 1 not in buffer.cycles_done("killed") and process.poll() is None:  # ... and cycle 1 logged, not committed
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoints.latest_cycle() == 0  # killed inside cycle 1

    done = subprocess.run(cli_run(killed, runs), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming at cycle 1" in done.stderr + done.stdout

    straight, resumed = buffer.frame(run="straight"), buffer.frame(run="killed")
    assert resumed.height == straight.height == 8
    assert resumed.select("cycle", "index", "completion").equals(straight.select("cycle", "index", "completion"))
    assert len(children(runs, "killed")) == len(children(runs, "straight")) == 8
    client = MlflowClient(default_tracking_uri(runs))
    for run in ("straight", "killed"):
        parent = client.search_runs(
            [client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id],
            filter_string=f"tags.`sharpe_rl.kind` = 'parent' and tags.`sharpe_rl.run` = '{run}'",
        )
        assert len(parent) == 1
        steps = [m.step for m in client.get_metric_history(parent[0].info.run_id, "reward_mean")]
        assert sorted(steps) == [0, 1], run
    assert docker.from_env().containers.list(all=True, filters={"label": f"{RUN_LABEL}=killed"}) == []
    assert checkpoints.latest_cycle() == 1
