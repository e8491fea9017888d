"""The MAP-Elites archive: the best experiment per cell, stored atomically, the same after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_snippets import LIGHTGBM, LOGISTIC, TREND, TREND_AND_VOLUME

from sharpe_rl.analysis.quality_diversity import archive_by_cycle, elite_grid, grid_table
from sharpe_rl.analysis.tables import annotate
from sharpe_rl.archive import (
    EliteArchive,
    archive_path,
    load_archive,
    qd_fitness,
    save_archive,
)
from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.experience import Experience
from sharpe_rl.grid import FEATURE_BLOCKS, GRID_CELLS
from sharpe_rl.reset import reset_runs
from sharpe_rl.sandbox.contract import ErrorClass
from sharpe_rl.spec import ExperimentSpec


def experiment(
    cycle: int,
    index: int,
    sharpe: float | None,
    features: str = TREND,
    model: str = LIGHTGBM,
    error_class: ErrorClass | None = None,
    run: str = "run",
) -> Experience:
    spec = ExperimentSpec(name=f"e{cycle}.{index}", features=features, model=model.format(n=100 + 10 * cycle + index))
    return Experience(
        run=run,
        cycle=cycle,
        index=index,
        prompt_version="v5_rules",
        prompt="p",
        completion="c",
        prompt_token_ids=[1],
        completion_token_ids=[2],
        logprobs=[0.0],
        spec_json=spec.model_dump_json(),
        name=spec.name,
        error_class=error_class,
        metrics={} if sharpe is None else {"sharpe_net": sharpe},
        reward=0.0,
        code_hash=spec.code_hash,
        cache_key=f"k{cycle}.{index}",
    )


CYCLES = {
    0: [
        experiment(0, 0, 0.5),
        experiment(0, 1, 1.2),
        experiment(0, 2, None, error_class=ErrorClass.type_error),
        experiment(0, 3, -0.4, TREND_AND_VOLUME, LOGISTIC),
    ],
    1: [
        experiment(1, 0, 0.8),  # below the (lightgbm, trend) elite: kept out
        experiment(1, 1, 2.0, TREND_AND_VOLUME, LOGISTIC),  # beats both logistic cells
        experiment(1, 2, 1.2),  # ties the elite, found later: kept out
    ],
    2: [experiment(2, 0, 0.3, TREND_AND_VOLUME)],  # the first (lightgbm, volume)
}


def filled(cycles=CYCLES) -> EliteArchive:
    archive = EliteArchive(run="run")
    for cycle, experiences in cycles.items():
        archive.add(cycle, experiences)
    return archive


def test_the_archive_keeps_the_best_experiment_per_cell():
    archive = filled()
    elites = {e.cell: (e.cycle, e.index, e.sharpe_net) for e in archive.elites}
    assert elites == {
        ("lightgbm", "trend"): (0, 1, 1.2),
        ("lightgbm", "volume"): (2, 0, 0.3),
        ("sklearn/linear", "trend"): (1, 1, 2.0),
        ("sklearn/linear", "volume"): (1, 1, 2.0),
    }
    assert archive.cycles == [0, 1, 2]
    assert archive.coverage == pytest.approx(4 / len(GRID_CELLS))
    assert archive.qd_score == pytest.approx(qd_fitness(1.2) + qd_fitness(0.3) + 2 * qd_fitness(2.0))


def test_add_reports_the_cells_it_improved():
    archive = EliteArchive(run="run")
    first = {("lightgbm", "trend"), ("sklearn/linear", "trend"), ("sklearn/linear", "volume")}
    assert set(archive.add(0, CYCLES[0])) == first
    assert set(archive.add(1, CYCLES[1])) == {("sklearn/linear", "trend"), ("sklearn/linear", "volume")}
    assert archive.add(1, CYCLES[1]) == []  # the same cycle again changes nothing


def test_order_and_repetition_do_not_change_the_archive():
    everything = [e for experiences in CYCLES.values() for e in experiences]
    shuffled = EliteArchive(run="run")
    shuffled.add(2, reversed(everything))
    shuffled.add(0, everything)
    assert shuffled.elites == filled().elites


def test_qd_fitness_is_the_clipped_sharpe_on_unit_scale():
    assert [qd_fitness(s) for s in (-10.0, -3.0, 0.0, 1.5, 3.0, 10.0)] == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]


def test_the_archive_survives_a_restart(tmp_path):
    before_restart = EliteArchive(run="run")
    before_restart.add(0, CYCLES[0])
    path = save_archive(tmp_path, before_restart)
    assert path == archive_path(tmp_path, "run") and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temporary file left behind

    resumed = load_archive(tmp_path, "run")  # a new process
    assert resumed == before_restart
    resumed.add(1, CYCLES[1])
    resumed.add(2, CYCLES[2])
    save_archive(tmp_path, resumed)
    assert load_archive(tmp_path, "run") == filled()


def test_a_run_without_a_stored_archive_starts_empty(tmp_path):
    archive = load_archive(tmp_path, "new-run")
    assert archive.elites == [] and archive.coverage == 0 and archive.qd_score == 0
    with pytest.raises(ValueError, match="plain file name"):
        archive_path(tmp_path, "../elsewhere")


def test_rebuilding_from_the_buffer_gives_the_same_archive(tmp_path):
    buffer = ReplayBuffer(tmp_path)
    for cycle, experiences in CYCLES.items():
        buffer.write("run", cycle, experiences)
    buffer.write("other", 0, [experiment(0, 0, 9.0, run="other")])
    assert EliteArchive.from_frame(buffer.frame(), "run") == filled()


def test_an_experiment_of_another_run_is_refused():
    with pytest.raises(ValueError, match="run 'other'"):
        EliteArchive(run="run").add(0, [experiment(0, 0, 1.0, run="other")])


def test_inspiration_draws_profitable_elites_of_distinct_cells_and_programs():
    archive = filled()
    drawn = archive.inspiration(k=3, seed=0)
    # (sklearn/linear, trend) and (sklearn/linear, volume) hold the same program: it is drawn once
    assert len(drawn) == 3 and len({e.code_hash for e in drawn}) == 3 and len({e.cell for e in drawn}) == 3
    assert archive.inspiration(k=3, seed=0) == drawn  # seeded
    assert [e.cell for e in archive.inspiration(k=5, seed=1, avoid={("lightgbm", "trend")}, min_sharpe=0.5)] in (
        [("sklearn/linear", "trend")],
        [("sklearn/linear", "volume")],
    )
    seen = {e.cell for seed in range(50) for e in archive.inspiration(k=1, seed=seed)}
    assert seen == {cell for cell in (e.cell for e in archive.elites)}  # every cell can be drawn


def test_reset_archives_the_elites(tmp_path):
    save_archive(tmp_path, filled())
    archived = reset_runs(tmp_path)
    assert not (tmp_path / "elites").exists()
    assert load_archive(tmp_path, "run").elites == []
    kept = Path(archived["elite archives"], "run.json")
    assert EliteArchive.model_validate_json(kept.read_text()) == filled()


# -- the report's tables --------------------------------------------------------------------------


def test_the_per_cycle_table_follows_the_archive(tmp_path):
    buffer = ReplayBuffer(tmp_path)
    for cycle, experiences in CYCLES.items():
        buffer.write("run", cycle, experiences)
    table = archive_by_cycle(annotate(buffer.frame()))
    assert table.select("cycle", "filled", "new_cells", "improved_cells").rows() == [
        (0, 3, 3, 0),
        (1, 3, 0, 2),  # the logistic model's two cells got a better elite
        (2, 4, 1, 0),
    ]
    final = filled()
    assert table["coverage_pct"][-1] == pytest.approx(100 * final.coverage)
    assert table["qd_score"][-1] == pytest.approx(final.qd_score)
    assert table["qd_score"].is_sorted()  # an archive never loses quality


def test_the_grid_counts_visits_and_shows_each_cells_elite(tmp_path):
    buffer = ReplayBuffer(tmp_path)
    for cycle, experiences in CYCLES.items():
        buffer.write("run", cycle, experiences)
    grid = elite_grid(buffer.frame())
    assert grid.height == len(GRID_CELLS)
    visited = {(r["model_family"], r["block"]): (r["visits"], r["sharpe"]) for r in grid.iter_rows(named=True)}
    assert visited[("lightgbm", "trend")] == (5, 1.2)  # five LightGBM experiments ran; the failure did not
    assert visited[("sklearn/linear", "volume")] == (2, 2.0)
    assert visited[("torch", "trend")] == (0, None)
    table = grid_table(grid)
    assert table["model_family"].to_list() == ["lightgbm", "sklearn/linear"]
    assert table.columns == ["model_family", *FEATURE_BLOCKS]
