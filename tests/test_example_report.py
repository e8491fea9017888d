"""The committed example post-mortem (docs/example-run) is what the code makes of the committed buffer,
and its tables say what the buffer says, recomputed here without the report code."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from sharpe_rl.analysis.report import build_report
from sharpe_rl.classify import classify_spec_json
from sharpe_rl.holdout import report_frame

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "example-run"
RUN = "example"


@pytest.fixture(scope="module")
def committed() -> str:
    return (EXAMPLE / "report" / "report.md").read_text()


@pytest.fixture(scope="module")
def buffer() -> pl.DataFrame:
    return report_frame(EXAMPLE / "runs", RUN)


def table(markdown: str, title: str) -> list[dict[str, str]]:
    """The rows of the markdown table under `**title**`."""
    block = markdown.split(f"**{title}**", 1)[1].strip().split("\n\n", 1)[0].splitlines()
    header = [cell.strip() for cell in block[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in block[2:]]


def test_the_committed_report_is_what_the_code_makes_of_the_committed_buffer(committed, buffer, tmp_path):
    rebuilt = build_report(buffer, tmp_path, run=RUN)
    assert rebuilt.markdown == committed, (
        "regenerate: sharpe-rl report example --runs-dir docs/example-run/runs --out docs/example-run/report"
    )
    assert {p.name for p in (EXAMPLE / "report" / "plots").glob("*.png")} == {p.name for p in rebuilt.plots.values()}


def test_failure_table_matches_the_buffer(committed, buffer):
    outcomes = Counter(buffer["error_class"].fill_null("ok").to_list())
    for row in table(committed, "Failure taxonomy"):
        assert int(row["experiments"]) == outcomes.get(row["outcome"], 0), row
        assert float(row["share"].rstrip("%")) == pytest.approx(
            100 * outcomes.get(row["outcome"], 0) / len(buffer), abs=0.05
        )


def test_model_family_table_matches_the_specs(committed, buffer):
    families = Counter(classify_spec_json(s).model_family for s in buffer["spec_json"].drop_nulls())
    rows = table(committed, "Model families")
    assert {row["model family"]: int(row["experiments"]) for row in rows} == dict(families)
    ran = buffer.filter(pl.col("error_class").is_null())
    paid: dict[str, list[float]] = {}
    for spec_json, reward in ran.select("spec_json", "reward").iter_rows():
        paid.setdefault(classify_spec_json(spec_json).model_family, []).append(reward)
    for row in rows:  # what the reward paid each family, among what ran ("—" for a family none of which ran)
        rewards = paid.get(row["model family"], [])
        assert int(row["ran"]) == len(rewards)
        if rewards:
            assert float(row["mean reward (ran)"]) == pytest.approx(statistics.fmean(rewards), abs=5e-4)
        else:
            assert row["mean reward (ran)"] == "—"


def test_reward_per_cycle_matches_the_buffer(committed, buffer):
    for row in table(committed, "Cycles"):
        rewards = buffer.filter(pl.col("cycle") == int(row["cycle"]))["reward"].to_list()
        assert int(row["experiments"]) == len(rewards)
        assert float(row["reward mean"]) == pytest.approx(statistics.fmean(rewards), abs=5e-4)
        assert float(row["reward max"]) == pytest.approx(max(rewards), abs=5e-4)


def test_top_experiments_show_their_in_sample_and_holdout_sharpe(committed, buffer):
    holdout = pl.read_parquet(EXAMPLE / "runs" / "holdout" / f"{RUN}.parquet")
    ran = buffer.filter(pl.col("error_class").is_null()).sort("metric_sharpe_net", descending=True)
    top = table(committed, "Top experiments")
    assert float(top[0]["in-sample Sharpe"]) == pytest.approx(ran["metric_sharpe_net"][0], abs=5e-4)
    for row in top:
        match = holdout.filter((pl.col("cycle") == int(row["cycle"])) & (pl.col("index") == int(row["index"])))
        assert float(row["holdout Sharpe"]) == pytest.approx(match["metric_holdout_sharpe_net"][0], abs=5e-4)
        spec = json.loads(
            buffer.filter((pl.col("cycle") == int(row["cycle"])) & (pl.col("index") == int(row["index"])))["spec_json"][
                0
            ]
        )
        assert re.sub(r"\s", "", row["name"]) in re.sub(r"\s", "", spec["name"])
