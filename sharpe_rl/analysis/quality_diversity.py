"""Quality-diversity of a run: how much of the (model family × feature block) grid it filled, and how well.

Both tables come from the replay buffer's frame (the annotated frame of `tables.annotate`, or
`ReplayBuffer.frame()`), through the same fold as the run's stored archive (`sharpe_rl.archive`),
so the report of an old run needs no stored archive and agrees with one when it exists.
"""

from __future__ import annotations

from collections import Counter

import polars as pl

from sharpe_rl.archive import EliteArchive, frame_candidates
from sharpe_rl.grid import FEATURE_BLOCKS, GRID_CELLS, MODEL_LABELS

_BY_CYCLE_SCHEMA = {
    "cycle": pl.Int64,
    "filled": pl.Int64,
    "coverage_pct": pl.Float64,
    "qd_score": pl.Float64,
    "new_cells": pl.Int64,
    "improved_cells": pl.Int64,
}


def archive_by_cycle(frame: pl.DataFrame) -> pl.DataFrame:
    """Per cycle, the archive after it: cycle, filled cells, coverage_pct (of the grid), qd_score,
    new_cells (filled for the first time in the cycle) and improved_cells (a better elite)."""
    archive = EliteArchive(run=_the_run(frame))
    rows = []
    for cycle in sorted(frame["cycle"].unique().to_list()):
        before = {e.cell for e in archive.elites}
        changed = {c.cell for c in frame_candidates(frame.filter(pl.col("cycle") == cycle)) if archive.offer(c)}
        rows.append(
            {
                "cycle": cycle,
                "filled": len(archive.elites),
                "coverage_pct": 100 * archive.coverage,
                "qd_score": archive.qd_score,
                "new_cells": len(changed - before),
                "improved_cells": len(changed & before),
            }
        )
    return pl.DataFrame(rows, schema=_BY_CYCLE_SCHEMA)


def elite_grid(frame: pl.DataFrame) -> pl.DataFrame:
    """Every cell of the grid, family by family: model_family, block, visits (scored experiments in
    it), and its elite's sharpe, cycle, index and name (null for a cell never visited)."""
    archive = EliteArchive.from_frame(frame, _the_run(frame))
    visits = Counter(c.cell for c in frame_candidates(frame))
    rows = []
    for cell in GRID_CELLS:
        elite = archive.elite(cell)
        rows.append(
            {
                "model_family": cell[0],
                "block": cell[1],
                "visits": visits[cell],
                "sharpe": elite.sharpe_net if elite else None,
                "cycle": elite.cycle if elite else None,
                "index": elite.index if elite else None,
                "name": elite.name if elite else None,
            }
        )
    schema = {
        "model_family": pl.String,
        "block": pl.String,
        "visits": pl.Int64,
        "sharpe": pl.Float64,
        "cycle": pl.Int64,
        "index": pl.Int64,
        "name": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)


def grid_table(grid: pl.DataFrame, value: str = "sharpe") -> pl.DataFrame:
    """`elite_grid` as a table: one row per model family that has a filled cell, one column per block."""
    used = grid.filter(pl.col("sharpe").is_not_null())["model_family"].unique().to_list()
    if not used:
        return pl.DataFrame(schema={"model_family": pl.String, **dict.fromkeys(FEATURE_BLOCKS, grid.schema[value])})
    wide = grid.filter(pl.col("model_family").is_in(used)).pivot(on="block", index="model_family", values=value)
    order = {label: position for position, label in enumerate(MODEL_LABELS)}
    return wide.select("model_family", *FEATURE_BLOCKS).sort(
        pl.col("model_family").replace_strict(order, return_dtype=pl.Int64)
    )


def _the_run(frame: pl.DataFrame) -> str:
    runs = frame["run"].unique().to_list()
    if len(runs) > 1:
        raise ValueError(f"quality-diversity tables take the experiments of one run, got runs {sorted(runs)}")
    return runs[0] if runs else ""
