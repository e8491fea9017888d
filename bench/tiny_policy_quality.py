"""What the tiny policy writes: the share of completions that parse, compile, and actually fit.

Samples N completions with the TransformersGenerator (half from `v4_example`, half from
`v5_rules`, both rendered for the real daily Binance panel) and checks each one:

- parse:   `parse_spec` reads an ExperimentSpec out of it (no json_parse / schema error);
- compile: both sources pass `ast.parse`;
- fit:     in a child process (one thread, as in the sandbox, killed after a timeout),
           `make_features` runs on ~300 daily bars of BTC and ETH each, `make_model().fit` on
           the first 70% of the bars (label: next bar up) and `predict_proba` on the rest gives
           finite probabilities in [0, 1], one row per bar. A stand-in for the real sandbox,
           which this bench does not depend on. The children are forked from one process that
           imported the libraries once, so a check takes a fraction of a second.

Also prints generation throughput (completion tokens per second) at the configured batch size,
the model families (as the post-mortem reads them) of the completions that parse, and their
estimators (the corpus's nine families: random forest and extra trees are both sklearn/trees).

    .venv/bin/python bench/tiny_policy_quality.py [--policy runs/policy/tiny] [--n 64] [--seed 0] [--constrained]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import polars as pl

from sharpe_rl.classify import classify
from sharpe_rl.config import EvalConfig, PolicyConfig
from sharpe_rl.data.clock import Clock
from sharpe_rl.data.panel import detect_interval, load_panel
from sharpe_rl.policy.generation import Generation, make_generator
from sharpe_rl.policy.prompts import render_prompt
from sharpe_rl.sandbox.contract import SANDBOX_ENV
from sharpe_rl.spec import ExperimentSpec, SpecError, parse_spec

DEFAULT_PANEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_1d.parquet"
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
BARS_PER_SYMBOL = 300
FIT_TIMEOUT_SECONDS = 120

# Runs in a fresh interpreter that imports the libraries once (most of a check's time), then reads
# one spec JSON per line on stdin and answers "ok" or an error class per line on stdout. Each spec
# runs in a forked child, so no spec sees another's state, and a child that hangs is killed.
FIT_SERVER = r"""
import json, os, select, signal, sys, warnings
import numpy as np
import pandas as pd
import lightgbm, sklearn, torch, xgboost  # imported once, before the forks: the reason for the server
from sharpe_rl.sandbox.contract import classify_exception

warnings.filterwarnings("ignore")
bars = pd.read_parquet(sys.argv[1])
timeout = float(sys.argv[2])


def check(spec):
    try:
        features_scope, model_scope = {}, {}
        exec(spec["features"], features_scope)
        exec(spec["model"], model_scope)
        rows = []
        for _, df in bars.groupby("symbol"):
            df = df.set_index("timestamp")[[c for c in df.columns if c not in ("timestamp", "symbol")]]
            X = features_scope["make_features"](df)
            y = (df["close"].shift(-1) > df["close"]).astype(int)
            rows.append((X.iloc[:-1], y.iloc[:-1]))
        X = pd.concat([x for x, _ in rows])
        y = pd.concat([y for _, y in rows])
        train = X.index < np.sort(X.index.unique())[int(0.7 * X.index.nunique())]
        model = model_scope["make_model"]()
        model.fit(X[train], y[train])
        p = np.asarray(model.predict_proba(X[~train]), dtype=float)
        assert p.ndim == 2 and p.shape[0] == (~train).sum(), f"predict_proba gave shape {p.shape}"
        assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all(), "predict_proba gave values outside [0, 1]"
        return "ok"
    except AssertionError:
        return "bad_predictions"
    except Exception as exc:
        return str(classify_exception(exc))


for line in sys.stdin:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        silent = os.open(os.devnull, os.O_WRONLY)  # what the spec's code prints (C libraries too) is not an answer
        os.dup2(silent, 1)
        os.dup2(silent, 2)
        os.write(write_end, check(json.loads(line)).encode())
        os._exit(0)
    os.close(write_end)
    if select.select([read_end], [], [], timeout)[0]:
        outcome = os.read(read_end, 100).decode() or "runtime_error"  # empty: the child died
    else:
        os.kill(pid, signal.SIGKILL)
        outcome = "timeout"
    os.close(read_end)
    os.waitpid(pid, 0)
    print(outcome, flush=True)
"""


class FitChecker:
    """The fit-check server (FIT_SERVER) in a subprocess, with the sandbox's one-thread environment."""

    def __init__(self, bars_path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", FIT_SERVER, str(bars_path), str(FIT_TIMEOUT_SECONDS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ | SANDBOX_ENV,
        )

    def __call__(self, spec: ExperimentSpec) -> str:
        self.process.stdin.write(spec.model_dump_json() + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def bench_prompts(panel_path: Path, n: int) -> list[str]:
    """n prompts, alternating v4_example and v5_rules, rendered for the panel's real schema."""
    panel = load_panel(panel_path)
    columns = [c for c in panel.columns if c not in ("timestamp", "symbol")]
    versions = ("v4_example", "v5_rules")
    interval = detect_interval(panel)
    rendered = {v: render_prompt(v, columns, interval, Clock.of(EvalConfig(), interval), SYMBOLS) for v in versions}
    return [rendered[versions[i % 2]] for i in range(n)]


def fit_check(completion: str, checker: FitChecker) -> str:
    """'ok' or the error class of running the completion's spec on the bars (json_parse/schema/syntax first)."""
    try:
        spec = parse_spec(completion)
    except SpecError as exc:
        return str(exc.error_class)
    try:
        ast.parse(spec.features)
        ast.parse(spec.model)
    except SyntaxError:
        return "syntax"
    return checker(spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default=PolicyConfig().model)
    parser.add_argument("--panel", type=Path, default=DEFAULT_PANEL)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--constrained", action="store_true", help="Use constrained JSON decoding.")
    args = parser.parse_args()

    cfg = PolicyConfig(model=args.policy, device="cpu", constrained_json=args.constrained)
    generator = make_generator(cfg)
    prompts = bench_prompts(args.panel, args.n)
    started = time.perf_counter()
    generations: list[Generation] = generator.generate(prompts, seed=args.seed)
    seconds = time.perf_counter() - started
    tokens = sum(len(g.completion_token_ids) for g in generations)

    bars = (
        pl.read_parquet(args.panel)
        .filter(pl.col("symbol").is_in(SYMBOLS))
        .sort("timestamp")
        .group_by("symbol", maintain_order=True)
        .tail(BARS_PER_SYMBOL)
    )
    outcomes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        bars_path = Path(tmp) / "bars.parquet"
        bars.to_pandas().to_parquet(bars_path)
        checker = FitChecker(bars_path)
        for generation in generations:
            outcomes.append(fit_check(generation.completion, checker))
        checker.close()

    n = len(outcomes)
    parsed = sum(o not in ("json_parse", "schema") for o in outcomes)
    compiled = sum(o not in ("json_parse", "schema", "syntax") for o in outcomes)
    fitted = outcomes.count("ok")
    print(f"policy {args.policy}, {n} completions, seed {args.seed}, constrained_json={args.constrained}")
    rate = tokens / seconds
    print(f"generation: {tokens} tokens in {seconds:.1f} s = {rate:.0f} tokens/s (batch {cfg.generation_batch_size})")
    print(f"parse   {parsed / n:6.1%}  ({parsed}/{n})")
    print(f"compile {compiled / n:6.1%}  ({compiled}/{n})")
    print(f"fit     {fitted / n:6.1%}  ({fitted}/{n})")
    print("outcomes:", json.dumps(dict(Counter(outcomes).most_common())))
    specs = []
    for generation in generations:
        try:
            specs.append(parse_spec(generation.completion))
        except SpecError:
            continue
    classes = [classify(spec).model for spec in specs]
    print("model families:", json.dumps(dict(Counter(c.label for c in classes).most_common())))
    # Finer than the families: the corpus's nine (random forest and extra trees are both sklearn/trees).
    estimators = Counter(c.estimator for c in classes)
    print(f"estimators ({len(estimators)}):", json.dumps(dict(estimators.most_common())))


if __name__ == "__main__":
    main()
