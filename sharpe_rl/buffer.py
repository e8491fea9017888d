"""The replay buffer: every Experience of every cycle, on disk, queryable as one polars frame.

One Parquet file per (run, cycle) at `runs/buffer/<run>/cycle-<NNN>.parquet`, written to a
temporary file and renamed into place, so a reader sees either the whole cycle or the previous
content, never half of it. Writing a cycle again replaces it, so a resumed run never duplicates.

In the files, `metrics` and `timings` are JSON strings: that keeps the column set fixed and the
round trip `write -> experiences` exact (a metric absent from a row stays absent). `frame()`
expands them into `metric_<name>` and `time_<name>` Float64 columns (the names MLflow uses for
timings), which is what queries want.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from sharpe_rl.data.atomic import atomic_path
from sharpe_rl.experience import Experience

#: The Parquet schema of one buffer file: the Experience fields, in order.
SCHEMA = pl.Schema(
    {
        "run": pl.String,
        "cycle": pl.Int64,
        "index": pl.Int64,
        "prompt_version": pl.String,
        "prompt": pl.String,
        "completion": pl.String,
        "prompt_token_ids": pl.List(pl.Int64),
        "completion_token_ids": pl.List(pl.Int64),
        "logprobs": pl.List(pl.Float64),
        "spec_json": pl.String,
        "name": pl.String,
        "model_family": pl.String,
        "custom_features": pl.Boolean,
        "error_class": pl.String,
        "error_message": pl.String,
        "metrics": pl.String,  # JSON object
        "reward": pl.Float64,
        "code_hash": pl.String,
        "cache_key": pl.String,
        "cached": pl.Boolean,
        "timings": pl.String,  # JSON object
        "created_at": pl.Datetime("us", "UTC"),
    }
)
_JSON_FIELDS = ("metrics", "timings")


class ReplayBuffer:
    """Every experience under `runs_dir/buffer/`, one atomic Parquet file per (run, cycle)."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        self.directory = self.runs_dir / "buffer"

    def path(self, run: str, cycle: int) -> Path:
        if not run or Path(run).name != run or run.startswith("."):
            raise ValueError(f"run name {run!r} must be a plain directory name")
        return self.directory / run / f"cycle-{cycle:03d}.parquet"

    def write(self, run: str, cycle: int, experiences: Sequence[Experience]) -> Path:
        """Persist one cycle's experiences atomically, replacing whatever that cycle held before."""
        strays = [e.index for e in experiences if (e.run, e.cycle) != (run, cycle)]
        if strays:
            raise ValueError(f"experiences {strays} do not belong to run {run!r} cycle {cycle}")
        indices = [e.index for e in experiences]
        if len(set(indices)) != len(indices):
            raise ValueError(f"run {run!r} cycle {cycle}: experience indices repeat: {sorted(indices)}")
        rows = [_to_row(e) for e in sorted(experiences, key=lambda e: e.index)]
        frame = pl.DataFrame(rows, schema=SCHEMA) if rows else SCHEMA.to_frame()
        destination = self.path(run, cycle)
        with atomic_path(destination) as temporary:
            frame.write_parquet(temporary)
            with temporary.open("rb") as handle:  # durable before it becomes visible
                os.fsync(handle.fileno())
        return destination

    def cycles_done(self, run: str) -> list[int]:
        """Cycles of `run` whose experiences are stored, ascending."""
        return sorted(int(p.stem.removeprefix("cycle-")) for p in self.path(run, 0).parent.glob("cycle-*.parquet"))

    def experiences(self, run: str, cycle: int) -> list[Experience]:
        """The experiences of one cycle, exactly as written, in index order."""
        frame = pl.read_parquet(self.path(run, cycle), schema=SCHEMA, missing_columns="insert")
        return [_from_row(row) for row in frame.iter_rows(named=True)]

    def frame(self, run: str | None = None) -> pl.DataFrame:
        """All experiences (of one run, or of every run) as one frame, metrics and timings as columns."""
        if run is not None:
            self.path(run, 0)  # validates the name before it becomes a glob pattern
        files = sorted(self.directory.glob(f"{run or '*'}/cycle-*.parquet"))
        if not files:
            return SCHEMA.to_frame().drop(_JSON_FIELDS)
        # a file written before a field was added (`cached`) reads with that column empty
        return _expanded(pl.read_parquet(files, schema=SCHEMA, missing_columns="insert").sort("run", "cycle", "index"))

    def clear(self) -> Path:
        """Move the whole buffer to `runs_dir/buffer-archive/<timestamp>/` and leave it empty; returns the archive."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        archive = self.runs_dir / "buffer-archive" / stamp
        archive.parent.mkdir(parents=True, exist_ok=True)
        if self.directory.exists():
            os.replace(self.directory, archive)
        else:
            archive.mkdir()
        self.directory.mkdir(parents=True)
        return archive


def experiences_frame(experiences: Sequence[Experience]) -> pl.DataFrame:
    """Experiences as `ReplayBuffer.frame()` shows them once written (metrics and timings as columns), with no file
    written or read: a step that has the cycle it writes in hand counts it without reading it back."""
    rows = [_to_row(e) for e in sorted(experiences, key=lambda e: (e.run, e.cycle, e.index))]
    return _expanded(pl.DataFrame(rows, schema=SCHEMA) if rows else SCHEMA.to_frame())


def _expanded(frame: pl.DataFrame) -> pl.DataFrame:
    """The stored rows with `metrics` and `timings` expanded into `metric_<name>` and `time_<name>` columns."""
    return frame.drop(_JSON_FIELDS).with_columns(
        *_expand_json(frame["metrics"], "metric_"), *_expand_json(frame["timings"], "time_")
    )


def _to_row(experience: Experience) -> dict:
    row = experience.model_dump(mode="python")
    for field in _JSON_FIELDS:
        row[field] = json.dumps(row[field])
    if row["error_class"] is not None:
        row["error_class"] = row["error_class"].value
    return row


def _from_row(row: dict) -> Experience:
    for field in _JSON_FIELDS:
        row[field] = json.loads(row[field])
    return Experience.model_validate(row)


def _expand_json(column: pl.Series, prefix: str) -> list[pl.Series]:
    """One Float64 column per key found in any row's JSON object; null where a row lacks the key."""
    objects = [json.loads(text) for text in column]
    keys = sorted({key for obj in objects for key in obj})
    return [pl.Series(f"{prefix}{key}", [obj.get(key) for obj in objects], dtype=pl.Float64) for key in keys]
