"""The post-mortem tables and report, checked against numbers recomputed by hand from a known run.

The synthetic run below is 3 cycles × 6 experiments whose true model family, features, outcome
and metrics are written down per row. Every expected number is recomputed here in plain Python
from those true labels (not from the classifier), then compared with the polars tables.
"""

import base64
import json
import math
import re
import statistics
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from rich.console import Console

from sharpe_rl.analysis.report import build_report, print_report, select_run
from sharpe_rl.analysis.tables import STATUSES, analyse, annotate
from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.experience import Experience
from sharpe_rl.facts import RunFacts, save_facts
from sharpe_rl.grid import FEATURE_BLOCKS
from sharpe_rl.noskill import NoSkillBand
from sharpe_rl.sandbox.contract import ErrorClass
from sharpe_rl.selection import Agreement, Selection
from sharpe_rl.spec import ExperimentSpec

MODELS = {
    "lightgbm": "import lightgbm as lgb\n\ndef make_model():\n    return lgb.LGBMClassifier(verbose=-1)\n",
    "xgboost": "from xgboost import XGBClassifier\n\ndef make_model():\n    return XGBClassifier(max_depth=3)\n",
    "sklearn/trees": (
        "from sklearn.ensemble import RandomForestClassifier\n\n"
        "def make_model():\n    return RandomForestClassifier(n_estimators=100)\n"
    ),
    "sklearn/linear": (
        "from sklearn.linear_model import LogisticRegression\nfrom sklearn.pipeline import make_pipeline\n"
        "from sklearn.preprocessing import StandardScaler\n\n"
        "def make_model():\n    return make_pipeline(StandardScaler(), LogisticRegression())\n"
    ),
    "torch": "import torch.nn as nn\n\ndef make_model():\n    return nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())\n",
    "unknown": "import lightgbm as lgb\n\ndef make_model(:\n    return lgb.LGBMClassifier()\n",
}
FEATURES = {  # name -> (source, custom, building blocks)
    "template": (
        "def make_features(df):\n"
        "    out = df[[]].copy()\n"
        "    out['ret'] = df['close'].pct_change()\n"
        "    out['vol'] = out['ret'].rolling(10).std()\n"
        "    out['ma'] = df['close'] / df['close'].rolling(20).mean()\n"
        "    return out\n",
        False,
        ("returns", "volatility", "trend"),
    ),
    "rsi": (
        "def make_features(df):\n"
        "    delta = df['close'].diff()\n"
        "    up = delta.clip(lower=0).rolling(14).mean()\n"
        "    down = (-delta.clip(upper=0)).rolling(14).mean()\n"
        "    return (100 - 100 / (1 + up / down)).to_frame('rsi')\n",
        True,
        ("oscillators",),
    ),
    "missing_column": ("def make_features(df):\n    return df[['vwap']].pct_change()\n", False, ("returns",)),
    "next_bar": (
        "def make_features(df):\n    out = df[[]].copy()\n    out['fwd'] = df['close'].shift(-1) / df['close']\n"
        "    return out\n",
        False,
        ("returns",),
    ),
}
# cycle, index, family (None: no spec), features, error class, reward, sharpe, dsr, holdout sharpe
ROWS = [
    (0, 0, "lightgbm", "template", None, 0.2, 0.6, 0.4, 0.1),
    (0, 1, "lightgbm", "template", None, 0.2, 0.6, 0.4, 0.1),  # same code as (0, 0)
    (0, 2, "lightgbm", "missing_column", "missing_column", -1.25, None, None, None),
    (0, 3, None, None, "json_parse", -1.5, None, None, None),
    (0, 4, "xgboost", "rsi", None, 0.5, 1.5, 0.7, None),  # holdout not measured
    (0, 5, "unknown", "template", "syntax", -1.5, None, None, None),
    (1, 0, "lightgbm", "template", None, 0.2, 0.6, 0.4, 0.1),  # repeats cycle 0's code
    (1, 1, "sklearn/trees", "rsi", None, 0.8, 2.4, 0.9, -0.3),
    (1, 2, "sklearn/linear", "template", "type_error", -1.25, None, None, None),
    (1, 3, "xgboost", "template", None, -0.1, -0.3, 0.1, -0.5),
    (1, 4, None, None, "json_parse", -1.5, None, None, None),
    (1, 5, None, None, "schema", -1.5, None, None, None),
    (2, 0, "sklearn/trees", "rsi", None, 0.8, 2.4, 0.9, -0.3),  # repeats (1, 1)
    (2, 1, "sklearn/linear", "rsi", None, 0.3, 0.9, 0.5, 0.8),
    (2, 2, "torch", "template", "timeout", -1.25, None, None, None),
    (2, 3, "lightgbm", "rsi", None, 0.6, 1.8, 0.8, 1.2),
    (2, 4, "sklearn/linear", "next_bar", "bad_predictions", -1.25, None, None, None),
    (2, 5, "torch", "rsi", None, 0.1, 0.3, 0.2, None),
]
ODD_NAME = "rsi <b>bold</b> | piped"  # untrusted text: must not break Markdown tables or HTML


def _spec(family: str, features: str, name: str) -> ExperimentSpec:
    return ExperimentSpec(name=name, features=FEATURES[features][0], model=MODELS[family])


def make_frame(run: str = "r1", rows: list[tuple] = ROWS, start: datetime | None = None) -> pl.DataFrame:
    """A buffer frame (the columns ReplayBuffer.frame() yields) for `rows`."""
    start = start or datetime(2025, 1, 1, tzinfo=UTC)
    records = []
    for cycle, index, family, features, error, reward, sharpe, dsr, holdout in rows:
        name = ODD_NAME if (cycle, index) == (2, 1) else f"exp-{cycle}-{index}"
        spec = _spec(family, features, name) if family else None
        records.append(
            {
                "run": run,
                "cycle": cycle,
                "index": index,
                "prompt_version": "v4_example",
                "spec_json": spec.model_dump_json() if spec else None,
                "name": spec.name if spec else None,
                "model_family": "stale value the report must not trust",
                "error_class": error,
                "reward": reward,
                "code_hash": spec.code_hash if spec else None,
                "metric_sharpe_net": sharpe,
                "metric_dsr": dsr,
                "metric_holdout_sharpe_net": holdout,
                "created_at": start + timedelta(minutes=cycle * 10 + index),
            }
        )
    return pl.DataFrame(records)


def _by(frame: pl.DataFrame, key: str, value: str) -> dict:
    return {row[key]: row[value] for row in frame.to_dicts()}


@pytest.fixture(scope="module")
def analysis():
    return analyse(make_frame())


def test_family_usage_is_share_of_parsed(analysis):
    parsed = [r for r in ROWS if r[2] is not None]
    expected = {family: 100 * n / len(parsed) for family, n in Counter(r[2] for r in parsed).items()}
    assert _by(analysis.family_usage, "model_family", "pct") == pytest.approx(expected)
    assert expected["lightgbm"] == pytest.approx(100 * 5 / 15)
    assert analysis.family_usage["model_family"][0] == "lightgbm"  # most used first


def test_family_table_says_what_the_reward_paid_each_family_among_what_ran(analysis):
    """What an update with family credit learns from: each family's mean reward over its experiments that ran,
    failures not counted (they keep their own rung of the penalty ladder)."""
    by_family = {row["model_family"]: row for row in analysis.family_usage.to_dicts()}
    assert by_family["lightgbm"]["ran"] == 4  # 5 parsed, one missing_column
    assert by_family["lightgbm"]["reward_mean"] == pytest.approx((0.2 + 0.2 + 0.2 + 0.6) / 4)
    assert by_family["lightgbm"]["sharpe_mean"] == pytest.approx((0.6 + 0.6 + 0.6 + 1.8) / 4)
    assert by_family["sklearn/linear"]["ran"] == 1
    assert by_family["sklearn/linear"]["reward_mean"] == pytest.approx(0.3)
    assert by_family["unknown"]["ran"] == 0
    assert by_family["unknown"]["reward_mean"] is None


def test_family_share_per_cycle(analysis):
    for cycle in range(3):
        parsed = [r for r in ROWS if r[0] == cycle and r[2] is not None]
        expected = {family: 100 * n / len(parsed) for family, n in Counter(r[2] for r in parsed).items()}
        table = analysis.family_share_by_cycle.filter(pl.col("cycle") == cycle)
        assert _by(table, "model_family", "pct") == pytest.approx(expected)


def test_custom_feature_share_and_blocks(analysis):
    parsed = [r for r in ROWS if r[2] is not None]
    custom = sum(FEATURES[r[3]][1] for r in parsed)
    usage = _by(analysis.feature_usage, "feature", "pct")
    assert usage["custom"] == pytest.approx(100 * custom / len(parsed))
    for block in FEATURE_BLOCKS:
        using = sum(block in FEATURES[r[3]][2] for r in parsed)
        assert usage[block] == pytest.approx(100 * using / len(parsed)), block
    assert usage["oscillators"] == pytest.approx(100 * 6 / 15)
    for cycle in range(3):
        rows = [r for r in ROWS if r[0] == cycle and r[2] is not None]
        row = analysis.cycles.filter(pl.col("cycle") == cycle).to_dicts()[0]
        assert row["custom_pct"] == pytest.approx(100 * sum(FEATURES[r[3]][1] for r in rows) / len(rows))


def test_failure_taxonomy_is_share_of_all_with_every_class(analysis):
    counts = Counter(r[4] or "ok" for r in ROWS)
    table = analysis.failure_taxonomy
    assert table["status"].to_list() == list(STATUSES)
    assert set(STATUSES) == {"ok", *(e.value for e in ErrorClass)}
    assert _by(table, "status", "pct") == pytest.approx({s: 100 * counts[s] / len(ROWS) for s in STATUSES})
    assert _by(table, "status", "experiments")["json_parse"] == 2
    assert table["pct"].sum() == pytest.approx(100)


def test_failures_per_cycle(analysis):
    for cycle in range(3):
        rows = [r for r in ROWS if r[0] == cycle]
        counts = Counter(r[4] or "ok" for r in rows)
        table = analysis.failures_by_cycle.filter(pl.col("cycle") == cycle)
        expected = {s: 100 * counts[s] / len(rows) for s in set(table["status"])}
        assert _by(table, "status", "pct") == pytest.approx(expected)
        assert set(counts) <= set(table["status"])


def _spread(values: list[float]) -> dict[str, float | None]:
    return {
        "mean": statistics.mean(values),
        "median": statistics.median(values),
        "q25": float(np.percentile(values, 25)),
        "q75": float(np.percentile(values, 75)),
        "max": max(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def test_reward_and_sharpe_over_cycles(analysis):
    for cycle in range(3):
        rows = [r for r in ROWS if r[0] == cycle]
        row = analysis.cycles.filter(pl.col("cycle") == cycle).to_dicts()[0]
        rewards = _spread([r[5] for r in rows])
        sharpes = _spread([r[6] for r in rows if r[4] is None])
        for stat in rewards:
            assert row[f"reward_{stat}"] == pytest.approx(rewards[stat]), (cycle, stat)
            assert row[f"sharpe_{stat}"] == pytest.approx(sharpes[stat]), (cycle, stat)
        assert row["ok_pct"] == pytest.approx(100 * sum(r[4] is None for r in rows) / len(rows))
        assert row["parsed_pct"] == pytest.approx(100 * sum(r[2] is not None for r in rows) / len(rows))


def test_family_entropy_over_cycles(analysis):
    for cycle in range(3):
        counts = Counter(r[2] for r in ROWS if r[0] == cycle and r[2] not in (None, "unknown"))
        total = sum(counts.values())
        expected = sum(n / total * math.log2(total / n) for n in counts.values())
        row = analysis.cycles.filter(pl.col("cycle") == cycle).to_dicts()[0]
        assert row["entropy_bits"] == pytest.approx(expected)
    first = analysis.cycles.filter(pl.col("cycle") == 0)["entropy_bits"].item()
    assert first == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))  # 3 lightgbm, 1 xgboost


def test_duplicates_per_cycle(analysis):
    first_seen: dict[str, int] = {}
    for cycle in range(3):
        hashes = [
            _spec(r[2], r[3], "any").code_hash for r in ROWS if r[0] == cycle and r[2] is not None
        ]  # the name does not enter the code hash
        seen_before = sum(first_seen.get(h, cycle) < cycle for h in hashes)
        for h in hashes:
            first_seen.setdefault(h, cycle)
        row = analysis.cycles.filter(pl.col("cycle") == cycle).to_dicts()[0]
        assert (row["duplicates"], row["seen_before"]) == (len(hashes) - len(set(hashes)), seen_before)
    assert analysis.cycles["duplicates"].to_list() == [1, 0, 0]
    assert analysis.cycles["seen_before"].to_list() == [0, 1, 1]


def test_top_experiments_side_by_side_and_distinct(analysis):
    scored, seen = [], set()
    for r in ROWS:
        code = _spec(r[2], r[3], "any").code_hash if r[2] else None
        if r[4] is None and code not in seen:
            seen.add(code)
            copies = sum(1 for s in ROWS if s[4] is None and s[2] == r[2] and s[3] == r[3])
            scored.append((r, copies))
    scored.sort(key=lambda item: (-item[0][6], -item[0][5], item[0][0], item[0][1]))
    table = analysis.top_experiments.to_dicts()
    assert [(t["cycle"], t["index"]) for t in table] == [(r[0], r[1]) for r, _ in scored]
    assert [(t["sharpe"], t["dsr"], t["holdout_sharpe"]) for t in table] == [(r[6], r[7], r[8]) for r, _ in scored]
    assert [t["copies"] for t in table] == [c for _, c in scored]
    assert table[0]["model_family"] == "sklearn/trees" and table[0]["copies"] == 2
    assert analyse(make_frame(), top_n=2).top_experiments.height == 2


def test_headline(analysis):
    h = analysis.headline
    assert (h["cycles"], h["experiments"]) == (3, 18)
    assert h["ok_pct"] == pytest.approx(100 * 10 / 18)
    assert h["parsed_pct"] == pytest.approx(100 * 15 / 18)
    assert h["top_family"] == "lightgbm (33.3%)"
    assert h["top_failure"] == "json_parse (11.1%)"
    assert h["reward_mean_first"] == pytest.approx(statistics.mean(r[5] for r in ROWS if r[0] == 0))
    assert h["best_sharpe"] == 2.4
    holdouts = [0.1, -0.3, 0.8, 1.2, -0.5]  # of the top experiments that have one
    assert h["top_holdout_mean"] == pytest.approx(statistics.mean(holdouts))
    assert h["duplicate_pct"] == pytest.approx(100 * 3 / 15)  # (0,1), (1,0) and (2,0) repeat earlier code


def test_report_files_tables_and_missing_holdout(tmp_path):
    report = build_report(make_frame(), tmp_path)
    assert report.markdown_path.read_text() == report.markdown
    assert report.html_path.read_text() == report.html
    for name in ("reward", "families", "failures", "holdout"):
        assert report.plots[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{name}.png" in report.markdown
    top = report.tables["top_experiments"]
    xgb = next(row for row in top if (row["cycle"], row["index"]) == (0, 4))
    assert xgb["holdout_sharpe"] is None
    assert "| 1.500 | 0.700 | — |" in report.markdown
    assert {"headline", "family_usage", "feature_usage", "failure_taxonomy", "cycles"} <= report.tables.keys()
    assert "rsi <b>bold</b> \\| piped" in report.markdown
    assert "<b>bold</b>" not in report.html and "&lt;b&gt;bold&lt;/b&gt;" in report.html


def test_the_report_says_whether_the_reward_is_worth_learning_from(tmp_path):
    band = NoSkillBand(
        lo=-1.2,
        hi=0.9,
        sigma=0.55,
        mean_by_speed={"every 1 decision": -0.2},
        static=-0.5,
        n_bars=700,
        n_symbols=3,
        draws=200,
    )
    day = datetime(2019, 6, 1, tzinfo=UTC)
    facts = RunFacts(
        noskill=band,
        knowledge="knowledge cutoff 2023-09-27",
        cutoff=date(2023, 9, 27),
        memory=True,
        reward_start=day,
        reward_end=day,
        holdout_start=day,
        holdout_end=day,
        symbols_named=False,
        clock="daily decisions (at the close of the bar that ends each period, UTC); label over 1 day",
        selection=Selection(agreement=Agreement(rho=0.05, lo=-0.3, hi=0.4, n=20), pbo=0.61, pbo_experiments=90),
    )
    save_facts(tmp_path / "runs", "r1", facts)
    report = build_report(make_frame(), tmp_path / "report", run="r1", runs_dir=tmp_path / "runs")
    assert "Reward–holdout agreement (Spearman): +0.05 [-0.30, +0.40] over 20 experiments: not distinguishable" in (
        report.markdown
    )
    assert "no-skill band: a random ranking scores between -1.20 and +0.90 (95%)" in report.markdown
    assert "the data has nothing after the policy's knowledge cutoff 2023-09-27" in report.markdown
    assert "0.61 (over 90 distinct experiments" in report.markdown
    assert "| decisions | daily decisions (at the close of the bar that ends each period, UTC)" in report.markdown
    top = report.tables["top_experiments"]
    row = next(r for r in top if r["holdout_sharpe"] is not None)
    assert row["decay"] == pytest.approx(row["holdout_sharpe"] - row["sharpe"], abs=1e-3)
    assert row["evidence"] == pytest.approx(row["sharpe"] / 0.55, abs=1e-3)


def test_markdown_with_embedded_plots_carries_every_plot_as_a_data_uri(tmp_path):
    report = build_report(make_frame(), tmp_path)
    embedded = report.markdown_with_embedded_plots()
    images = re.findall(r"!\[[^\]]*\]\(([^)]*)\)", embedded)
    assert len(images) == len(report.plots) == 6
    assert sorted(base64.b64decode(src.split(",", 1)[1]) for src in images) == sorted(
        path.read_bytes() for path in report.plots.values()
    )
    assert all(src.startswith("data:image/png;base64,") for src in images)
    without_images = re.sub(r"\(plots/[a-z]+\.png\)", "", report.markdown)
    assert re.sub(r"\(data:image/png;base64,[^)]*\)", "", embedded) == without_images  # nothing else changed


def test_the_html_report_stands_alone_with_its_plots_inside_and_its_texts_rendered(tmp_path):
    # MLflow's artifact view shows report.html without the plots/ folder beside it, and its texts are Markdown.
    report = build_report(make_frame(), tmp_path)
    sources = re.findall(r'<img src="([^"]*)"', report.html)
    assert len(sources) == len(report.plots) == 6
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert sorted(base64.b64decode(src.split(",", 1)[1]) for src in sources) == sorted(
        path.read_bytes() for path in report.plots.values()
    )
    paragraphs = re.findall(r"<p>(.*?)</p>", report.html, flags=re.DOTALL)
    assert paragraphs and not any("`" in text or "*" in text for text in paragraphs)  # no raw Markdown
    assert "<p>Run <code>r1</code>. " in report.html
    assert "<em>custom</em>: uses a kind of feature" in report.html


def test_the_report_counts_executions_that_came_from_the_cache(tmp_path):
    statics = {"json_parse", "schema", "syntax"}  # never executed: nothing to take from a cache
    cached = [None if row[4] in statics else row[0] == 1 for row in ROWS]  # cycle 1 ran entirely from the cache
    frame = make_frame().with_columns(cached=pl.Series(cached, dtype=pl.Boolean))
    report = build_report(frame, tmp_path)
    cycles = {row["cycle"]: row["cached"] for row in report.tables["cycles"]}
    assert cycles == {0: 0, 1: 4, 2: 0}
    headline = {row["metric"]: row["value"] for row in report.tables["headline"]}
    executed = sum(c is not None for c in cached)
    assert headline["executions whose result came from the cache"] == f"{100 * 4 / executed:.1f}%"
    assert "| from the cache |" in report.markdown
    # a buffer from before the cache was recorded shows no count rather than a wrong zero
    old = build_report(make_frame(), tmp_path / "old")
    assert {row["cached"] for row in old.tables["cycles"]} == {None}


def test_a_one_cycle_run_gets_one_integer_cycle_tick():
    from matplotlib.figure import Figure

    from sharpe_rl.analysis.plots import _label

    axes = Figure().subplots()
    axes.bar([0], [1.0], width=0.85)  # as the per-cycle bar plots draw one cycle
    _label(axes, "one cycle", "cycle")
    low, high = axes.get_xlim()
    assert [tick for tick in axes.get_xticks() if low <= tick <= high] == [0.0]


def test_report_compares_two_runs(tmp_path):
    v2_rows = [
        (0, 0, "sklearn/trees", "rsi", None, 0.4, 1.2, 0.6, 0.2),
        (0, 1, "torch", "rsi", None, 0.1, 0.3, 0.3, None),
        (1, 0, "xgboost", "rsi", "value_error", -1.25, None, None, None),
    ]
    report = build_report(make_frame("v1"), tmp_path, compare_frame=make_frame("v2", v2_rows))
    assert report.compare_run == "v2"
    assert "## Comparison" in report.markdown
    headline = {row["metric"]: (row["a"], row["b"]) for row in report.tables["compare_headline"]}
    assert headline["experiments"] == ("18", "3")
    families = {row["model_family"]: (row["a"], row["b"]) for row in report.tables["compare_families"]}
    rounded = {"abs": 1e-4}  # table artifact rows carry 4 decimals
    assert families["lightgbm"] == (pytest.approx(100 * 5 / 15, **rounded), 0.0)
    assert families["torch"] == (pytest.approx(100 * 2 / 15, **rounded), pytest.approx(100 / 3, **rounded))
    outcomes = {row["status"] for row in report.tables["compare_failures"]}
    assert "value_error" in outcomes and "out_of_memory" not in outcomes


def test_select_run_picks_the_latest_or_the_named_run():
    both = pl.concat(
        [make_frame("old"), make_frame("new", start=datetime(2025, 2, 1, tzinfo=UTC))], how="vertical_relaxed"
    )
    assert select_run(both)["run"].unique().to_list() == ["new"]
    assert select_run(both, "old")["run"].unique().to_list() == ["old"]
    with pytest.raises(ValueError, match="runs: new, old"):
        select_run(both, "missing")
    with pytest.raises(ValueError, match="empty"):
        select_run(both.clear())


def test_print_report_shows_the_key_tables(tmp_path):
    report = build_report(make_frame(), tmp_path)
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    for expected in ("Headline", "Model families", "Failure taxonomy", "Top experiments", "lightgbm", "33.3%"):
        assert expected in text


def test_a_run_where_nothing_parsed_still_reports(tmp_path):
    rows = [(c, i, None, None, "json_parse", -1.5, None, None, None) for c in range(2) for i in range(3)]
    report = build_report(make_frame("broken", rows), tmp_path)
    assert report.tables["family_usage"] == []
    assert report.tables["top_experiments"] == []
    failures = {row["status"]: row["pct"] for row in report.tables["failure_taxonomy"]}
    assert failures["json_parse"] == 100.0


def test_missing_required_column_says_what_to_pass():
    with pytest.raises(ValueError, match=r"\['code_hash'\].*ReplayBuffer.frame"):
        annotate(make_frame().drop("code_hash"))


def write_run(buffer: ReplayBuffer, run: str, rows: list[tuple], day: int) -> None:
    """Store `rows` as Experiences, the way the pipeline does (holdout metrics are not in the buffer)."""
    cycles: dict[int, list[Experience]] = {}
    for cycle, index, family, features, error, reward, sharpe, dsr, _ in rows:
        spec = (
            _spec(family, features, ODD_NAME if (cycle, index) == (2, 1) else f"exp-{cycle}-{index}")
            if family
            else None
        )
        cycles.setdefault(cycle, []).append(
            Experience(
                run=run,
                cycle=cycle,
                index=index,
                prompt_version="v4_example",
                prompt="prompt",
                completion=spec.model_dump_json() if spec else "not json",
                prompt_token_ids=[1],
                completion_token_ids=[2],
                logprobs=[-0.1],
                spec_json=spec.model_dump_json() if spec else None,
                name=spec.name if spec else None,
                error_class=error,
                metrics={"sharpe_net": sharpe, "dsr": dsr} if sharpe is not None else {},
                reward=reward,
                code_hash=spec.code_hash if spec else None,
                created_at=datetime(2025, 1, day, tzinfo=UTC) + timedelta(minutes=cycle * 10 + index),
            )
        )
    for cycle, experiences in cycles.items():
        buffer.write(run, cycle, experiences)


def test_reads_the_replay_buffer_frame(tmp_path, analysis):
    """The column contract holds for the real buffer: the same run stored there gives the same tables."""
    buffer = ReplayBuffer(tmp_path)
    write_run(buffer, "r1", ROWS, day=1)
    stored = analyse(buffer.frame("r1"))
    for table in ("family_usage", "feature_usage", "failure_taxonomy", "failures_by_cycle", "cycles"):
        assert_frame_equal(getattr(stored, table), getattr(analysis, table))
    expected = analysis.top_experiments.with_columns(pl.lit(None, dtype=pl.Float64).alias("holdout_sharpe"))
    assert_frame_equal(stored.top_experiments, expected)  # holdout metrics live outside the buffer


@pytest.mark.slow  # the command loads the run session's modules (transformers)
def test_report_command(tmp_path):
    from typer.testing import CliRunner

    from cli.app import app

    buffer = ReplayBuffer(tmp_path)
    write_run(buffer, "first", ROWS, day=1)
    write_run(buffer, "second", ROWS[:9], day=2)
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--runs-dir", str(tmp_path), "--compare", "first"])
    assert result.exit_code == 0, result.output
    assert "post-mortem of second vs first" in result.output
    assert (tmp_path / "reports" / "second-vs-first" / "report.html").is_file()
    result = runner.invoke(app, ["report", "missing", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "runs: first, second" in result.output


def comparison_document(low: float, high: float) -> dict:
    rows = [
        {"window": "holdout", "statistic": "mean_sharpe", "base": 0.1, "final": 0.1 + (low + high) / 2,
         "difference": (low + high) / 2, "low": low, "high": high},
        {"window": "holdout", "statistic": "run_share", "base": 0.9, "final": 0.92, "difference": 0.02, "low": -0.03,
         "high": 0.07},
    ]  # fmt: skip
    return {"run": "r1", "checkpoint_cycle": 23, "n": 64, "seed": 99, "comparison": rows}


@pytest.mark.parametrize(
    ("low", "high", "words"),
    [
        (0.05, 0.4, "is better than its base on the holdout: mean net Sharpe +0.23 [+0.05, +0.40] over 64"),
        (-0.2, 0.3, "is not distinguishable from its base on the holdout: mean net Sharpe +0.05 [-0.20, +0.30]"),
        (-0.5, -0.1, "is worse than its base on the holdout"),
    ],
)
def test_the_headline_says_whether_the_trained_policy_beats_its_base_on_the_holdout(tmp_path, low, high, words):
    runs = tmp_path / "runs"
    (runs / "evaluations").mkdir(parents=True)
    (runs / "evaluations" / "r1.json").write_text(json.dumps(comparison_document(low, high)))
    report = build_report(make_frame(), tmp_path / "report", run="r1", runs_dir=runs)
    headline = report.sections[0].text
    assert f"The trained policy (cycle 23) {words}" in headline and "run share +2.0% [-3.0%, +7.0%]" in headline
    too_few = "A sample of 64 sees a true gain of 0.36 or more 4 times in 5; one of +0.05 would take about 3,270"
    assert (too_few in headline) == (low < 0 < high)  # what "not distinguishable" can and cannot mean
    console = Console(record=True, width=400)
    print_report(report, console)  # `sharpe-rl report` says it too, not only the Markdown and HTML
    assert f"The trained policy (cycle 23) {words}" in console.export_text()


def test_a_headline_without_a_gain_to_see_says_only_how_large_a_gain_the_sample_sees(tmp_path):
    runs = tmp_path / "runs"
    (runs / "evaluations").mkdir(parents=True)
    (runs / "evaluations" / "r1.json").write_text(json.dumps(comparison_document(-0.4, 0.2)))  # observed -0.10
    headline = build_report(make_frame(), tmp_path / "report", run="r1", runs_dir=runs).sections[0].text
    assert "A sample of 64 sees a true gain of 0.43 or more 4 times in 5 (`sharpe-rl evaluate-policy --n`)." in headline


def test_the_headline_says_when_the_trained_policy_was_not_compared_yet(tmp_path):
    report = build_report(make_frame(), tmp_path / "report", run="r1", runs_dir=tmp_path / "runs")
    assert "not measured yet (`sharpe-rl evaluate-policy r1`)" in report.sections[0].text


def evaluated_completion(model: str, window: int) -> str:
    features = (
        "def make_features(df):\n    out = df[[]].copy()\n"
        f"    out['vol'] = df['close'].pct_change().rolling({window}).std()\n    return out\n"
    )
    return json.dumps({"name": "e", "features": features, "model": model})


def test_the_post_mortem_shows_what_training_changed_in_what_the_policy_writes(tmp_path):
    """evaluate-policy's sample, base beside trained: outcomes, families, features, windows, settings, turnover."""
    lightgbm = "import lightgbm as lgb\n\ndef make_model():\n    return lgb.LGBMClassifier(n_estimators=100)\n"
    xgboost = "from xgboost import XGBClassifier\n\ndef make_model():\n    return XGBClassifier(max_depth=3)\n"
    rows = []
    for index in range(8):  # base: 8 lightgbm on 10-bar windows, all ran
        rows.append({"policy": "base", "index": index, "completion": evaluated_completion(lightgbm, 10),
                     "status": "ok", "family": "lightgbm", "reward_turnover": 0.4})  # fmt: skip
    for index in range(8):  # trained: 6 xgboost on 30-bar windows ran, 2 failed with a syntax error
        ran = index < 6
        rows.append({"policy": "final", "index": index, "status": "ok" if ran else "syntax",
                     "completion": evaluated_completion(xgboost, 30) if ran else "{not json",
                     "family": "xgboost" if ran else None, "reward_turnover": 0.1 if ran else None})  # fmt: skip
    runs = tmp_path / "runs"
    (runs / "evaluations").mkdir(parents=True)
    (runs / "evaluations" / "r1.json").write_text(json.dumps(comparison_document(-0.2, 0.3)))
    pl.DataFrame(rows).write_parquet(runs / "evaluations" / "r1.parquet")
    report = build_report(make_frame(), tmp_path / "report", run="r1", runs_dir=runs)

    shares = {(r["aspect"], r["value"]): (r["base"], r["trained"]) for r in report.tables["policy_shares"]}
    assert shares[("outcome", "ok")] == (100.0, 75.0) and shares[("outcome", "syntax")] == (0.0, 25.0)
    assert shares[("model family", "lightgbm")] == (100.0, 0.0)  # of those that ran
    assert shares[("model family", "xgboost")] == (0.0, 100.0)
    assert shares[("feature block", "volatility")] == (100.0, 100.0)
    numbers = {(r["aspect"], r["value"]): (r["base"], r["trained"]) for r in report.tables["policy_numbers"]}
    assert numbers[("turnover", "mean, reward window")] == (0.4, 0.1)
    assert numbers[("feature window", "median (bars)")] == (10.0, 30.0)
    assert numbers[("model setting", "n_estimators (median)")] == (100.0, None)
    assert numbers[("model setting", "max_depth (median)")] == (None, 3.0)
    section = next(s for s in report.sections if s.title == "What did training change in what the policy writes?")
    assert "(cycle 23)" in section.text and "What did training change" in report.markdown


def test_without_evaluate_policy_s_sample_the_post_mortem_has_no_base_beside_trained(tmp_path):
    runs = tmp_path / "runs"
    (runs / "evaluations").mkdir(parents=True)
    (runs / "evaluations" / "r1.json").write_text(json.dumps(comparison_document(-0.2, 0.3)))
    report = build_report(make_frame(), tmp_path / "report", run="r1", runs_dir=runs)
    assert "policy_shares" not in report.tables and "What did training change" not in report.markdown
