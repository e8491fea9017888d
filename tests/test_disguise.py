"""The data in disguise: what a task shows of the bars, and that the host gets every answer back in its own order."""

from __future__ import annotations

import io
import sys

import numpy as np
import polars as pl
from data_fixtures import three_symbol_panel

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.sandbox.disguise import MIN_OFFSET_WEEKS, Disguise, load_disguise_key
from sharpe_rl.sandbox.image import HARNESS_DIR
from sharpe_rl.sandbox.runner import Job, SandboxRunner
from sharpe_rl.spec import ExperimentSpec

sys.path.insert(0, str(HARNESS_DIR))
import harness

SPEC = ExperimentSpec(name="x", features="def make_features(df):\n    return df", model="def make_model():\n    pass")
KEY = "11" * 32
WEEK_NS = 7 * 24 * 3600 * 10**9


def task_of(runner: SandboxRunner, spec: ExperimentSpec = SPEC) -> tuple[dict, dict, np.ndarray, Job]:
    job = Job(spec, runner.reward_view, runner.plan.folds)
    task, order = runner.task(job, nonce="n")
    header, arrays = harness.read_task(io.BytesIO(task))
    return header, arrays, order, job


def runner(tmp_path, key: str = KEY) -> SandboxRunner:
    config = SandboxConfig(executor="process", warm_pool=False)
    return SandboxRunner(three_symbol_panel(), EvalConfig(), config, tmp_path, disguise_key=key)


def test_the_clock_moves_a_secret_whole_number_of_weeks_years_ahead(tmp_path):
    header, arrays, order, job = task_of(runner(tmp_path))
    view = job.view
    shift = arrays["timestamp"] - view.timestamps[order]
    assert len(set(shift.tolist())) == 1 and shift[0] % WEEK_NS == 0 and shift[0] >= MIN_OFFSET_WEEKS * WEEK_NS
    seen = pl.Series(arrays["timestamp"]).cast(pl.Datetime("ns", "UTC"))
    real = pl.Series(view.timestamps[order]).cast(pl.Datetime("ns", "UTC"))
    assert (seen.dt.weekday() == real.dt.weekday()).all() and (seen.dt.hour() == real.dt.hour()).all()
    assert seen.dt.year().min() >= real.dt.year().max() + 9  # no date of the task is a date of market history
    assert [f["test_start"] - shift[0] for f in header["folds"]] == [f.to_wire()["test_start"] for f in job.folds]


def test_prices_are_scaled_by_a_power_of_two_per_symbol_and_returns_are_unchanged_to_the_bit(tmp_path):
    _, arrays, order, job = task_of(runner(tmp_path))
    view, ohlcv = job.view, arrays["ohlcv"].reshape(-1, 5)
    scale = ohlcv[:, 3] / view.ohlcv[order, 3]
    for code in range(len(view.symbols)):
        mine = scale[view.codes[order] == code]
        assert np.all(mine == mine[0]) and np.log2(mine[0]) == round(np.log2(mine[0]))
        host_close = view.ohlcv[view.codes == code, 3]
        task_close = ohlcv[arrays["symbol"] == arrays["symbol"][view.codes[order] == code][0], 3]
        assert np.array_equal(np.diff(task_close) / task_close[:-1], np.diff(host_close) / host_close[:-1])
    assert np.array_equal(ohlcv[:, 4], view.ohlcv[order, 4])  # volume as it is


def test_codes_are_in_a_secret_order_and_the_rows_of_a_time_follow_them(tmp_path):
    orders = set()
    for n in range(12):
        spec = SPEC.model_copy(update={"name": f"x{n}", "model": SPEC.model + f"\n# {n}"})
        _, arrays, _, job = task_of(runner(tmp_path), spec)
        codes, times = arrays["symbol"], arrays["timestamp"]
        assert np.all(np.diff(times) >= 0) and np.all(np.diff(codes)[np.diff(times) == 0] > 0)
        orders.add(tuple(Disguise.draw(KEY, job.view.data_hash, spec.code_hash, 3).codes))
    assert len(orders) > 1  # not alphabetical, not the same for every experiment


def test_answers_come_back_in_the_hosts_order(tmp_path):
    _, _, order, job = task_of(runner(tmp_path))
    asked = job.view.test_indices(job.folds)
    # answer each asked row with its host row number, in the task's order (the harness's order)
    in_task_order = np.sort(np.argsort(order)[asked])
    answers = order[in_task_order].astype(float)
    assert np.array_equal(Disguise.restore(answers, order, asked), asked.astype(float))


def test_the_same_experiment_on_the_same_data_sees_the_same_disguise_and_another_key_another(tmp_path):
    first, again = (Disguise.draw(KEY, "view", "code", 5) for _ in range(2))
    assert first.offset_ns == again.offset_ns and np.array_equal(first.codes, again.codes)
    other = Disguise.draw("22" * 32, "view", "code", 5)
    assert other.offset_ns != first.offset_ns


def test_the_key_is_made_once_per_cache_and_kept_from_others(tmp_path):
    key = load_disguise_key(tmp_path)
    assert len(bytes.fromhex(key)) == 32 and load_disguise_key(tmp_path) == key
    assert (tmp_path / "disguise.key").stat().st_mode & 0o077 == 0
