"""The replay buffer: exact round trips, atomic and idempotent cycle files, one frame, clear archives."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from sharpe_rl.buffer import SCHEMA, ReplayBuffer, experiences_frame
from sharpe_rl.experience import Experience
from sharpe_rl.sandbox.contract import ErrorClass


def make(run: str, cycle: int, index: int, **fields) -> Experience:
    values = {
        "run": run,
        "cycle": cycle,
        "index": index,
        "prompt_version": "v5_rules",
        "prompt": "Write an experiment.",
        "completion": '{"name": "x"}',
        "prompt_token_ids": [1, 2, 3],
        "completion_token_ids": [4, 5],
        "logprobs": [-0.1234567890123, -2.5e-300],
        "reward": 0.25,
        "created_at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    }
    return Experience(**(values | fields))


def cycle_of(run: str, cycle: int, n: int = 3) -> list[Experience]:
    return [
        make(run, cycle, i, metrics={"sharpe": 0.1 * i, "turnover": 2.0}, timings={"fit": 1.5}, reward=0.1 * i)
        for i in range(n)
    ]


def test_schema_has_every_experience_field_in_order():
    assert list(SCHEMA.names()) == list(Experience.model_fields)


def test_round_trip_is_exact(tmp_path):
    buffer = ReplayBuffer(tmp_path)
    written = [
        make(
            "run-a",
            2,
            0,
            spec_json='{"name": "lgbm", "features": "...", "model": "..."}',
            name="lgbm",
            model_family="lightgbm",
            custom_features=True,
            metrics={"sharpe": 1.2345678901234567, "psr": None},
            code_hash="abc",
            cache_key="def",
            timings={"execute": 12.5, "score": 0.01},
        ),
        make("run-a", 2, 1, error_class=ErrorClass.missing_column, error_message="KeyError: 'vwap'", reward=-1.25),
        make("run-a", 2, 2, prompt_token_ids=[], completion_token_ids=[], logprobs=[]),
    ]
    buffer.write("run-a", 2, list(reversed(written)))
    assert buffer.experiences("run-a", 2) == written  # in index order, every field equal


def test_a_failed_write_leaves_the_previous_cycle_intact(tmp_path, monkeypatch):
    buffer = ReplayBuffer(tmp_path)
    before = cycle_of("run-a", 0)
    path = buffer.write("run-a", 0, before)

    def crash(self, file, *args, **kwargs):
        with open(file, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise OSError("killed mid-write")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash)
    with pytest.raises(OSError, match="killed mid-write"):
        buffer.write("run-a", 0, cycle_of("run-a", 0, n=5))
    with pytest.raises(OSError):
        buffer.write("run-a", 1, cycle_of("run-a", 1))
    monkeypatch.undo()

    assert [p.name for p in path.parent.iterdir()] == ["cycle-000.parquet"]  # no temporary files, no cycle 1
    assert buffer.experiences("run-a", 0) == before
    assert buffer.cycles_done("run-a") == [0]


def test_writing_a_cycle_again_replaces_it(tmp_path):
    buffer = ReplayBuffer(tmp_path)
    buffer.write("run-a", 0, cycle_of("run-a", 0, n=4))
    again = cycle_of("run-a", 0, n=2)
    buffer.write("run-a", 0, again)
    assert buffer.experiences("run-a", 0) == again
    assert buffer.frame("run-a").height == 2


def test_experiences_of_another_cycle_are_refused(tmp_path):
    buffer = ReplayBuffer(tmp_path)
    with pytest.raises(ValueError, match="do not belong"):
        buffer.write("run-a", 1, cycle_of("run-a", 0))
    with pytest.raises(ValueError, match="indices repeat"):
        buffer.write("run-a", 0, [make("run-a", 0, 0), make("run-a", 0, 0)])
    with pytest.raises(ValueError, match="plain directory name"):
        buffer.write("../x", 0, [])


def test_frame_over_many_cycles_and_runs(tmp_path):
    buffer = ReplayBuffer(tmp_path)
    for run in ("run-a", "run-b"):
        for cycle in (3, 0, 1, 2, 4):
            buffer.write(run, cycle, cycle_of(run, cycle))
    buffer.write("run-b", 5, [make("run-b", 5, 0, metrics={"dsr": 0.9})])

    frame = buffer.frame()
    assert frame.height == 2 * 5 * 3 + 1
    assert frame.select("run", "cycle", "index").rows() == sorted(frame.select("run", "cycle", "index").rows())
    assert {"metric_sharpe", "metric_turnover", "metric_dsr", "time_fit"} <= set(frame.columns)
    assert "metrics" not in frame.columns and "timings" not in frame.columns
    assert frame.schema["metric_sharpe"] == pl.Float64
    assert frame.filter(pl.col("metric_dsr").is_not_null()).select("run", "cycle").rows() == [("run-b", 5)]
    per_cycle = buffer.frame("run-a").group_by("cycle").agg(pl.col("reward").mean()).sort("cycle")
    assert per_cycle["cycle"].to_list() == [0, 1, 2, 3, 4]
    assert per_cycle["reward"].to_list() == pytest.approx([0.1] * 5)
    assert buffer.cycles_done("run-a") == [0, 1, 2, 3, 4]
    assert buffer.cycles_done("run-b") == [0, 1, 2, 3, 4, 5]
    assert buffer.cycles_done("run-c") == []


def test_experiences_frame_is_the_frame_the_buffer_shows_once_they_are_written(tmp_path):
    buffer = ReplayBuffer(tmp_path)
    experiences = [*cycle_of("run-a", 2)[::-1], make("run-a", 2, 3, metrics={"dsr": 0.9}, error_class="syntax")]
    buffer.write("run-a", 2, experiences)
    assert experiences_frame(experiences).equals(buffer.frame("run-a"))
    assert experiences_frame([]).equals(ReplayBuffer(tmp_path / "empty").frame())


def test_a_cycle_written_before_the_cached_field_reads_with_it_empty(tmp_path):
    buffer = ReplayBuffer(tmp_path)
    buffer.write("old", 0, cycle_of("old", 0))
    path = buffer.path("old", 0)
    pl.read_parquet(path).drop("cached").write_parquet(path)  # as an earlier version wrote it
    buffer.write("new", 0, [e.model_copy(update={"cached": True}) for e in cycle_of("new", 0)])
    frame = buffer.frame()
    assert frame.filter(pl.col("run") == "old")["cached"].to_list() == [None, None, None]
    assert frame.filter(pl.col("run") == "new")["cached"].to_list() == [True, True, True]
    assert [e.cached for e in buffer.experiences("old", 0)] == [None, None, None]


def test_empty_buffer_has_an_empty_frame(tmp_path):
    frame = ReplayBuffer(tmp_path).frame()
    assert frame.height == 0 and "reward" in frame.columns


def test_clear_archives_then_empties(tmp_path):
    buffer = ReplayBuffer(tmp_path)
    buffer.write("run-a", 0, cycle_of("run-a", 0))
    buffer.write("run-b", 0, cycle_of("run-b", 0))

    archive = buffer.clear()

    assert archive.parent == tmp_path / "buffer-archive"
    assert sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*.parquet")) == [
        "run-a/cycle-000.parquet",
        "run-b/cycle-000.parquet",
    ]
    assert buffer.frame().height == 0
    assert buffer.cycles_done("run-a") == []
    assert buffer.directory.is_dir()
    assert buffer.clear() != archive  # clearing an empty buffer still gives its own archive
