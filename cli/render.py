"""What the commands print: Rich tables and lines for data cards, executions, samples, comparisons and reruns.

Each function turns the library's values into something to print and computes nothing the library does not;
the commands decide when to print it. `quiet_libraries` keeps the libraries' own chatter off the terminal.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sharpe_rl.data.panel import format_interval, format_time

if TYPE_CHECKING:  # the types only: importing these modules loads the Docker SDK, torch
    from sharpe_rl.data.card import DataCard
    from sharpe_rl.data.sources import FetchedPanel
    from sharpe_rl.evaluation import Outcome
    from sharpe_rl.noskill import NoSkillBand
    from sharpe_rl.policy.preview import CompletionPreview
    from sharpe_rl.rerun import Rerun


def fmt(value: float | None, spec: str = ".3f") -> str:
    """A number as the tables show it; a dash when there is none."""
    return "—" if value is None else format(value, spec)


def progress_bar(console: Console, *, spinner: bool = False) -> Progress:
    """A transient bar with its step's description, its count and the time so far."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*((SpinnerColumn(), *columns) if spinner else columns), console=console, transient=True)


# ---- data ----


def fetched_line(item: FetchedPanel) -> str:
    """What `data fetch` did with one panel."""
    card = item.card
    if item.reused:
        return f"up to date: {item.path} (matches its card; --force rebuilds it)"
    return (
        f"wrote {item.path}: {len(card.symbols)} symbol(s), {card.rows:,} rows of "
        f"{format_interval(card.interval)} bars, {format_time(card.start)} → {format_time(card.end)}"
    )


def card_summary(card: DataCard, verified: bool, band: str) -> Table:
    """A data card's headline: source, provenance, span, rows, late listings and early ends, gaps, the no-skill
    `band` line."""
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    summary.add_row("source", f"{card.source} — licence: {card.licence}")
    for entry in card.provenance[:3]:
        inside = f" › {entry.member}" if entry.member else ""
        summary.add_row("from", f"{entry.uri}{inside}" + (f" (sha256 {entry.sha256[:12]}…)" if entry.sha256 else ""))
    if len(card.provenance) > 3:
        summary.add_row("", f"… and {len(card.provenance) - 3} more (see --json)")
    summary.add_row(
        "span", f"{format_time(card.start)} → {format_time(card.end)}, {format_interval(card.interval)} bars"
    )
    shown = ", ".join(card.symbols[:12]) + (", …" if len(card.symbols) > 12 else "")
    summary.add_row("rows", f"{card.rows:,} in {len(card.symbols)} symbol(s): {shown}")
    listed = ", ".join(f"{s.symbol} {format_time(s.first_bar)}" for s in card.listed_late) or "none"
    ended = ", ".join(f"{s.symbol} {format_time(s.last_bar)}" for s in card.ended_early) or "none"
    summary.add_row("listed mid-panel", listed)
    summary.add_row("ended early", ended)
    missing = sum(s.missing_bars for s in card.per_symbol)
    summary.add_row("gaps", f"{sum(s.gaps for s in card.per_symbol)} gap(s), {missing:,} missing bar(s)")
    summary.add_row(
        "card", "verified (sha256 of the file matches)" if verified else "none usable — computed from the file"
    )
    for note in card.notes:
        summary.add_row("note", note)
    summary.add_row("no skill", band)
    return summary


def card_symbols(card: DataCard) -> Table:
    """A data card's per-symbol table: first and last bar, bars, gaps, missing and zero-volume bars."""
    table = Table("symbol", "first bar", "last bar")
    for numeric in ("bars", "gaps", "missing bars", "zero-volume bars"):
        table.add_column(numeric, justify="right")
    for stats in card.per_symbol:
        table.add_row(
            stats.symbol,
            format_time(stats.first_bar),
            format_time(stats.last_bar),
            f"{stats.bars:,}",
            str(stats.gaps),
            f"{stats.missing_bars:,}",
            f"{stats.zero_volume_bars:,}",
        )
    return table


# ---- exec ----


def print_execution(console: Console, outcome: Outcome, score: dict, band: NoSkillBand | None) -> None:
    """One experiment's outcome as `exec` prints it: the static failure, or the sandbox's result with its score on
    the reward window, the reward, timings, hashes, and the end of its traceback and stderr."""
    result, metrics = outcome.result, outcome.metrics
    if result is None:  # a static failure is an outcome too: nothing ran, the class says why
        console.print(f"[bold red]{outcome.error_class}[/bold red] (static check, nothing ran): ", end="")
        console.print(outcome.message or "", markup=False, highlight=False, soft_wrap=True)
        console.print(f"reward {score['reward']:+.3f}", highlight=False)
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    style = "green" if outcome.ok else "red"
    table.add_row("status", f"[{style}]{outcome.status}[/{style}]" + (" (cached)" if result.cached else ""))
    if outcome.message:
        table.add_row("message", escape(outcome.message))
    if metrics is not None and band is not None:
        table.add_row(
            "score",
            f"net Sharpe {metrics.sharpe_net:.3f} (gross {metrics.sharpe_gross:.3f}), turnover {metrics.turnover:.3f}, "
            f"hit rate {100 * metrics.hit_rate:.1f}% on the reward window",
        )
        table.add_row("evidence", f"{score['evidence']:+.2f} sigmas of no-skill noise ({band.sigma:.2f} Sharpe)")
        table.add_row("", band.sentence())
    table.add_row("reward", f"{score['reward']:+.3f}")
    table.add_row("timings", ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.timings.items()))
    if result.peak_memory_mb is not None:
        table.add_row("peak memory", f"{result.peak_memory_mb:.0f} MB")
    table.add_row("executor", f"{result.executor}, exit code {result.exit_code}")
    table.add_row("hashes", f"spec {result.spec_hash}, data {result.data_hash}, harness {result.harness_hash}")
    table.add_row("predictions", str(result.predictions_path or "none"))
    console.print(table)
    for title, text in (("traceback", result.traceback), ("stderr (end)", result.stderr_tail)):
        if text.strip():
            console.print(f"[bold]{title}[/bold]")
            console.print(text.rstrip(), markup=False, highlight=False)


# ---- sample ----


def sample_table(previews: Sequence[CompletionPreview], title: str) -> Table:
    """Sampled completions: index, the static checks' outcome, model family, the experiment."""
    from sharpe_rl.policy.preview import OK  # loaded with the policy that wrote them

    table = Table("#", "check", "family", "experiment", title=title, show_lines=True)
    for p in previews:
        check = f"[green]{OK}[/green]" if p.check == OK else f"[red]{p.check}[/red]\n{escape(p.message or '')}"
        if p.features is None:
            experiment = escape(p.completion)
        else:
            experiment = f"[bold]{escape(p.name or '')}[/bold]\n{escape(p.features)}\n{escape(p.model or '')}"
        table.add_row(str(p.index), check, p.model_family or "—", experiment)
    return table


def sample_summary(previews: Sequence[CompletionPreview]) -> str:
    """How many pass the static checks, and the families, most written first."""
    from sharpe_rl.policy.preview import OK

    passed = sum(p.check == OK for p in previews)
    families = Counter(p.model_family or "unparseable" for p in previews).most_common()
    return f"{passed} of {len(previews)} pass the static checks; families: " + ", ".join(
        f"{f} {c}" for f, c in families
    )


# ---- evaluate-policy and rerun ----


def comparison_table(rows: list[dict], title: str) -> Table:
    """The evaluate-policy comparison as a Rich table, an interval that excludes 0 highlighted."""
    table = Table("window", "statistic", "base", "final", "difference", "95% interval", title=title)
    for row in rows:
        low, high = row["low"], row["high"]
        clear = low > 0 or high < 0
        interval = f"[{fmt(low)}, {fmt(high)}]"
        table.add_row(
            row["window"],
            row["statistic"],
            fmt(row["base"]),
            fmt(row["final"]),
            fmt(row["difference"]),
            f"[bold]{interval}[/bold]" if clear else interval,
        )
    return table


def rerun_table(reruns: Sequence[Rerun]) -> Table:
    """Each experiment run again beside its first run: status, net Sharpe, largest prediction change, verdict."""
    table = Table("index", "name", "before", "after", "Sharpe before", "Sharpe after", "max Δp", "reproduces")
    for r in reruns:
        table.add_row(
            str(r.index),
            r.name or "",
            r.original_status,
            r.rerun_status,
            fmt(r.original_sharpe),
            fmt(r.rerun_sharpe),
            fmt(r.max_prediction_diff, ".2g"),
            "[green]yes[/green]" if r.reproduces else "[red]no[/red]",
        )
    return table


# ---- the libraries' own output ----


def quiet_libraries() -> None:
    """Keep the terminal to our progress bars: no per-task Prefect logs, weight-loading bars or INFO lines."""
    from transformers.utils import logging as transformers_logging

    # Quiet on the terminal only: the flow run's INFO lines (each cycle's line) still go to its Prefect server,
    # where a night attached to `sharpe-rl serve` is watched (PREFECT_LOGGING_LEVEL would drop them before its API).
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
