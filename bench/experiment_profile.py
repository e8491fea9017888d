"""Where an experiment's time goes: the point-in-time protocol's parts, timed on the experiments a night ran.

Runs experiments through the harness's `run_task` with the experiment side (`worker.serve`) on a
thread of this process, as `bench/sandbox_overhead.py`'s in-process mode does, with timers around
each part of the experiment side:

- `frame`: building the DataFrame `make_features` receives at each decision (`Bars.frame`);
- `make_features`: the generated feature code;
- `align`: checking and aligning what it returns to the frame's rows (`Experiment.features` minus
  the generated code);
- `predict_proba` and `fit`: the generated model;
- `protocol`: the rest of the wall time (the harness's loop, packing bars, the pipe, labels).

The experiments are the ones a night ran and scored (`--runs-dir`, `--run`: a sample of its ok
experiments, drawn with a fixed seed), or the benches' LightGBM spec when none is given. The
in-process wall time is within a few percent of the container's `total` (bench/sandbox_overhead.py
prints both), so the shares are those of an experiment in the sandbox.

    .venv/bin/python bench/experiment_profile.py [--panel data/sample_daily.parquet] [--runs-dir DIR --run NAME] [--n 8]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import io
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from sandbox_overhead import InProcessWorker, lightgbm_spec, runner  # bench/ is on sys.path

from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.data.panel import load_panel
from sharpe_rl.sandbox.contract import SANDBOX_ENV
from sharpe_rl.sandbox.image import HARNESS_DIR
from sharpe_rl.sandbox.runner import Job
from sharpe_rl.spec import ExperimentSpec

PARTS = ("frame", "make_features", "align", "predict_proba", "fit", "protocol")


def timed(spent: dict[str, float], key: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - started

    return wrapper


def instrument(worker, spent: dict[str, float]) -> None:
    """Timers around the experiment side's parts (the module's classes are patched in this process only)."""
    experiment = worker.Experiment
    worker.Bars.frame = timed(spent, "frame", worker.Bars.frame)
    experiment.features = timed(spent, "features", experiment.features)
    original_init, original_fit = experiment.__init__, experiment.fit

    def init(self, spec):
        original_init(self, spec)
        self.make_features = timed(spent, "make_features", self.make_features)

    def fit(self, labels):
        started, before = time.perf_counter(), spent["features"] + spent["frame"]
        original_fit(self, labels)
        spent["fit_call"] += time.perf_counter() - started
        spent["fit_features"] += spent["features"] + spent["frame"] - before  # the history's frame and features
        self.model.predict_proba = timed(spent, "predict_proba", self.model.predict_proba)

    experiment.__init__, experiment.fit = init, fit


def profile(panel, spec: ExperimentSpec, scratch: Path, harness, worker) -> tuple[dict[str, float], int]:
    """The parts of one experiment's time (seconds), and the decisions it was asked."""
    spent: dict[str, float] = defaultdict(float)
    instrument(worker, spent)
    plan_runner = runner(panel, "process", scratch)
    task, _ = plan_runner.task(Job(spec, plan_runner.reward_view, plan_runner.plan.folds), nonce="bench")
    header, arrays = harness.read_task(io.BytesIO(task))
    started = time.perf_counter()
    harness.run_task(header, arrays, InProcessWorker(worker), dict.fromkeys(harness.TIMING_KEYS, 0.0))
    wall = time.perf_counter() - started
    parts = {
        "frame": spent["frame"],
        "make_features": spent["make_features"],
        "align": spent["features"] - spent["make_features"],
        "predict_proba": spent["predict_proba"],
        "fit": spent["fit_call"] - spent["fit_features"],
    }
    parts["protocol"] = wall - sum(parts.values())
    parts["wall"] = wall
    return parts, len(header["decisions"])


def experiments(runs_dir: Path | None, run: str | None, n: int) -> list[ExperimentSpec]:
    if runs_dir is None:
        return [lightgbm_spec(100)]
    frame = ReplayBuffer(runs_dir).frame(run=run)
    ok = [row for row in frame.iter_rows(named=True) if row["error_class"] is None and row["spec_json"]]
    chosen = random.Random(0).sample(ok, min(n, len(ok)))
    return [ExperimentSpec.model_validate(json.loads(row["spec_json"])) for row in chosen]


def main() -> None:
    if any(os.environ.get(name) != value for name, value in SANDBOX_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **SANDBOX_ENV})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panel", type=Path, default=Path("data/sample_daily.parquet"))
    parser.add_argument("--runs-dir", type=Path, default=None, help="profile experiments this runs directory ran")
    parser.add_argument("--run", default=None)
    parser.add_argument("--n", type=int, default=8, help="experiments to profile")
    args = parser.parse_args()

    sys.path.insert(0, str(HARNESS_DIR))
    import harness  # the in-sandbox modules, imported as modules here
    import worker

    panel = load_panel(args.panel)
    specs = experiments(args.runs_dir, args.run, args.n)
    source = f"{args.run} in {args.runs_dir}" if args.runs_dir else "the benches' LightGBM spec"
    print(f"{args.panel}: {panel.height:,} rows; {len(specs)} experiment(s) from {source}")
    totals: dict[str, float] = defaultdict(float)
    decisions = 0
    with tempfile.TemporaryDirectory() as scratch:
        for i, spec in enumerate(specs):
            importlib.reload(worker)  # a fresh copy per experiment: one's timers do not wrap the next's
            parts, asked = profile(panel, spec, Path(scratch) / str(i), harness, worker)
            decisions += asked
            for key, value in parts.items():
                totals[key] += value
            print(
                f"  {spec.name[:40]:<40} {parts['wall']:6.2f} s, {asked} decisions, make_features "
                f"{1000 * parts['make_features'] / max(asked, 1):.2f} ms a call"
            )
    wall = totals["wall"]
    print(f"\nwhere the time goes, {len(specs)} experiment(s), {decisions} decisions, {wall:.1f} s in all")
    for part in PARTS:
        print(
            f"  {part:<14} {totals[part]:7.2f} s  {totals[part] / wall:6.1%}  "
            f"{1000 * totals[part] / max(decisions, 1):6.2f} ms per decision"
        )


if __name__ == "__main__":
    main()
