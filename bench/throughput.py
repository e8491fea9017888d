"""Experiments per minute through the pipeline's execute step, against what the machine can do at best.

The same batch of distinct honest experiments (several model families, each with its own parameters,
so nothing is cached) goes, after a warm-up (Prefect's temporary server, the workers' imports, the
sandbox warm pool: the state of every cycle of a run but its first), through
`tasks.execute.execute_experiment` on the task runners a run can use: local threads with 1 and with
2 workers, and a two-worker Dask cluster on this machine (a scheduler and two worker processes of
one thread each). Each mode starts from an empty cache. Printed per mode: wall time, experiments per
minute, and the CPU the containers, the Docker engine and this process used.

The machine's limit is its cores divided by the mean CPU seconds one experiment costs (measured in
the serial run: the sandbox containers' CPU from the cgroup `docker` parent, the engine's, and the
host side's). "Cores busy" is throughput over that limit: the target is at least 85%.
Other work on the machine (other containers, other tenants) inflates the CPU counters: the script
reports foreign containers that started meanwhile and the load average.

    .venv/bin/python bench/throughput.py [--data data/sample_daily.parquet] [--experiments 12] [--modes threads-1 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.evaluation import EvaluationRef
from sharpe_rl.services import use_orchestration_environment

FEATURES = """
import numpy as np
import pandas as pd


def make_features(df):
    g = df.groupby(level="symbol")
    out = pd.DataFrame(index=df.index)
    for k in (1, 3, 5, 10):
        out[f"ret_{k}"] = g["close"].pct_change(k)
    out["vol_10"] = g["close"].transform(lambda s: s.pct_change().rolling(10).std())
    out["range"] = (df["high"] - df["low"]) / df["close"]
    out["volume_z"] = np.log1p(df["volume"]).groupby(level="symbol").diff()
    return out
"""
MODELS = [
    ("logistic", "from sklearn.linear_model import LogisticRegression\n\n\ndef make_model():\n"
     "    return LogisticRegression(C={p}, max_iter=500)\n", [0.1, 0.3, 1.0, 3.0]),
    ("forest", "from sklearn.ensemble import RandomForestClassifier\n\n\ndef make_model():\n"
     "    return RandomForestClassifier(n_estimators={p}, max_depth=4, random_state=0)\n", [40, 60, 80, 100]),
    ("lightgbm", "import lightgbm as lgb\n\n\ndef make_model():\n"
     "    return lgb.LGBMClassifier(n_estimators={p}, num_leaves=7, verbose=-1)\n", [50, 100, 150, 200]),
]  # fmt: skip
DOCKER_CGROUP_USAGE = Path("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage")


#: The warm-up's experiments: programs of their own (a parameter no measured experiment uses).
WARM_UP_PARAMS = {"logistic": 0.05, "forest": 30, "lightgbm": 30}


def completions(n: int) -> list[str]:
    """`n` distinct experiments, cycling through the model families and their parameters."""
    out = []
    for i in range(n):
        family, template, params = MODELS[i % len(MODELS)]
        value = params[(i // len(MODELS)) % len(params)]
        out.append(json.dumps({"name": f"{family}_{i}", "features": FEATURES, "model": template.format(p=value)}))
    return out


def warm_up_completions(n: int) -> list[str]:
    """`n` experiments that none of `completions` repeats."""
    out = []
    for i in range(n):
        family, template, _ = MODELS[i % len(MODELS)]
        model = template.format(p=WARM_UP_PARAMS[family])
        out.append(json.dumps({"name": f"warm_up_{family}", "features": FEATURES, "model": model}))
    return out


def cpu_counters() -> dict[str, float]:
    """Seconds of CPU so far: every container of the Docker cgroup, the engine processes, this process."""
    containers = int(DOCKER_CGROUP_USAGE.read_text()) / 1e9 if DOCKER_CGROUP_USAGE.exists() else float("nan")
    engine = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for name in ("dockerd", "containerd"):
        for pid in os.popen(f"pgrep -x {name}").read().split():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            engine += (int(fields[11]) + int(fields[12])) / tick
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {"containers": containers, "engine": engine, "host": own.ru_utime + own.ru_stime}


def foreign_containers(since: float, until: float) -> int:
    """Containers started meanwhile that are not ours (other work on this machine)."""
    import docker

    events = docker.from_env().events(
        since=int(since), until=int(until) + 1, decode=True, filters={"type": "container", "event": "start"}
    )
    return sum(
        not (e.get("Actor", {}).get("Attributes", {}).get("sharpe-rl.run", "")).startswith("bench-") for e in events
    )


def run_mode(mode: str, texts: list[str], warm_up_texts: list[str], data: Path, scratch: Path) -> dict:
    from prefect import flow
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.utilities.annotations import unmapped

    from tasks.execute import execute_experiment

    kind, workers = mode.split("-")
    sandbox = SandboxConfig(executor="docker", workers=int(workers), timeout_seconds=600)
    ref = EvaluationRef.of(data, EvalConfig(), sandbox, scratch / mode / "cache", run_id=f"bench-{mode}")
    cluster = None
    if kind == "dask":
        from distributed import LocalCluster
        from prefect_dask import DaskTaskRunner

        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None)
        runner = DaskTaskRunner(address=cluster.scheduler_address)
    else:
        runner = ThreadPoolTaskRunner(max_workers=int(workers))

    @flow(name=f"throughput-{mode}", task_runner=runner)
    def execute_all(batch: list[str], evaluation: EvaluationRef) -> list[str]:
        futures = execute_experiment.map(batch, unmapped(evaluation))
        return [future.result().status for future in futures]

    try:
        # warm up what a long run pays once: Prefect's server, the workers' imports, the data views and
        # the warm pool (the same ref, so the measured experiments find its sandboxes waiting, as every
        # cycle of a run but its first does), with experiments of their own (nothing measured is cached)
        execute_all(warm_up_texts[: int(workers)], ref)
        before, started = cpu_counters(), time.time()
        statuses = execute_all(texts, ref)
        wall, after = time.time() - started, cpu_counters()
    finally:
        if cluster is not None:
            cluster.close()
    cpu = {key: after[key] - before[key] for key in before}
    return {
        "mode": mode,
        "experiments": len(texts),
        "ok": statuses.count("ok"),
        "wall_s": wall,
        "per_minute": 60 * len(texts) / wall,
        "cpu_s": cpu,
        "foreign_containers": foreign_containers(started, time.time()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/sample_daily.parquet"))
    parser.add_argument("--experiments", type=int, default=12)
    parser.add_argument("--modes", nargs="+", default=["threads-1", "threads-2", "dask-2"])
    args = parser.parse_args()

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the figures, not a line per task
    scratch = Path(tempfile.mkdtemp(prefix="sharpe-rl-throughput-"))
    use_orchestration_environment(scratch, own_server=True)
    from sharpe_rl.sandbox.image import docker_client, ensure_image

    ensure_image(docker_client())
    texts = completions(args.experiments)
    cores = os.cpu_count() or 1
    print(f"{args.experiments} distinct experiments on {args.data}, {cores} cores, load average {os.getloadavg()}")
    results = []
    try:
        for mode in args.modes:
            result = run_mode(mode, texts, warm_up_completions(2), args.data.resolve(), scratch)
            results.append(result)
            cpu = result["cpu_s"]
            print(
                f"{mode:>10}: {result['ok']}/{result['experiments']} ok, {result['wall_s']:6.1f} s, "
                f"{result['per_minute']:5.2f} experiments/min; CPU s: containers {cpu['containers']:.1f}, "
                f"engine {cpu['engine']:.1f}, host {cpu['host']:.1f}; foreign containers: "
                f"{result['foreign_containers']}; load average {os.getloadavg()}",
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    serial = next((r for r in results if r["mode"] == "threads-1"), results[0])
    per_experiment = sum(serial["cpu_s"].values()) / serial["experiments"]
    limit = 60 * cores / per_experiment
    print(
        f"\nmean CPU per experiment ({serial['mode']}): {per_experiment:.2f} s "
        f"(containers {serial['cpu_s']['containers'] / serial['experiments']:.2f} s)"
    )
    print(f"machine limit: {cores} cores / {per_experiment:.2f} s = {limit:.2f} experiments/min")
    for result in results:
        share = 100 * result["per_minute"] / limit
        print(f"{result['mode']:>10}: {result['per_minute']:5.2f} experiments/min = {share:5.1f}% of the limit")


if __name__ == "__main__":
    main()
