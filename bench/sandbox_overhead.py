"""What the sandbox costs: one LightGBM experiment in-process, in the process executor and in Docker.

Runs the same typical spec (LightGBM on a few return/volatility/volume features, walk-forward folds
of the default EvalConfig) four ways and prints the median wall time of each and the overhead of
each over the in-process run: the process executor and Docker each starting their sandbox on the
spot (no warm pool), and Docker with its warm pool in its steady state (the container that takes
the task started, and imported the libraries, while the previous experiment ran); then the bare
cost of a locked-down container (start, `python -c pass`, remove); then the throughput of N
distinct experiments in Docker with 1 and with 2 workers. Nothing is cached: every run uses a fresh
cache directory or a distinct spec.

"In-process" is the same point-in-time protocol with nothing around it: the trusted harness's
`run_task` drives the experiment side (`worker.serve`) on a thread of this process, over an
in-memory pipe, with every library already imported. The harness's own timings (`load`, `fit`,
`predict`) and the number of prediction steps are printed for the Docker run.

    .venv/bin/python bench/sandbox_overhead.py [--panel PATH] [--symbols N] [--days D] [--repeat 3] [--batch 4]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing import Pipe
from pathlib import Path

import docker
import polars as pl
from panel_speed import FEATURES  # the benches' one LightGBM spec (bench/ is on sys.path)

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.data.panel import load_panel
from sharpe_rl.sandbox.contract import SANDBOX_ENV
from sharpe_rl.sandbox.executor import START_WAIT_SECONDS
from sharpe_rl.sandbox.image import HARNESS_DIR, ensure_image
from sharpe_rl.sandbox.runner import Job, SandboxRunner
from sharpe_rl.spec import ExperimentSpec

DEFAULT_PANEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_4h.parquet"

MODEL = """
import lightgbm as lgb


def make_model():
    return lgb.LGBMClassifier(n_estimators={n}, learning_rate=0.05, num_leaves=15, verbose=-1)
"""


def lightgbm_spec(n_estimators: int) -> ExperimentSpec:
    return ExperimentSpec(name=f"lgbm_{n_estimators}", features=FEATURES, model=MODEL.format(n=n_estimators))


def runner(panel, executor: str, cache: Path, workers: int = 1, warm_pool: bool = False) -> SandboxRunner:
    sandbox = SandboxConfig(
        executor=executor, workers=workers, timeout_seconds=3600, memory_mb=4096, warm_pool=warm_pool
    )
    return SandboxRunner(panel, EvalConfig(), sandbox, cache)


class InProcessWorker:
    """The harness's view of the experiment's process, served by `worker.serve` on a thread instead."""

    def __init__(self, worker_module) -> None:
        self.outbox, inbox = Pipe()
        outbox, self.inbox = Pipe()
        self.thread = threading.Thread(target=worker_module.serve, args=(inbox, outbox), daemon=True)
        self.thread.start()

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        self.outbox.send_bytes(kind + payload)

    def ask(self, kind: bytes, payload: bytes = b"") -> tuple[bytes, memoryview]:
        self.send(kind, payload)
        frame = memoryview(self.inbox.recv_bytes())
        return bytes(frame[:1]), frame[1:]


def in_process(panel, spec: ExperimentSpec, scratch: Path) -> float:
    """The point-in-time protocol in this process (its imports already paid for)."""
    sys.path.insert(0, str(HARNESS_DIR))
    import harness  # the in-sandbox modules, imported as modules here
    import worker

    plan_runner = runner(panel, "process", scratch / "plan")
    task, _ = plan_runner.task(Job(spec, plan_runner.reward_view, plan_runner.plan.folds), nonce="bench")
    header, arrays = harness.read_task(io.BytesIO(task))
    started = time.perf_counter()
    harness.run_task(header, arrays, InProcessWorker(worker), dict.fromkeys(harness.TIMING_KEYS, 0.0))
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
    parser.add_argument("--symbols", type=int, default=None, help="keep the N symbols with the most bars")
    parser.add_argument("--days", type=int, default=None, help="keep the last D days")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode; the median is reported")
    parser.add_argument("--batch", type=int, default=4, help="experiments per throughput measurement")
    parser.add_argument("--estimators", type=int, default=100)
    args = parser.parse_args()

    panel = load_panel(args.panel)
    if args.symbols:
        largest = panel.group_by("symbol").len().sort("len", "symbol", descending=True).head(args.symbols)
        panel = panel.filter(pl.col("symbol").is_in(largest.get_column("symbol").implode()))
    if args.days:
        panel = panel.filter(pl.col("timestamp") > pl.col("timestamp").max() - pl.duration(days=args.days))
    image = ensure_image()
    spec = lightgbm_spec(args.estimators)
    print(f"{args.panel.name}: {panel.height:,} rows, {panel.get_column('symbol').n_unique()} symbols; image {image}")

    walls: dict[str, list[float]] = {"in-process": [], "process": [], "docker": [], "docker, warm pool": []}
    inside: list[dict[str, float]] = []
    inside_warm: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as scratch:
        # The warm pool's steady state: its container started (and imported the libraries) while the
        # previous experiment ran. A warm-up experiment fills it; each measured one is a distinct spec.
        warm = runner(panel, "docker", Path(scratch) / "warm", warm_pool=True)
        assert warm.run(lightgbm_spec(args.estimators + 1000)).ok
        for i in range(args.repeat):
            walls["in-process"].append(in_process(panel, spec, Path(scratch) / f"inproc{i}"))
            for executor in ("process", "docker"):
                sandbox = runner(panel, executor, Path(scratch) / f"{executor}{i}")
                result = sandbox.run(spec)
                assert result.ok, f"{executor}: {result.status}: {result.message}"
                walls[executor].append(result.timings["wall"])
                if executor == "docker":
                    inside.append(result.timings)
                    steps = sandbox.reward_view.test_rows(sandbox.plan.folds).get_column("timestamp").n_unique()
            time.sleep(START_WAIT_SECONDS / 2)  # the pool's replacement has started and imported by now
            result = warm.run(lightgbm_spec(args.estimators + 1001 + i))
            assert result.ok, f"warm docker: {result.status}: {result.message}"
            walls["docker, warm pool"].append(result.timings["wall"])
            inside_warm.append(result.timings)
        warm.close()
        base = statistics.median(walls["in-process"])
        print(f"\none experiment, median of {args.repeat} (seconds)")
        for mode, values in walls.items():
            median = statistics.median(values)
            extra = median - base
            overhead = "" if mode == "in-process" else f"  overhead {extra:+.2f} s ({extra / base:+.1%})"
            print(f"  {mode:<17} {median:7.2f}{overhead}")
        isolation = statistics.median(walls["docker"]) - statistics.median(walls["process"])
        print(f"  docker over the process executor (the cost of the container itself): {isolation:+.2f} s")
        for label, timings in (("", inside), (" (warm pool)", inside_warm)):
            phases = {key: statistics.median(t[key] for t in timings) for key in ("load", "fit", "predict", "total")}
            print(f"  inside the container{label}: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
        print(f"  {steps} prediction steps: {1000 * phases['predict'] / steps:.2f} ms per step")

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
