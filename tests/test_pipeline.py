"""The pipeline end to end: Prefect flows over the real sandbox, policy, buffer, MLflow and checkpoints.

Under the session's temporary Prefect server:
- four cycles of the tiny policy with the Docker executor (the `reference_run`) leave the buffer,
  MLflow and the checkpoint in the state a user relies on;
- an injected transient Docker fault is retried and succeeds; an experiment that raises is a result,
  recorded once with its error class and never retried; an unexpected host-side exception in one
  experiment's checks is recorded against it and the cycle goes on;
- a cycle whose specs were all executed before starts no container.
The resume test kills a real `sharpe-rl run` process mid-cycle and restarts it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import docker
import polars as pl
import pytest
from peft import LoraConfig
from pipeline_fixtures import (
    RAISES,
    children,
    copy_runs,
    make_config,
    mlflow_client,
    parent_run,
    run_cycles,
    scripted,
    spec_completion,
)
from sandbox_fixtures import HONEST_FEATURES, HONEST_MODELS, LOGISTIC

from sharpe_rl import evaluation, progress
from sharpe_rl import steps as run_steps
from sharpe_rl.archive import EliteArchive, load_archive
from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.config import PolicyConfig, RunConfig, SandboxConfig
from sharpe_rl.experience import Experience
from sharpe_rl.policy import generation as generation_module
from sharpe_rl.policy import learner
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.policy.generation import Generation, make_generator
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.docker_executor import RUN_LABEL, DockerExecutor

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.usefixtures("sandbox_image", "prefect_server")]


@pytest.fixture(autouse=True)
def fresh_policies():
    learner.release()
    yield
    learner.release()
    evaluation.close_evaluations()


@pytest.fixture
def run_config(tmp_path: Path, pipeline_dataset: Path, pipeline_policy: Path):
    def make(name: str, **updates) -> RunConfig:
        return make_config(tmp_path / "runs", pipeline_dataset, pipeline_policy, name, **updates)

    return make


# ---- four cycles end to end ----


def test_four_cycles_fill_the_buffer_mlflow_and_the_checkpoint(reference_run):
    runs = reference_run.runs_dir
    frame = ReplayBuffer(runs).frame(run="e2e")
    assert frame.height == 16 and sorted(Counter(frame["cycle"].to_list()).items()) == [(c, 4) for c in range(4)]
    assert frame["reward"].is_finite().all()

    client = mlflow_client(runs)
    parent = parent_run(client, "e2e")
    assert parent.info.status == "FINISHED"
    for key in (
        "reward_mean",
        "ok_pct",
        "failure_pct_json_parse",
        "entropy_bits",
        "ppo_kl",
        "ppo_policy_loss",
        "ppo_rollout_entropy",
        "archive_coverage_pct",
        "qd_score",
        "time_generate",
        "time_execute",
        "time_update",
    ):
        assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, key)) == [0, 1, 2, 3], key
    logged = children(runs, "e2e")
    assert len(logged) == 16
    assert all(c.info.run_name.startswith("e2e c00") for c in logged)  # told apart when sorted across runs
    assert sorted(float(c.data.metrics["reward"]) for c in logged) == sorted(frame["reward"].to_list())
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.json", "cycles", "adapter", "report", "prompts"} <= artifacts
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "adapter")} == {
        f"adapter/cycle-{c:03d}" for c in range(4)
    }
    assert list((runs / "tracking-outbox").glob("*.json")) == []

    assert Checkpoints(runs, "e2e").latest_cycle() == 3
    assert (runs / "reports" / "e2e" / "report.html").is_file()
    archive = load_archive(runs, "e2e")
    assert archive.cycles == [0, 1, 2, 3] and archive == EliteArchive.from_frame(frame, "e2e")
    coverage = client.get_metric_history(parent.info.run_id, "archive_coverage_pct")
    assert max(coverage, key=lambda m: m.step).value == pytest.approx(100 * archive.coverage)


def test_the_run_keeps_one_post_mortem_artifact_current_with_its_plots(reference_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        posted = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["e2e-post-mortem"])))
    assert len(posted) == 1  # updated in place every cycle, not one artifact per cycle
    experiments = reference_run.cycles * reference_run.batch_size
    assert f"| experiments | {experiments} |" in posted[0].data  # the last cycle's numbers
    assert "](data:image/png;base64," in posted[0].data and "](plots/" not in posted[0].data


def flow_run_logs(flow: str, name: str, runs_dir: Path | None = None) -> tuple[object, list[str]]:
    """The flow run of `flow` named `name` (the latest; of the run under `runs_dir` when given: other tests run
    flows of the same name elsewhere), and its log lines (its tasks' included), in order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, LogSort

    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])),
            sort=FlowRunSort.START_TIME_DESC,
        )
        if runs_dir is not None:
            found = [r for r in found if r.parameters.get("advanced", {}).get("runs_dir") == str(runs_dir)]
        of_the_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[found[0].id]))
        lines: list[str] = []
        while page := client.read_logs(log_filter=of_the_run, limit=200, offset=len(lines), sort=LogSort.TIMESTAMP_ASC):
            lines += [log.message for log in page]
    return found[0], lines


def test_the_flow_runs_logs_tell_the_story_of_the_night(reference_run):
    # Before, every log line of a run in the Prefect UI was "Finished in state Completed()".
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    report = (reference_run.runs_dir / "reports" / "e2e" / "report.html").resolve()
    finished = f"run e2e finished: post-mortem {report}"
    deadline = time.monotonic() + 30  # Prefect sends logs to its API in batches, every 2 s: the last may lag
    while True:
        flow_run, lines = flow_run_logs("rl_run", "e2e", reference_run.runs_dir)
        if any(line.startswith(finished) for line in lines) or time.monotonic() > deadline:
            break
        time.sleep(1)
    parent = parent_run(mlflow_client(reference_run.runs_dir), "e2e")
    address = (
        f"http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
        "?workflowType=machine_learning"
    )
    start = next(i for i, line in enumerate(lines) if line.startswith("run e2e: starting, 4 cycles × 4 experiments"))
    assert f"MLflow: {address} (the MLflow UI `sharpe-rl serve` starts)" in lines[start:]
    cycle_lines = [line for line in lines if re.match(r"cycle \d: reward mean [+-]\d\.\d{3}", line)]
    assert [line.split(":")[0] for line in cycle_lines] == ["cycle 0", "cycle 1", "cycle 2", "cycle 3"]
    assert all(
        re.search(r"; ran \d of 4, failed \d.*; KL to base (\d\.\d{3}|\d\.\de-0\d) nats$", line) for line in cycle_lines
    )
    assert any(line.startswith(finished) for line in lines), lines[-5:]
    with get_client(sync_client=True) as client:
        keys = ArtifactFilter(key=ArtifactFilterKey(any_=["e2e-progress", "e2e-post-mortem"]))
        artifacts = {a.key: a for a in client.read_artifacts(artifact_filter=keys) if a.flow_run_id == flow_run.id}
    assert artifacts["e2e-progress"].data == 100.0 and "4 of 4 cycles" in artifacts["e2e-progress"].description
    assert artifacts["e2e-post-mortem"].data.startswith(
        f"MLflow: [the run e2e, its experiments and this report]({address})"
    )


def test_a_past_cycle_reruns_and_reproduces(reference_run):
    from flows.rerun import rerun

    rows = rerun("e2e", 1, runs_dir=reference_run.runs_dir)
    before = {e.index: e for e in ReplayBuffer(reference_run.runs_dir).experiences("e2e", 1)}
    assert [row["index"] for row in rows] == sorted(before)
    for row in rows:
        assert row["original_status"] == (before[row["index"]].error_class or "ok")
        assert row["reproduces"], row
        if row["original_status"] == "ok":
            assert row["max_prediction_diff"] == 0.0 and row["rerun_sharpe"] == row["original_sharpe"]


def answer_the_reset(archive: bool, paused: list) -> threading.Thread:
    """In the background, as a person in the UI would: wait for the reset flow run to pause, then resume it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    def answer() -> None:
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                waiting = client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=["reset"])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                    ),
                )
                if waiting:
                    paused.append(waiting[0])
                    resume_flow_run(waiting[0].id, run_input={"archive": archive})
                    return
                time.sleep(1)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def test_reset_waits_for_a_confirmation_and_archives_nothing_without_one(reference_run, tmp_path):
    from flows.reset import reset

    runs = tmp_path / "runs"
    copy_runs(reference_run.runs_dir, runs)
    paused: list = []
    answer_the_reset(archive=False, paused=paused)
    assert reset(runs) == {}
    assert paused, "the reset never paused for its confirmation"
    assert Checkpoints(runs, "e2e").latest_cycle() == 3 and not ReplayBuffer(runs).frame().is_empty()
    deadline = time.monotonic() + 30  # Prefect sends logs to its API in batches, every 2 s: the last may lag
    while "not confirmed: nothing was archived" not in (lines := flow_run_logs("reset", paused[0].name)[1]):
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "- the checkpoints of run e2e (4 cycles done)" in lines  # what it would archive, said before it asks
    assert "not confirmed: nothing was archived" in lines


def test_reset_archives_checkpoints_and_buffer_and_the_run_restarts_from_the_base(reference_run, tmp_path):
    from flows.reset import reset

    runs = tmp_path / "runs"
    copy_runs(reference_run.runs_dir, runs)
    paused: list = []
    answer_the_reset(archive=True, paused=paused)
    archived = reset(runs)
    assert paused  # it archived only once confirmed
    assert archived["checkpoints of e2e"] and Path(archived["checkpoints of e2e"]).is_dir()
    assert Path(archived["replay buffer"], "e2e").is_dir()
    assert Path(archived["holdout scores"], "e2e.parquet").is_file()  # the end of the run scored the holdout
    assert ReplayBuffer(runs).frame().is_empty() and Checkpoints(runs, "e2e").latest_cycle() is None
    run = run_steps.start(reference_run.model_copy(update={"runs_dir": runs}))
    assert run.pending_cycles == [0, 1, 2, 3] and run.policy.cycle is None  # the base policy


def test_evaluate_policy_compares_base_and_final_on_both_windows_with_intervals(
    reference_run, tmp_path, monkeypatch, caplog
):
    import sharpe_rl.evaluate_policy as comparison
    from flows.evaluate_policy import evaluate_policy
    from sharpe_rl.facts import load_comparison

    runs = tmp_path / "runs"
    copy_runs(reference_run.runs_dir, runs)
    # 128 completions of 6 KB: more than Prefect takes as a flow run's parameters (512 KB), as 2 x 256 of a
    # night's completions were when the samples were handed to a subflow (the API refused it with a 422)
    notes = "# what these features are meant to capture\n" * 140
    honest = spec_completion("logistic", notes + HONEST_FEATURES, LOGISTIC)
    forest = spec_completion("forest", HONEST_FEATURES, HONEST_MODELS["random_forest"])
    written = {"base": [honest] * 48 + ["I would try LightGBM."] * 16, "final": [honest] * 56 + [forest] * 8}
    assert len("".join(written["base"] + written["final"]).encode()) > 524_288
    monkeypatch.setattr(comparison, "sample", lambda plan, which: written[which])

    progress.events.addHandler(caplog.handler)  # what the terminal's bars and lines are drawn from (no propagation)
    try:
        rows = {(r["window"], r["statistic"]): r for r in evaluate_policy("e2e", n=64, runs_dir=runs)}
    finally:
        progress.events.removeHandler(caplog.handler)
    events = [record.progress for record in caplog.records if hasattr(record, "progress")]
    assert [values["line"] for kind, values in events if kind == "said"] == [
        "sampling 64 completions from the base policy",
        "sampling 64 completions from run e2e after cycle 3",
        "executing 128 completions on the reward window",
        "112 of 128 ran; executing them on the holdout",
    ]
    assert [values["total"] for kind, values in events if kind == "stage_started"] == [None, None, 128, 112]
    assert sum(kind == "step_done" for kind, _ in events) == 128 + 112  # every execution, as it finished
    for window in ("reward", "holdout"):
        share = rows[(window, "run_share")]
        assert (share["base"], share["final"]) == (0.75, 1.0) and 0 < share["low"] <= 0.25 <= share["high"]
        entropy = rows[(window, "family_entropy_bits")]
        assert entropy["base"] == 0.0 < entropy["final"]
        for statistic in ("mean_sharpe", "best_of_16_dsr"):
            row = rows[(window, statistic)]
            assert row["low"] <= row["difference"] <= row["high"], (window, statistic)
    stored = load_comparison(runs, "e2e")
    assert stored["checkpoint_cycle"] == 3 and stored["n"] == 64 and len(stored["comparison"]) == 8
    samples = pl.read_parquet(runs / "evaluations" / "e2e.parquet")
    assert samples.height == 128 and samples.filter(pl.col("status") == "json_parse").height == 16

    # the post-mortem, where the user reads it (the run's folder and its MLflow run), now gives the verdict
    verdict = "The trained policy (cycle 3) is "
    assert verdict in (runs / "reports" / "e2e" / "report.md").read_text()
    client = mlflow_client(runs)
    stored = client.download_artifacts(parent_run(client, "e2e").info.run_id, "report/report.md", str(tmp_path))
    assert verdict in Path(stored).read_text() and "not measured yet" not in Path(stored).read_text()
    assert not (reference_run.runs_dir / "evaluations").exists()  # the shared run's files are untouched


def test_republishing_where_mlflow_has_no_such_run_updates_the_files_and_says_so(reference_run, tmp_path, caplog):
    """evaluate-policy's last step, when the run's MLflow store moved: the post-mortem under the runs
    folder is rebuilt all the same, and the user is told where it is rather than the step failing."""
    from prefect import flow

    from tasks.report import republish_report

    runs = copy_runs(reference_run.runs_dir, tmp_path / "runs")
    report = runs / "reports" / "e2e" / "report.md"
    report.unlink()
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"  # an MLflow store without the run

    @flow
    def republish() -> str:
        return republish_report(runs, "e2e", elsewhere)

    with caplog.at_level(logging.WARNING):
        html = republish()
    assert Path(html) == runs / "reports" / "e2e" / "report.html" and Path(html).is_file()
    assert "Run `e2e`." in report.read_text()
    assert f"has no run e2e: its post-mortem is updated in {html} only" in caplog.text


# ---- retries: infrastructure faults only ----


def test_a_transient_docker_fault_is_retried_and_a_failing_experiment_is_not(run_config, monkeypatch):
    config = run_config("retry", cycles=1, batch_size=2)
    completions = [spec_completion("ok", HONEST_FEATURES, LOGISTIC), spec_completion("raises", RAISES, LOGISTIC)]
    scripted(monkeypatch, config, completions)

    calls: Counter[str] = Counter()
    real_execute = DockerExecutor.execute
    faults = {"left": 1}

    def flaky_execute(self, task: bytes):
        name = "raises" if b"fails on purpose" in task else "ok"
        calls[name] += 1
        if name == "ok" and faults["left"]:
            faults["left"] -= 1
            raise InfrastructureError("Docker API error (injected): the engine restarted")
        return real_execute(self, task)

    monkeypatch.setattr(DockerExecutor, "execute", flaky_execute)
    monkeypatch.setattr("tasks.execute.execute_experiment.retry_delay_seconds", [0, 0, 0, 0])
    run_cycles(config)

    experiences = {e.name: e for e in ReplayBuffer(config.runs_dir).experiences("retry", 0)}
    assert experiences["ok"].error_class is None  # retried after the fault, then ran
    assert experiences["raises"].error_class == "value_error"
    assert "fails on purpose" in experiences["raises"].error_message
    assert calls == {"ok": 2, "raises": 1}  # the failing experiment ran once: a result, not a retry
    assert len(children(config.runs_dir, "retry")) == 2


def test_a_host_error_in_one_experiment_is_recorded_against_it_and_the_cycle_goes_on(run_config, monkeypatch):
    """The overnight run that died at cycle 26: `ast.parse` raised SystemError inside one execute task."""
    config = run_config("host-error", cycles=1, batch_size=2)
    completions = [spec_completion("ok", HONEST_FEATURES, LOGISTIC), spec_completion("unlucky", RAISES, LOGISTIC)]
    scripted(monkeypatch, config, completions)
    real_check = evaluation.check_completion

    def check(text, columns):
        if "unlucky" in text:
            raise SystemError("AST constructor recursion depth mismatch (before=24, after=19)")
        return real_check(text, columns)

    monkeypatch.setattr(evaluation, "check_completion", check)
    run_cycles(config)

    experiences = {e.name or "unparsed": e for e in ReplayBuffer(config.runs_dir).experiences("host-error", 0)}
    assert experiences["ok"].error_class is None
    unlucky = experiences["unparsed"]
    assert unlucky.error_class == "runtime_error" and unlucky.reward == config.reward.penalty_runtime
    assert unlucky.error_message.startswith("host error in the static checks: SystemError: AST constructor")
    assert len(children(config.runs_dir, "host-error")) == 2
    assert Checkpoints(config.runs_dir, "host-error").latest_cycle() == 0


# ---- cache: what already ran never runs again ----


def test_a_cycle_of_already_executed_specs_starts_no_container(run_config, monkeypatch):
    completions = [spec_completion("logistic", HONEST_FEATURES, LOGISTIC), spec_completion("raises", RAISES, LOGISTIC)]
    first = run_config("cache-a", cycles=1, batch_size=2)
    scripted(monkeypatch, first, completions)
    run_cycles(first)

    engine = docker.from_env()
    since = time.time()
    second = run_config("cache-b", cycles=1, batch_size=2)
    run_cycles(second)
    started = engine.events(
        since=since,
        until=time.time(),
        decode=True,
        filters={"type": "container", "event": "start", "label": f"{RUN_LABEL}=cache-b"},  # not others' on the engine
    )
    assert list(started) == []
    a = {e.name: e for e in ReplayBuffer(first.runs_dir).experiences("cache-a", 0)}
    b = {e.name: e for e in ReplayBuffer(second.runs_dir).experiences("cache-b", 0)}
    assert a["logistic"].metrics == b["logistic"].metrics and b["logistic"].error_class is None
    assert b["raises"].error_class == "value_error"
    assert [e.cached for e in a.values()] == [False, False] and [e.cached for e in b.values()] == [True, True]
    assert {c.data.tags["cached"] for c in children(second.runs_dir, "cache-b")} == {"true"}


# ---- the vLLM backend follows the policy through the adapters the run saves ----


def test_the_update_step_learns_from_what_scoring_credited(monkeypatch):
    from sharpe_rl.steps import Scored
    from tasks.cycle import update_policy

    calls = []
    monkeypatch.setattr(learner, "update", lambda policy, cycle, experiences, rewards=None: calls.append(rewards))
    experiences = [
        Experience.from_generation(
            Generation("p", "c", [1], [2], [0.0]), run="r", cycle=0, index=0, prompt_version="v5_rules", reward=0.8
        )
    ]
    update_policy.fn(None, 0, Scored(cycle=0, experiences=experiences, seconds=0.0, learned=[0.27]))
    update_policy.fn(None, 0, Scored(cycle=0, experiences=experiences, seconds=0.0))
    assert calls == [[0.27], None]


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
    batch = learner.generate(run.policy, [run.prompt] * 2, cycle=0, seed=0)
    assert RecordingVLLM.adapters == []  # a fresh run samples the base policy
    rewarded = [
        Experience.from_generation(g, run="vllm", cycle=0, index=i, prompt_version="v5_rules", reward=float(i))
        for i, g in enumerate(batch.generations)
    ]
    update = learner.update(run.policy, 0, rewarded)
    adapter = Checkpoints(config.runs_dir, "vllm").path(0) / "adapter"
    assert RecordingVLLM.adapters == [adapter]  # the next cycle samples the adapter just saved
    assert LoraConfig.from_pretrained(str(adapter)).r == config.policy.lora_r  # what vLLM's LoRARequest loads
    run_steps.finish(run)

    resumed = run_steps.start(config)  # a new process: nothing in memory
    assert resumed.policy == update.policy and resumed.pending_cycles == [1]
    learner.generate(resumed.policy, [resumed.prompt] * 2, cycle=1, seed=1)
    assert RecordingVLLM.adapters[-1] == adapter  # a resumed run samples its latest adapter
    run_steps.finish(resumed)


# ---- resume after a real kill ----


def cli_run(config: RunConfig, runs_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cli",
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
        "--seed",  # without one, each new run would draw a fresh seed
        str(config.seed),
    ]


def test_a_killed_run_resumes_without_losing_or_duplicating_anything(run_config, tmp_path, pipeline_policy):
    from prefect.settings import PREFECT_API_URL

    # the three runs report to the session's Prefect server, as runs report to `make serve`'s: none starts its own
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": PREFECT_API_URL.value()}
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
    client = mlflow_client(runs)
    for run in ("straight", "killed"):
        parent = parent_run(client, run)
        assert parent.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(parent.info.run_id, "reward_mean")]
        assert sorted(steps) == [0, 1], run
    assert docker.from_env().containers.list(all=True, filters={"label": f"{RUN_LABEL}=killed"}) == []
    assert checkpoints.latest_cycle() == 1
