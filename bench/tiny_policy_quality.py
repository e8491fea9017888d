"""What the tiny policy writes: the share of completions that parse, compile, and actually fit.

Samples N completions with the TransformersGenerator (half from `v1_example`, half from
`v2_rules`, both rendered for the real daily Binance panel) and checks each one:

- parse:   `parse_spec` reads an ExperimentSpec out of it (no json_parse / schema error);
- compile: both sources pass `ast.parse`;
- fit:     in a fresh subprocess with a timeout, `make_features` runs on ~300 daily bars of BTC
           and ETH each, `make_model().fit` on the first 70% of the bars (label: next bar up) and
           `predict_proba` on the rest gives finite probabilities in [0, 1], one row per bar.
           A stand-in for the real sandbox, which this bench does not depend on.

Also prints generation throughput (completion tokens per second) at the configured batch size,
and the model families (as the post-mortem reads them) of the completions that parse.

    .venv/bin/python bench/tiny_policy_quality.py [--policy runs/policy/tiny] [--n 64] [--seed 0] [--constrained]
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import polars as pl

from sharpe_rl.analysis.classify import classify
from sharpe_rl.config import PolicyConfig
from sharpe_rl.data.panel import detect_interval, load_panel
from sharpe_rl.policy.generation import Generation, make_generator
from sharpe_rl.policy.prompts import render_prompt
from sharpe_rl.spec import SpecError, parse_spec

DEFAULT_PANEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_1d.parquet"
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
BARS_PER_SYMBOL = 300
FIT_TIMEOUT_SECONDS = 120

# Runs in a fresh interpreter: spec JSON on stdin, bars file as argv[1]; prints "ok" or an error class.
FIT_CHECK = r"""
import json, sys, warnings
import numpy as np
import pandas as pd
from sharpe_rl.sandbox.contract import classify_exception

warnings.filterwarnings("ignore")
spec = json.loads(sys.stdin.read())
bars = pd.read_parquet(sys.argv[1])
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
    print("ok")
except AssertionError:
    print("bad_predictions")
except Exception as exc:
    print(classify_exception(exc))
"""


def bench_prompts(panel_path: Path, n: int) -> list[str]:
    """n prompts, alternating v1_example and v2_rules, rendered for the panel's real schema."""
    panel = load_panel(panel_path)
    columns = [c for c in panel.columns if c not in ("timestamp", "symbol")]
    versions = ("v1_example", "v2_rules")
    rendered = {v: render_prompt(v, columns, detect_interval(panel), 1, SYMBOLS) for v in versions}
    return [rendered[versions[i % 2]] for i in range(n)]


def fit_check(completion: str, bars_path: Path) -> str:
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
    try:
        done = subprocess.run(
            [sys.executable, "-c", FIT_CHECK, str(bars_path)],
            input=spec.model_dump_json(),
            capture_output=True,
            text=True,
            timeout=FIT_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else "runtime_error"


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
        for generation in generations:
            outcomes.append(fit_check(generation.completion, bars_path))

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
    families = Counter(classify(spec).model_family for spec in specs)
    print("model families:", json.dumps(dict(families.most_common())))


if __name__ == "__main__":
    main()
