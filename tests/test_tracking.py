"""MLflow logging: what a user finds in the UI, and that logging a cycle twice duplicates nothing."""

import json
from pathlib import Path

import pytest
from mlflow.entities import RunStatus

from sharpe_rl.config import RunConfig
from sharpe_rl.experience import Experience
from sharpe_rl.sandbox.contract import ErrorClass
from sharpe_rl.tracking import Tracker, flatten

SPEC = {"name": "rf", "features": "def make_features(df):\n    return df\n", "model": "def make_model(): ..."}


def experience(
    cycle: int, index: int, sharpe: float | None, error: ErrorClass | None = None, cached: bool | None = False
) -> Experience:
    return Experience(
        run="night-1",
        cycle=cycle,
        index=index,
        prompt_version="v5_rules",
        prompt="prompt",
        completion=json.dumps(SPEC),
        prompt_token_ids=[1, 2],
        completion_token_ids=[3, 4],
        logprobs=[-0.1, -0.2],
        spec_json=None if error else json.dumps(SPEC),
        name=None if error else "rf",
        model_family=None if error else "sklearn",
        error_class=error,
        error_message="KeyError: 'vwap'" if error else None,
        metrics={} if error else {"sharpe_net": sharpe, "dsr": 0.4},
        reward=-1.25 if error else sharpe / 3,
        code_hash=None if error else "abc",
        cached=cached,
        timings={"execute": 1.5},
    )


@pytest.fixture
def tracker(tmp_path):
    t = Tracker(tmp_path / "runs")
    t.start(RunConfig(name="night-1"), "night-1", fresh=True)
    return t


def children(t: Tracker) -> list:
    return t._search(f"tags.`mlflow.parentRunId` = '{t.parent_run_id}'")


def test_parent_run_holds_the_config_as_params_and_artifact(tracker):
    run = tracker.client.get_run(tracker.parent_run_id)
    assert run.data.params["eval.n_folds"] == "4" and run.data.params["eval.horizon"] == "None"
    assert run.data.params["sandbox.executor"] == "docker"
    artifacts = [a.path for a in tracker.client.list_artifacts(tracker.parent_run_id)]
    assert "config.json" in artifacts
    assert run.info.artifact_uri.startswith("file://") and "mlartifacts" in run.info.artifact_uri


def test_cycle_metrics_have_steps_and_experiments_are_sortable_child_runs(tracker):
    tracker.log_cycle(
        0, {"reward_mean": 0.1}, [experience(0, 0, 1.2), experience(0, 1, None, ErrorClass.missing_column)]
    )
    tracker.log_cycle(1, {"reward_mean": 0.3}, [experience(1, 0, 2.4), experience(1, 1, 0.3)])

    history = tracker.client.get_metric_history(tracker.parent_run_id, "reward_mean")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.1), (1, 0.3)]

    best = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{tracker.parent_run_id}'",
        order_by=["metrics.sharpe_net DESC"],
        max_results=1,
    )[0]
    assert best.data.metrics["sharpe_net"] == 2.4 and best.data.tags["sharpe_rl.cycle"] == "1"
    failed = [c for c in children(tracker) if c.data.tags["status"] == "missing_column"]
    assert len(failed) == 1 and "vwap" in failed[0].data.tags["error"]
    code = tracker.client.download_artifacts(best.info.run_id, "model.py")
    assert Path(code).read_text() == SPEC["model"]


def test_experiments_carry_their_rl_runs_name_and_whether_they_came_from_the_cache(tracker):
    # Sorted across RL runs by sharpe_net, "c000-00 rf" of one night could not be told from another's.
    batch = [experience(0, 0, 1.2, cached=True), experience(0, 1, 0.5), experience(0, 2, None, ErrorClass.syntax, None)]
    tracker.log_cycle(0, {"reward_mean": 0.1}, batch)
    found = {c.data.tags["sharpe_rl.index"]: c for c in children(tracker)}
    assert {i: c.info.run_name for i, c in found.items()} == {
        "0": "night-1 c000-00 rf",
        "1": "night-1 c000-01 rf",
        "2": "night-1 c000-02 syntax",
    }
    assert {i: c.data.tags["cached"] for i, c in found.items()} == {"0": "true", "1": "false", "2": "not executed"}
    families = {i: c.data.tags["model_family"] for i, c in found.items()}
    assert families == {"0": "sklearn", "1": "sklearn", "2": "unparsed"}


def test_the_experiment_opens_in_mlflows_model_training_view_and_the_run_has_an_address(tracker, tmp_path):
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI view
    assert tracker.run_url == (
        f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs/{tracker.parent_run_id}"
        "?workflowType=machine_learning"  # else a first visit opens MLflow's GenAI view
    )
    runs = f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
    assert tracker.runs_url == runs  # what `sharpe-rl serve` prints
    # an experiment made by an earlier version gets the tag when a run next starts
    tracker.client.delete_experiment_tag(tracker.experiment_id, "mlflow.experimentKind")
    Tracker(tmp_path / "runs").start(RunConfig(name="night-2"), "night-2", fresh=True)
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_logging_a_cycle_again_duplicates_nothing(tracker):
    batch = [experience(0, 0, 1.2), experience(0, 1, 0.5)]
    tracker.log_cycle(0, {"reward_mean": 0.1}, batch)
    tracker.log_cycle(0, {"reward_mean": 0.1}, batch)
    assert len(tracker.client.get_metric_history(tracker.parent_run_id, "reward_mean")) == 1
    assert len(children(tracker)) == 2


def test_a_half_written_child_is_replaced_on_resume(tracker, tmp_path):
    batch = [experience(0, 0, 1.2), experience(0, 1, 0.5)]
    tracker.log_cycle(0, {"reward_mean": 0.1}, batch)
    # the process died while writing child 1: it exists but never finished
    stale = next(c for c in children(tracker) if c.data.tags["sharpe_rl.index"] == "1")
    tracker.client.update_run(stale.info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    resumed = Tracker(tmp_path / "runs")
    assert resumed.start(RunConfig(name="night-1"), "night-1", fresh=False) == tracker.parent_run_id
    resumed.log_cycle(0, {"reward_mean": 0.1}, batch)
    live = children(resumed)
    assert sorted(c.data.tags["sharpe_rl.index"] for c in live) == ["0", "1"]
    assert all(c.info.status == "FINISHED" for c in live)


def test_flatten_nests_with_dots():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": "x"}) == {"a.b": "1", "a.c.d": "None", "e": "x"}


def test_a_run_started_afresh_under_an_old_name_gets_a_new_parent(tracker, tmp_path):
    tracker.log_cycle(0, {"reward_mean": 0.1}, [experience(0, 0, 1.2)])
    old_parent = tracker.parent_run_id

    again = Tracker(tmp_path / "runs")
    new_parent = again.start(RunConfig(name="night-1"), "night-1", fresh=True)  # e.g. after a reset
    again.log_cycle(0, {"reward_mean": 0.7}, [experience(0, 0, 2.0)])

    assert new_parent != old_parent
    assert again.client.get_run(old_parent).data.tags["sharpe_rl.kind"] == "archived-parent"
    assert [m.value for m in again.client.get_metric_history(new_parent, "reward_mean")] == [0.7]
    assert len(children(again)) == 1 and len(children(tracker)) == 1


def test_a_finished_run_takes_a_later_report_and_keeps_its_status(tracker, tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("trained against base: measured")
    tracker.finish()

    later = Tracker(tmp_path / "runs")  # e.g. evaluate-policy, another process, days later
    assert later.attach("night-1") == tracker.parent_run_id and later.attach("night-2") is None
    later.attach("night-1")
    later.log_artifacts(tmp_path / "report", "report")

    stored = later.client.download_artifacts(tracker.parent_run_id, "report/report.md", str(tmp_path / "got"))
    assert Path(stored).read_text() == "trained against base: measured"
    assert later.client.get_run(tracker.parent_run_id).info.status == "FINISHED"


# ---- one experiment's record never fails a cycle's logging ----


def hostile(cycle: int, index: int) -> Experience:
    """What code in the sandbox could make of its record: 1,200 timings, odd keys, non-finite values, huge text."""
    timings = {f"t{i}": float(i) for i in range(1_190)}
    timings |= {"with space": 1.0, "a/b": 2.0, "../up": 3.0, "nan": float("nan"), "inf": float("inf"), "": 4.0}
    timings |= {"x" * 300: 5.0, "fit": 0.5}
    record = experience(cycle, index, 1.0).model_dump()
    return Experience.model_validate(
        record | {"timings": timings, "name": "n\n" * 50_000, "error_message": "e" * 1_000_000}
    )


def test_invalid_values_are_recorded_as_such_and_never_raise(tracker, tmp_path):
    batch = [hostile(0, 0), experience(0, 1, 0.5)]
    tracker.log_cycle(0, {"reward_mean": 0.1, "broken": float("nan")}, batch)
    tracker.log_cycle(0, {"reward_mean": 0.1, "broken": float("nan")}, batch)  # a resumed cycle logs it again

    assert tracker.pending() == [] and not (tracker.outbox / "rejected").exists()
    logged = {c.data.tags["sharpe_rl.index"]: c for c in children(tracker)}
    assert sorted(logged) == ["0", "1"] and all(c.info.status == "FINISHED" for c in logged.values())
    child = logged["0"].data
    assert child.metrics["reward"] == pytest.approx(1 / 3) and child.metrics["sharpe_net"] == 1.0
    assert len(child.metrics) <= 100
    invalid = child.tags["sharpe_rl.invalid_values"]
    assert invalid.startswith("1101 values not logged")
    assert "not a plain metric name: 4 ('time_with space', 'time_a/b', 'time_../up', 'time_xxx" in invalid
    assert "not finite: 2 ('time_nan', 'time_inf')" in invalid and "over the limit of 100 metrics: 1095" in invalid
    assert "sharpe_rl.invalid_values" not in logged["1"].data.tags
    history = tracker.client.get_metric_history(tracker.parent_run_id, "reward_mean")
    assert [m.value for m in history] == [0.1]

    from sharpe_rl.buffer import ReplayBuffer  # the buffer keeps the record whole, NaN included

    buffer = ReplayBuffer(tmp_path / "runs")
    buffer.write("night-1", 0, batch)
    assert buffer.experiences("night-1", 0)[0].timings.keys() == batch[0].timings.keys()


def test_a_write_for_a_run_the_store_does_not_have_is_set_aside_and_the_others_go_on(tracker):
    # An outbox left by another store (a runs directory rebuilt under a run killed mid-write) once held
    # up every later write of the run, each retried and refused ("Run ... not found") forever.
    stale = {"parent": "f" * 32, "op": "terminate", "status": "FAILED"}
    tracker.outbox.mkdir(parents=True, exist_ok=True)
    (tracker.outbox / "00000000000000000001-terminate.json").write_text(json.dumps(stale))
    tracker.log_cycle(0, {"reward_mean": 0.1}, [experience(0, 0, 1.2)])
    assert tracker.pending() == []
    assert len(children(tracker)) == 1
    assert [p.name for p in (tracker.outbox / "rejected").iterdir()] == ["00000000000000000001-terminate.json"]


def test_writes_wait_in_the_outbox_while_the_server_is_down(tmp_path):
    down = Tracker(tmp_path / "runs", "http://127.0.0.1:9", parent_run_id="0123")  # port 9: nothing listens
    down.log_metrics(0, {"reward_mean": 0.1})
    down.log_cycle(0, {"reward_mean": 0.1}, [experience(0, 0, 1.2)])
    down.finish(failed=True)
    waiting = down.pending()
    assert [json.loads(p.read_text())["op"] for p in waiting] == ["metrics", "cycle", "terminate"]
    assert down.sync() == 3
