"""An overnight run survives what breaks at 3 a.m.: each real fault injected, and afterwards the replay
buffer, MLflow and the checkpoints agree, with nothing lost or recorded twice.

- the Docker engine restarts in the middle of a cycle (a second engine the test owns: the shared one
  is never touched): the affected executions are retried and succeed;
- the MLflow tracking server (a real `mlflow server`) is down for a minute: the run goes on, the
  records wait on disk and reach MLflow when it is back;
- the disk of the runs directory fills up (a small tmpfs): a clear error naming the path, nothing
  half-written, the parent run marked FAILED, and the run resumes once there is space.
Elsewhere: concurrent static checks (tests/test_checks.py), a Dask worker killed (tests/test_scale_out.py),
the RL process killed (tests/test_pipeline.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from pipeline_fixtures import (
    RAISES,
    children,
    make_config,
    mlflow_client,
    parent_run,
    run_cycles,
    scripted,
    spec_completion,
)
from sandbox_fixtures import HONEST_FEATURES, HONEST_MODELS, LOGISTIC
from service_fixtures import MlflowServer, SmallDisk, wait_until

from sharpe_rl import steps as run_steps
from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.data.atomic import DiskFull
from sharpe_rl.policy import learner
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.docker_executor import RUN_LABEL, DockerExecutor

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.usefixtures("sandbox_image", "prefect_server")]

#: How long the tracking server stays down.
OUTAGE_SECONDS = 60

COMPLETIONS = [
    spec_completion("logistic", HONEST_FEATURES, LOGISTIC),
    spec_completion("forest", HONEST_FEATURES, HONEST_MODELS["random_forest"]),
    spec_completion("boosting", HONEST_FEATURES, HONEST_MODELS["hist_gradient_boosting"]),
    spec_completion("raises", RAISES, LOGISTIC),
]
EXPECTED = {"logistic": "ok", "forest": "ok", "boosting": "ok", "raises": "value_error"}


@pytest.fixture(autouse=True)
def fresh_policies():
    learner.release()
    yield
    learner.release()


@pytest.fixture
def config_for(tmp_path: Path, pipeline_dataset: Path, pipeline_policy: Path):
    def make(name: str, runs: Path | None = None, **updates):
        return make_config(runs or tmp_path / "runs", pipeline_dataset, pipeline_policy, name, **updates)

    return make


def assert_recorded_once(runs: Path, run: str, cycles: int, batch: int, tracking_uri: str | None = None) -> None:
    """The buffer holds each (cycle, index) once, MLflow one finished child for each with the same reward,
    and the latest checkpoint is the last cycle."""
    frame = ReplayBuffer(runs).frame(run=run)
    assert sorted(zip(frame["cycle"], frame["index"], strict=True)) == [
        (c, i) for c in range(cycles) for i in range(batch)
    ]
    logged = children(runs, run, tracking_uri)
    keys = Counter((c.data.tags["sharpe_rl.cycle"], c.data.tags["sharpe_rl.index"]) for c in logged)
    assert keys == Counter({(str(c), str(i)): 1 for c in range(cycles) for i in range(batch)})
    assert all(c.info.status == "FINISHED" for c in logged)
    rewards = {(int(c.data.tags["sharpe_rl.cycle"]), int(c.data.tags["sharpe_rl.index"])): c.data.metrics["reward"]
               for c in logged}  # fmt: skip
    assert rewards == {(row["cycle"], row["index"]): row["reward"] for row in frame.iter_rows(named=True)}
    assert Checkpoints(runs, run).latest_cycle() == cycles - 1


# ---- the Docker engine restarts mid-cycle ----------------------------------------------------


def test_the_engine_restarting_mid_cycle_retries_the_affected_executions(second_engine, config_for, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", second_engine.host)  # this run's sandbox: the engine we may restart
    config = config_for("engine-restart", cycles=1, batch_size=4)
    scripted(monkeypatch, config, COMPLETIONS)
    faults: list[str] = []
    real_execute = DockerExecutor.execute

    def execute(self, task: bytes):
        try:
            return real_execute(self, task)
        except InfrastructureError as exc:
            faults.append(str(exc))
            raise

    monkeypatch.setattr(DockerExecutor, "execute", execute)
    engine = second_engine.client()

    def restart_when_busy() -> None:
        wait_until(lambda: engine.containers.list(filters={"label": f"{RUN_LABEL}=engine-restart"}), 300, "a sandbox")
        second_engine.restart()

    restarter = threading.Thread(target=restart_when_busy, daemon=True)
    restarter.start()
    run = run_cycles(config)
    restarter.join(timeout=120)
    run_steps.finish(run)

    assert faults, "the restart hit no execution"
    statuses = {e.name: e.error_class or "ok" for e in ReplayBuffer(config.runs_dir).experiences("engine-restart", 0)}
    assert statuses == EXPECTED
    assert_recorded_once(config.runs_dir, "engine-restart", cycles=1, batch=4)
    assert second_engine.client().containers.list(all=True, filters={"label": f"{RUN_LABEL}=engine-restart"}) == []


# ---- the tracking server is down for a minute ------------------------------------------------


def test_the_tracking_server_down_for_a_minute_loses_nothing(tmp_path, config_for, monkeypatch):
    from flows.cycle import cycle

    (tmp_path / "mlflow").mkdir()
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    try:
        config = config_for("outage", cycles=3, batch_size=2, tracking_uri=server.uri)
        scripted(monkeypatch, config, COMPLETIONS[:1] + COMPLETIONS[-1:])
        run = run_steps.start(config)
        policy = cycle(run, run.policy, 0).policy

        server.kill()
        down_since = time.monotonic()
        policy = cycle(run, policy, 1).policy  # the run goes on while MLflow is down
        assert ReplayBuffer(config.runs_dir).cycles_done("outage") == [0, 1]
        assert len(run.tracker().pending()) >= 3  # cycle 1, its PPO stats and adapter wait on disk
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_since)))

        server.start()
        cycle(run, policy, 2)
        run_steps.finish(run)

        assert run.tracker().pending() == []
        assert_recorded_once(config.runs_dir, "outage", cycles=3, batch=2, tracking_uri=server.uri)
        client = mlflow_client(config.runs_dir, server.uri)
        parent = parent_run(client, "outage")
        assert parent.info.status == "FINISHED"
        for key in ("reward_mean", "ppo_kl", "time_update"):
            assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, key)) == [0, 1, 2], key
        adapters = {a.path for a in client.list_artifacts(parent.info.run_id, "adapter")}
        assert adapters == {f"adapter/cycle-{c:03d}" for c in range(3)}
    finally:
        server.kill()


# ---- the runs disk fills up --------------------------------------------------------------------


def fill_before_second_call(disk: SmallDisk, function):
    """`function`, except that its second call first fills the disk (the first cycle goes through)."""
    calls = Counter()

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            disk.fill()
        return function(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("writer", ["buffer", "checkpoint", "report"])
def test_a_full_disk_names_the_path_leaves_nothing_half_written_and_the_run_resumes(
    writer, tmp_path, config_for, monkeypatch
):
    import tasks.report
    from flows.rl_run import run

    disk = SmallDisk(tmp_path / "disk", size_mb=64)
    disk.mount()
    try:
        runs = disk.path / "runs"
        tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"  # elsewhere, so the failure can be recorded
        config = config_for("disk-full", runs=runs, cycles=2, batch_size=2, tracking_uri=tracking)
        scripted(monkeypatch, config, COMPLETIONS[:1] + COMPLETIONS[-1:])
        target, expected_path = {
            "buffer": ((ReplayBuffer, "write"), runs / "buffer" / "disk-full" / "cycle-001.parquet"),
            "checkpoint": ((Checkpoints, "save"), runs / "checkpoints" / "disk-full" / "cycle-001"),
            "report": ((tasks.report, "build_report"), runs / "reports" / "disk-full"),
        }[writer]
        monkeypatch.setattr(*target, fill_before_second_call(disk, getattr(*target)))

        with pytest.raises(DiskFull) as failed:
            run(config)
        assert f"no space left on the disk holding {expected_path}" in str(failed.value)
        assert parent_run(mlflow_client(runs, tracking), "disk-full").info.status == "FAILED"
        assert [p for p in runs.rglob("*") if ".tmp" in p.name] == []  # no staging file or folder left
        for path in (runs / "buffer").rglob("*.parquet"):
            pl.read_parquet(path)  # every buffer file is whole
        checkpoints = Checkpoints(runs, "disk-full")
        assert checkpoints.latest_cycle() == (1 if writer == "report" else 0)
        assert all((p / "state.json").is_file() for p in checkpoints.directory.glob("cycle-*"))
        report = runs / "reports" / "disk-full" / "report.html"
        assert not report.exists() or report.read_text().rstrip().endswith("</html>")

        disk.free()
        assert run(config) == "disk-full"  # resumes where it stopped
        assert_recorded_once(runs, "disk-full", cycles=2, batch=2, tracking_uri=tracking)
        assert parent_run(mlflow_client(runs, tracking), "disk-full").info.status == "FINISHED"
    finally:
        learner.release()
        disk.unmount()
