"""One LightGBM experiment on a real panel, in Docker: the whole-panel protocol beside an earlier revision's.

The point-in-time protocol asks the experiment at each decision time. Earlier revisions called the
generated `make_features` once per symbol per bar (145,707 calls on the 20-symbol 4h panel); now
it is one call per decision for the whole panel, and decisions are daily by default for intraday
bars. This bench runs the same LightGBM spec (the same features, written for each contract) on
the same panel and prints, per configuration, the wall time of one experiment (a container started
on the spot, nothing cached), the harness's phases and the decisions asked:

- `earlier`: the revision given by --baseline (default: the last one with the per-symbol protocol),
  at its default (a prediction at every bar), run from a temporary git worktree of this repository
  with its own sandbox image (built from that revision's harness if missing);
- `every bar`: this revision with decisions at every bar (`EvalConfig(decide_every=1)`), the
  earlier cadence: what one call per decision instead of one per symbol saves by itself;
- `default`: this revision's default (daily decisions for intraday bars).

    .venv/bin/python bench/panel_speed.py [--panel PATH] [--years 3] [--baseline REV] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.data.panel import load_panel
from sharpe_rl.evaluation import EvaluationRef, load_evaluation
from sharpe_rl.sandbox.image import ensure_image
from sharpe_rl.sandbox.runner import SandboxRunner
from sharpe_rl.spec import ExperimentSpec

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PANEL = REPO.parent / "shared" / "data" / "binance_spot_4h.parquet"
#: The last revision with the per-symbol protocol.
BASELINE = "bb2f227~1"

FEATURES = """
import numpy as np
import pandas as pd


def make_features(df):
    g = df.groupby(level="symbol")
    out = pd.DataFrame(index=df.index)
    for k in (1, 3, 6, 12, 24):
        out[f"ret_{k}"] = g["close"].pct_change(k)
    out["vol_12"] = g["close"].transform(lambda s: s.pct_change().rolling(12).std())
    out["vol_48"] = g["close"].transform(lambda s: s.pct_change().rolling(48).std())
    out["range"] = (df["high"] - df["low"]) / df["close"]
    out["volume_ratio"] = df["volume"] / g["volume"].transform(lambda s: s.rolling(48).mean())
    return out
"""
#: The same features in the earlier contract (one symbol's bars per call).
EARLIER_FEATURES = """
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
    return lgb.LGBMClassifier(n_estimators=100, learning_rate=0.05, num_leaves=15, verbose=-1)
"""
SANDBOX = {"executor": "docker", "workers": 1, "timeout_seconds": 3600, "memory_mb": 4096, "warm_pool": False}

#: Run inside the earlier revision's checkout (PYTHONPATH): its own runner, one experiment, JSON out.
EARLIER_RUN = """
import json, sys, tempfile, time
import polars as pl
from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.sandbox.runner import SandboxRunner
from sharpe_rl.spec import ExperimentSpec

panel = pl.read_parquet(sys.argv[1])
spec = ExperimentSpec(name="lgbm", features=sys.argv[2], model=sys.argv[3])
with SandboxRunner(panel, EvalConfig(), SandboxConfig(**json.loads(sys.argv[4])), tempfile.mkdtemp()) as runner:
    started = time.perf_counter()
    result = runner.run(spec)
    wall = time.perf_counter() - started
import sharpe_rl
assert sharpe_rl.__file__.startswith(sys.argv[5]), sharpe_rl.__file__  # the earlier revision's code, not this one
print(json.dumps({"status": result.status, "message": result.message, "wall": wall, "timings": result.timings}))
"""


def ours(path: Path, cfg: EvalConfig, scratch: Path) -> dict:
    """One experiment with this revision's runner, and how many decisions it asked."""
    panel = load_panel(path)
    with SandboxRunner(panel, cfg, SandboxConfig(**SANDBOX), scratch) as runner:
        started = time.perf_counter()
        result = runner.run(ExperimentSpec(name="lgbm", features=FEATURES, model=MODEL))
        wall = time.perf_counter() - started
    calls = load_evaluation(EvaluationRef.of(path, cfg, SandboxConfig(**SANDBOX), scratch / "ref")).feature_calls
    return {"status": result.status, "message": result.message, "wall": wall, "timings": result.timings, "calls": calls}


def earlier(path: Path, revision: str, scratch: Path) -> dict:
    """One experiment with the earlier revision's runner, from a temporary worktree of it."""
    tree = scratch / "earlier"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), revision], check=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(tree)}  # in the worktree (cwd first on `-c`'s path): its own code
        subprocess.run([sys.executable, str(tree / "sandbox_image" / "build.py")], env=env, cwd=tree, check=True)
        out = subprocess.run(
            [sys.executable, "-c", EARLIER_RUN, str(path), EARLIER_FEATURES, MODEL, json.dumps(SANDBOX), str(tree)],
            env=env,
            cwd=tree,
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panel", type=Path, default=DEFAULT_PANEL)
    parser.add_argument("--years", type=float, default=3.0, help="keep the last this many years")
    parser.add_argument("--baseline", default=BASELINE, help="the earlier revision to compare with")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    panel = load_panel(args.panel)
    panel = panel.filter(pl.col("timestamp") > pl.col("timestamp").max() - pl.duration(days=round(365 * args.years)))
    ensure_image()
    with tempfile.TemporaryDirectory(prefix="panel-speed-") as scratch_dir:
        scratch = Path(scratch_dir)
        path = scratch / "panel.parquet"
        panel.write_parquet(path)
        symbols = panel.get_column("symbol").n_unique()
        print(f"{args.panel.name}, last {args.years:g} years: {panel.height:,} rows, {symbols} symbols", flush=True)
        runs = {
            "every bar": lambda: ours(path, EvalConfig(decide_every=1), scratch / "every"),
            "default": lambda: ours(path, EvalConfig(), scratch / "default"),
        }
        if not args.skip_baseline:
            runs = {"earlier": lambda: earlier(path, args.baseline, scratch), **runs}
        results = {}
        for name, run in runs.items():
            results[name] = run()
            r = results[name]
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in r["timings"].items())
            calls = f", {r['calls']:,} make_features calls" if "calls" in r else ""
            print(f"{name:>10}: {r['status']}, {r['wall']:.1f} s ({phases}){calls} {r['message'][:200]}", flush=True)
        if "earlier" in results:
            for name in ("every bar", "default"):
                print(f"earlier / {name}: {results['earlier']['wall'] / results[name]['wall']:.1f}x")


if __name__ == "__main__":
    main()
