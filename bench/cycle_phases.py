"""One cycle's wall time by phase, and how a cycle's time grows with the batch size.

Runs real cycles of a policy (the tiny one by default) through the `cycle` flow with the default
thread runner and the Docker executor, one fresh runs directory per batch size (no cached
execution from an earlier measurement), and prints per cycle the time of each phase as the steps
return it (generate, execute, score, log, update), the cycle's wall time around the flow call,
and what remains: Prefect's orchestration, reading the cycle's history and the PPO step's
logging. Tracking (the log phase and the rest) must add under 10% to a cycle. The first cycle of
each batch size also loads the policy and the data and is shown apart from the mean.

    .venv/bin/python bench/cycle_phases.py [--policy runs/policy/tiny] [--data data/sample_daily.parquet]
        [--batch 8 16 32] [--cycles 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from sharpe_rl.config import PolicyConfig, RunConfig, SandboxConfig
from sharpe_rl.services import use_orchestration_environment

PHASES = ("generate", "execute", "score", "log", "update")


def measure(batch: int, cycles: int, args: argparse.Namespace, scratch: Path) -> list[dict[str, float]]:
    from mlflow.tracking import MlflowClient

    from flows.cycle import cycle
    from flows.task_runners import task_runner
    from sharpe_rl import steps
    from sharpe_rl.tracking import default_tracking_uri

    runs = scratch / f"batch-{batch}"
    config = RunConfig(
        name=f"bench-b{batch}",
        cycles=cycles,
        batch_size=batch,
        dataset=args.data,
        runs_dir=runs,
        sandbox=SandboxConfig(workers=args.workers),
        policy=PolicyConfig(model=str(args.policy)),
    )
    run = steps.start(config)
    run_cycle = cycle.with_options(task_runner=task_runner(config.task_runner, config.sandbox.workers))
    policy, walls = run.policy, []
    for index in range(cycles):
        started = time.perf_counter()
        policy = run_cycle(run, policy, index).policy
        walls.append(time.perf_counter() - started)
    steps.finish(run)
    client = MlflowClient(default_tracking_uri(runs))
    history = {phase: client.get_metric_history(run.parent_run_id, f"time_{phase}") for phase in PHASES}
    rows = []
    for index, wall in enumerate(walls):
        row = {phase: next(m.value for m in history[phase] if m.step == index) for phase in PHASES}
        row["wall"] = wall
        row["rest"] = wall - sum(row[phase] for phase in PHASES)
        rows.append(row)
    return rows


def show(batch: int, rows: list[dict[str, float]]) -> None:
    columns = (*PHASES, "rest", "wall")
    print(f"\nbatch {batch}: seconds per phase (rest = Prefect + reading the history + logging the PPO step)")
    print("cycle " + "".join(f"{name:>10}" for name in columns) + "  tracking+orchestration")
    for index, row in enumerate(rows):
        overhead = (row["log"] + row["rest"]) / row["wall"]
        print(f"{index:>5} " + "".join(f"{row[name]:10.2f}" for name in columns) + f"  {100 * overhead:5.1f}%")
    later = rows[1:] or rows
    mean = {name: statistics.fmean(row[name] for row in later) for name in columns}
    overhead = (mean["log"] + mean["rest"]) / mean["wall"]
    label = "mean" if len(rows) > 1 else "only"
    print(f"{label:>5} " + "".join(f"{mean[name]:10.2f}" for name in columns) + f"  {100 * overhead:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=Path("runs/policy/tiny"))
    parser.add_argument("--data", type=Path, default=Path("data/sample_daily.parquet"))
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    args.policy, args.data = args.policy.resolve(), args.data.resolve()

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the figures, not a line per task
    scratch = Path(tempfile.mkdtemp(prefix="sharpe-rl-cycle-phases-"))
    use_orchestration_environment(scratch, own_server=True)
    print(f"policy {args.policy}, data {args.data}, {args.workers} workers, load average {os.getloadavg()}")
    try:
        for batch in args.batch:
            show(batch, measure(batch, args.cycles, args, scratch))
            print(f"load average {os.getloadavg()}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
