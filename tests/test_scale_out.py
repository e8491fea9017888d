"""Executions on a Dask cluster: a real `dask scheduler` and two `dask worker` processes on this machine,
each worker with its own Docker engine through DOCKER_HOST (the shared engine, and one the tests own).

- A four-cycle run through the rl_run flow on the cluster gives exactly the rewards of the same run
  on local threads (the `reference_run`).
- A worker killed with SIGKILL in the middle of an experiment: the experiment runs on the other
  worker, once, and the buffer, MLflow and the checkpoint hold every experiment once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import docker
import polars as pl
import pytest
from pipeline_fixtures import RAISES, children, copy_runs, make_config, run_cycles, scripted, spec_completion
from sandbox_fixtures import HONEST_FEATURES, HONEST_MODELS, LOGISTIC
from service_fixtures import DaskCluster

from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.config import RunConfig, TaskRunnerConfig
from sharpe_rl.policy import learner
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.sandbox.docker_executor import RUN_LABEL, reap_containers
from sharpe_rl.steps import run_config_path

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.usefixtures("sandbox_image", "prefect_server")]

#: Busy for several seconds inside the sandbox (in `fit`, called once per fold), so a worker can be killed meanwhile.
SLOW_MODEL = """
from sklearn.linear_model import LogisticRegression


class SlowLogistic(LogisticRegression):
    def fit(self, X, y):
        sum(i * i for i in range(6_000_000))
        return super().fit(X, y)


def make_model():
    return SlowLogistic(max_iter=500)
"""


@pytest.fixture
def engines(second_engine) -> list[str]:
    """The Docker engine of each worker: the shared one, and the tests' own."""
    return [os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"), second_engine.host]


@pytest.fixture
def dask_cluster(tmp_path: Path, engines: list[str]):
    cluster = DaskCluster(tmp_path / "dask")
    cluster.directory.mkdir()
    try:
        cluster.start([{"DOCKER_HOST": host} for host in engines])
        yield cluster
    finally:
        cluster.stop()


def on_dask(address: str) -> dict:
    return {"task_runner": TaskRunnerConfig(kind="dask", dask_address=address)}


def test_a_run_on_a_two_worker_dask_cluster_reproduces_the_default_runner_exactly(
    reference_run, dask_cluster, engines, tmp_path
):
    from flows.rl_run import run

    started = int(time.time())
    # its first two cycles (a cycle, an update, a cycle of the updated policy): each of the reference's four
    # depends only on the cycles before it, and two cost half of the four's minute and a half
    config = reference_run.model_copy(
        update={"runs_dir": tmp_path / "runs", "cycles": 2} | on_dask(dask_cluster.address)
    )
    key = "cache/disguise.key"  # the installation's secret for the data's disguise: the same one, as on one machine
    (config.runs_dir / key).parent.mkdir(parents=True)
    shutil.copy(reference_run.runs_dir / key, config.runs_dir / key)
    assert run(config) == "e2e"
    learner.release()

    columns = ["cycle", "index", "completion", "error_class", "reward", "metric_sharpe_net", "metric_dsr"]
    threads = ReplayBuffer(reference_run.runs_dir).frame(run="e2e").select(columns).filter(pl.col("cycle") < 2)
    dask = ReplayBuffer(config.runs_dir).frame(run="e2e").select(columns)
    assert threads.height == 8 and dask.equals(threads)
    assert Checkpoints(config.runs_dir, "e2e").latest_cycle() == 1
    assert len(children(config.runs_dir, "e2e")) == 8
    for host in engines:  # both workers ran experiments, each in its own engine
        events = docker.DockerClient(base_url=host).events(
            since=started, until=int(time.time()) + 1, decode=True, filters={"event": "start", "label": RUN_LABEL}
        )
        assert any(event.get("Actor", {}).get("Attributes", {}).get(RUN_LABEL) == "e2e" for event in events), host


def test_evaluate_policy_executes_where_its_run_executed(reference_run, dask_cluster, tmp_path, monkeypatch):
    """The run's task runner is Dask, so evaluate-policy's executions go to the cluster: this process cannot
    reach a Docker engine meanwhile, and the comparison is whole all the same."""
    import sharpe_rl.evaluate_policy as comparison
    from flows.evaluate_policy import evaluate_policy

    runs = tmp_path / "runs"
    copy_runs(reference_run.runs_dir, runs)
    saved = run_config_path(runs, "e2e")
    config = RunConfig.model_validate_json(saved.read_text())
    saved.write_text(config.model_copy(update=on_dask(dask_cluster.address)).model_dump_json())
    honest = spec_completion("logistic", HONEST_FEATURES, LOGISTIC)
    forest = spec_completion("forest", HONEST_FEATURES, HONEST_MODELS["random_forest"])
    written = {"base": [honest] * 48 + ["I would try LightGBM."] * 16, "final": [honest] * 56 + [forest] * 8}
    monkeypatch.setattr(comparison, "sample", lambda plan, which: written[which])
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine-here.sock")

    rows = {(r["window"], r["statistic"]): r for r in evaluate_policy("e2e", n=64, runs_dir=runs)}
    for window in ("reward", "holdout"):
        share = rows[(window, "run_share")]
        assert (share["base"], share["final"]) == (0.75, 1.0)


def announced(name: str, features: str) -> str:
    """Features whose module says which experiment it is (the experiment's stdout is the container's stderr):
    the task reaches a container on its stdin, a warm one before the task exists, so its log is how a
    watcher can tell."""
    # then a second's work, so that a watcher polling two engines sees even an experiment that fails at once
    return f"print('{ANNOUNCE}{name}', flush=True)\nsum(i * i for i in range(10_000_000))\n{features}"


ANNOUNCE = "experiment-under-watch: "


class ContainerWatcher:
    """Notes which experiment runs in which engine (from what each container announces on stderr), and
    kills the worker whose engine runs `target` the first time it starts."""

    def __init__(self, hosts: list[str], run: str, target: str, kill) -> None:
        self.clients = [docker.DockerClient(base_url=host) for host in hosts]
        self.run, self.target, self.kill = run, target, kill
        self.seen: dict[str, tuple[int, str]] = {}  # container id -> (engine, experiment name)
        self.killed_engine: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> ContainerWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def runs_of(self, name: str) -> list[int]:
        return sorted(engine for engine, seen in self.seen.values() if seen == name)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for engine, client in enumerate(self.clients):
                with contextlib.suppress(docker.errors.DockerException, OSError, KeyError, ValueError):
                    for container in client.containers.list(filters={"label": f"{RUN_LABEL}={self.run}"}):
                        if container.id not in self.seen and (name := self._experiment(container)):
                            self.seen[container.id] = (engine, name)
                        if container.id not in self.seen:
                            continue
                        if self.killed_engine is None and self.seen[container.id][1] == self.target:
                            self.killed_engine = engine
                            self.kill(engine)
            time.sleep(0.1)

    @staticmethod
    def _experiment(container) -> str | None:
        """The experiment a container runs, once its features module has said so (None while it waits)."""
        for line in container.logs(stdout=False, stderr=True).decode(errors="replace").splitlines():
            if line.startswith(ANNOUNCE):
                return line.removeprefix(ANNOUNCE).strip()
        return None


def test_a_worker_killed_mid_experiment_its_experiment_runs_on_the_other_once(
    dask_cluster, engines, tmp_path, pipeline_dataset, pipeline_policy, monkeypatch
):
    runs = tmp_path / "runs"
    config = make_config(runs, pipeline_dataset, pipeline_policy, "worker-lost", cycles=1, batch_size=4)
    config = config.model_copy(update=on_dask(dask_cluster.address))
    completions = [
        spec_completion("slow", announced("slow", HONEST_FEATURES), SLOW_MODEL),
        spec_completion("logistic", announced("logistic", HONEST_FEATURES), LOGISTIC),
        spec_completion("forest", announced("forest", HONEST_FEATURES), HONEST_MODELS["random_forest"]),
        spec_completion("raises", announced("raises", RAISES), LOGISTIC),
    ]
    scripted(monkeypatch, config, completions)
    try:
        with ContainerWatcher(engines, "worker-lost", "slow", dask_cluster.kill) as watcher:
            run_cycles(config)
    finally:
        for host in engines:  # the lost worker's containers outlive it; nothing else removes them here
            reap_containers(docker.DockerClient(base_url=host), run_id="worker-lost")

    lost = watcher.killed_engine
    assert lost is not None, "the slow experiment never started"
    assert watcher.runs_of("slow") == sorted([lost, 1 - lost])  # started on the lost worker, ran again on the other
    for name in ("logistic", "forest", "raises"):
        # once on an engine: on the surviving one, or on the lost one, or on both when the kill
        # interrupted it there (its container may announce itself just after the kill)
        assert watcher.runs_of(name) in ([0], [1], [0, 1]), (name, watcher.runs_of(name))

    experiences = ReplayBuffer(runs).experiences("worker-lost", 0)
    assert [e.index for e in experiences] == [0, 1, 2, 3]
    statuses = {e.name: e.error_class or "ok" for e in experiences}
    assert statuses == {"slow": "ok", "logistic": "ok", "forest": "ok", "raises": "value_error"}
    logged = children(runs, "worker-lost")
    assert Counter(c.data.tags["sharpe_rl.index"] for c in logged) == Counter({"0": 1, "1": 1, "2": 1, "3": 1})
    rewards = {int(c.data.tags["sharpe_rl.index"]): c.data.metrics["reward"] for c in logged}
    assert rewards == {e.index: e.reward for e in experiences}
    assert len(list((runs / "cache" / "results").glob("*.json"))) == 4  # one result per experiment
    assert Checkpoints(runs, "worker-lost").latest_cycle() == 0
