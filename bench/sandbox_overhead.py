"""What the sandbox costs: one LightGBM experiment in-process, in the process executor and in Docker.

Runs the same typical spec (LightGBM on a few return/volatility/volume features, walk-forward folds
of the default EvalConfig, no lookahead re-run) three ways and prints the median wall time of each
and the overhead of each executor over the in-process run; then the bare cost of a locked-down
container (start, `python -c pass`, remove); then the throughput of N distinct experiments in
Docker with 1 and with 2 workers. Nothing is cached: every run uses a fresh cache directory.

    .venv/bin/python bench/sandbox_overhead.py [--panel PATH] [--repeat 3] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import docker

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.data.panel import load_panel
from sharpe_rl.sandbox.contract import SANDBOX_ENV
from sharpe_rl.sandbox.image import HARNESS_DIR, ensure_image
from sharpe_rl.sandbox.runner import SandboxRunner
from sharpe_rl.sandbox.views import write_view
from sharpe_rl.spec import ExperimentSpec

DEFAULT_PANEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_4h.parquet"

FEATURES = """
import numpy as np
import pandas as pd


def make_features(df):
    out = pd.DataFrame(index=df.index)
    ret = df["close"].pct_change()
    for k in (1, 3, 6, 12, 24):
        out[f"ret_{k}"] = df["close"].pct_change(k)
    out["vol_12"] = ret.rolling(12).std()
    out["vol_48"] = ret.rolling(48).std()
    out["range"] = (df["high"] - df["low"]) / df["close"]
    out["volume_ratio"] = df["volume"] / df["volume"].rolling(48).mean()
    return out
"""
MODEL = """
import lightgbm as lgb


def make_model():
    return lgb.LGBMClassifier(n_estimators={n}, learning_rate=0.05, num_leaves=15, verbose=-1)
"""


def lightgbm_spec(n_estimators: int) -> ExperimentSpec:
    return ExperimentSpec(name=f"lgbm_{n_estimators}", features=FEATURES, model=MODEL.format(n=n_estimators))


def runner(panel, executor: str, cache: Path, workers: int = 1) -> SandboxRunner:
    sandbox = SandboxConfig(executor=executor, workers=workers, timeout_seconds=600, memory_mb=4096)
    return SandboxRunner(panel, EvalConfig(lookahead_check=False), sandbox, cache)


def in_process(panel, spec: ExperimentSpec, scratch: Path) -> float:
    """The harness's own work, in this process (its imports already paid for)."""
    sys.path.insert(0, str(HARNESS_DIR))
    import harness  # the in-sandbox harness, imported as a module here

    plan = runner(panel, "process", scratch / "plan").plan
    view = write_view(panel, plan.reward_end, scratch / "views")
    task = {
        "spec": spec.model_dump(),
        "folds": [fold.to_wire() for fold in plan.folds],
        "horizon": 1,
        "seed": 0,
        "time_limit_seconds": 600,
    }
    started = time.perf_counter()
    harness.run_experiment(task, str(view.path), {})
    return time.perf_counter() - started


def bare_container(image: str) -> float:
    """Create, start, wait for and remove a container with the sandbox's limits running `python -c pass`."""
    client = docker.from_env()
    started = time.perf_counter()
    client.containers.run(
        image,
        entrypoint=["/opt/venv/bin/python", "-c", "pass"],
        user="10001:10001",
        environment=SANDBOX_ENV,
        network_mode="none",
        read_only=True,
        tmpfs={"/tmp": "rw,noexec,nosuid,size=64m"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        init=True,
        pids_limit=256,
        mem_limit="2048m",
        memswap_limit="2048m",
        nano_cpus=10**9,
        remove=True,
    )
    return time.perf_counter() - started


def main() -> None:
    if any(os.environ.get(name) != value for name, value in SANDBOX_ENV.items()):
        # the in-process baseline must use the sandbox's single-threaded settings, read at library load
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **SANDBOX_ENV})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panel", type=Path, default=DEFAULT_PANEL)
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode; the median is reported")
    parser.add_argument("--batch", type=int, default=4, help="experiments per throughput measurement")
    parser.add_argument("--estimators", type=int, default=100)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="the process executor is NOT")

    panel = load_panel(args.panel)
    image = ensure_image()
    spec = lightgbm_spec(args.estimators)
    print(f"{args.panel.name}: {panel.height:,} rows, {panel.get_column('symbol').n_unique()} symbols; image {image}")

    walls: dict[str, list[float]] = {"in-process": [], "process": [], "docker": []}
    inside: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.repeat):
            walls["in-process"].append(in_process(panel, spec, Path(scratch) / f"inproc{i}"))
            for executor in ("process", "docker"):
                result = runner(panel, executor, Path(scratch) / f"{executor}{i}").run(spec)
                assert result.ok, f"{executor}: {result.status}: {result.message}"
                walls[executor].append(result.timings["wall"])
                if executor == "docker":
                    inside.append(result.timings["total"])
        base = statistics.median(walls["in-process"])
        print(f"\none experiment, median of {args.repeat} (seconds)")
        for mode, values in walls.items():
            median = statistics.median(values)
            extra = median - base
            overhead = "" if mode == "in-process" else f"  overhead {extra:+.2f} s ({extra / base:+.1%})"
            print(f"  {mode:<11} {median:7.2f}{overhead}")
        isolation = statistics.median(walls["docker"]) - statistics.median(walls["process"])
        print(f"  docker over the process executor (the cost of the container itself): {isolation:+.2f} s")
        print(f"  (inside the container the harness took {statistics.median(inside):.2f} s; the rest of the")
        print("  overhead is a fresh interpreter importing numpy, pandas and the model's library)")

        containers = [bare_container(image) for _ in range(5)]
        print(f"\nbare locked-down container (python -c pass), median of 5: {statistics.median(containers):.2f} s")

        print(f"\nthroughput, {args.batch} distinct experiments in Docker")
        for workers in (1, 2):
            batch = [lightgbm_spec(args.estimators + workers * 100 + k) for k in range(args.batch)]
            started = time.perf_counter()
            results = runner(panel, "docker", Path(scratch) / f"batch{workers}", workers).run_many(batch)
            elapsed = time.perf_counter() - started
            assert all(r.ok for r in results), json.dumps([r.message for r in results])
            print(f"  {workers} worker(s): {elapsed:6.1f} s, {args.batch / elapsed * 60:5.1f} experiments/min")


if __name__ == "__main__":
    main()
