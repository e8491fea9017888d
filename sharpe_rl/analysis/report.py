"""The post-mortem report: Markdown and HTML files with their PNG plots, the table data, a Rich view.

`build_report` writes `report.md`, `report.html` and `plots/*.png` under `out_dir` and returns a
`Report`: its `markdown_with_embedded_plots()` can be posted as a Prefect markdown artifact, its
`tables` (rows as lists of dicts) as Prefect table artifacts, and its files logged as MLflow
artifacts of the parent run. The HTML stands alone: its plots are inside it (data URIs) and its
texts are rendered from their Markdown, so it reads the same opened from disk, from MLflow's
artifact view (which shows it without the plots/ folder beside it) or sent by mail. One list of
sections feeds every output, so the Markdown, the HTML, the table data and the terminal always
show the same numbers.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import polars as pl
from markdown_it import MarkdownIt
from rich.console import Console
from rich.table import Table as RichTable

from sharpe_rl.analysis.plots import write_plots
from sharpe_rl.analysis.quality_diversity import grid_table
from sharpe_rl.analysis.tables import HEADLINE_FIELDS, STATUSES, RunAnalysis, analyse, policy_changes
from sharpe_rl.data.atomic import staged_files
from sharpe_rl.facts import RunFacts, load_comparison, load_comparison_sample, load_facts
from sharpe_rl.grid import FEATURE_BLOCKS, GRID_CELLS
from sharpe_rl.power import detectable_difference, pairs_needed

MISSING = "—"


@dataclass(frozen=True)
class Column:
    """One column of a report table: the row key, its header and how to show a value."""

    key: str
    header: str
    fmt: str = "text"  # text | int | pct | num

    def format(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return MISSING
        if self.fmt == "pct":
            return f"{value:.1f}%"
        if self.fmt == "num":
            return f"{value:.3f}" if round(value, 3) else "0.000"  # never "-0.000"
        return str(value)


@dataclass(frozen=True)
class Table:
    """A titled table: rows as dicts (the artifact form) and columns saying how to show them."""

    name: str
    title: str
    columns: tuple[Column, ...]
    rows: tuple[dict[str, Any], ...]
    terminal: bool = False  # one of the key tables `print_report` shows

    @property
    def cells(self) -> list[list[str]]:
        return [[column.format(row.get(column.key)) for column in self.columns] for row in self.rows]

    def records(self) -> list[dict[str, Any]]:
        """The rows with floats rounded to 4 decimals (what a table artifact should show)."""
        return [
            {c.key: round(v, 4) if isinstance(v, float) else v for c in self.columns for v in [row.get(c.key)]}
            for row in self.rows
        ]


@dataclass(frozen=True)
class Section:
    """A question the report answers: explanation, tables and plots (paths relative to the report)."""

    title: str
    text: str
    tables: tuple[Table, ...] = ()
    plots: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    """A written report and everything the pipeline needs to post it elsewhere."""

    run: str
    compare_run: str | None
    sections: tuple[Section, ...]
    markdown: str
    html: str
    markdown_path: Path
    html_path: Path
    plots: dict[str, Path]

    @property
    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """Every table's rows by table name, for table artifacts."""
        return {table.name: table.records() for section in self.sections for table in section.tables}

    def markdown_with_embedded_plots(self) -> str:
        """The Markdown with each plot inside it as a data URI, for viewers that have no plots/ folder beside it.

        A Prefect markdown artifact is shown at a URL of the Prefect UI, where `plots/x.png` resolves
        to nothing: a person would see broken images. The four PNGs add about 150 kB.
        """
        markdown = self.markdown
        for path in self.plots.values():
            link = path.relative_to(self.markdown_path.parent).as_posix()
            markdown = markdown.replace(f"]({link})", f"]({_data_uri(path)})")
        return markdown


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def select_run(frame: pl.DataFrame, run: str | None = None) -> pl.DataFrame:
    """The experiments of `run`, or of the latest run in `frame` (by `created_at`) when none is named."""
    if frame.height == 0:
        raise ValueError("there are no experiments to report on: the buffer is empty (start a run first)")
    runs = sorted(frame["run"].unique().to_list())
    if run is not None:
        if run not in runs:
            raise ValueError(f"run {run!r} has no experiments in the buffer; runs: {', '.join(runs)}")
        return frame.filter(pl.col("run") == run)
    if len(runs) == 1:
        return frame
    if "created_at" not in frame.columns:
        raise ValueError(f"the frame holds several runs ({', '.join(runs)}) and no created_at: name the run")
    latest = frame.sort("created_at").select(pl.col("run").last()).item()
    return frame.filter(pl.col("run") == latest)


def build_report(
    frame: pl.DataFrame,
    out_dir: Path,
    run: str | None = None,
    compare_frame: pl.DataFrame | None = None,
    *,
    compare_run: str | None = None,
    top_n: int = 10,
    runs_dir: Path | None = None,
) -> Report:
    """Write the post-mortem of one run (the latest in `frame` when `run` is None) under `out_dir`.

    Comparing: pass `compare_frame` (the other run's experiments, or a frame it is the latest
    of) and/or `compare_run` (looked up in `compare_frame`, else in `frame`); the report then
    opens with both runs' headline numbers, model families, features and failures side by side.
    `runs_dir` holds the run's evaluation facts (`sharpe_rl.facts`: the no-skill band, where the
    holdout lies, whether the reward carries over); without it the report leaves them out.
    """
    out_dir = Path(out_dir)
    analysis = analyse(select_run(frame, run), top_n)
    facts = load_facts(runs_dir, analysis.run) if runs_dir is not None else None
    comparison = load_comparison(runs_dir, analysis.run) if runs_dir is not None else None
    sample = load_comparison_sample(runs_dir, analysis.run) if comparison is not None else None
    compare = None
    if compare_frame is not None or compare_run is not None:
        other = compare_frame if compare_frame is not None else frame
        compare = analyse(select_run(other, compare_run), top_n)
    with staged_files(out_dir) as staging:  # a reader never finds half a report, even on a full disk
        plots = {name: path.relative_to(staging) for name, path in write_plots(analysis, staging / "plots").items()}
        sections = _sections(
            analysis, compare, {name: path.as_posix() for name, path in plots.items()}, facts, comparison, sample
        )
        context = {"run": analysis.run, "compare_run": compare.run if compare else None, "sections": sections}
        markdown = _environment().get_template("report.md.j2").render(context)
        embedded = [
            dataclasses.replace(section, plots=tuple(_data_uri(staging / plot) for plot in section.plots))
            for section in sections
        ]
        html = _environment().get_template("report.html.j2").render(context | {"sections": embedded})
        (staging / "report.md").write_text(markdown, encoding="utf-8")
        (staging / "report.html").write_text(html, encoding="utf-8")
    markdown_path, html_path = out_dir / "report.md", out_dir / "report.html"
    plots = {name: out_dir / path for name, path in plots.items()}
    return Report(
        run=analysis.run,
        compare_run=compare.run if compare else None,
        sections=tuple(sections),
        markdown=markdown,
        html=html,
        markdown_path=markdown_path,
        html_path=html_path,
        plots=plots,
    )


def print_report(report: Report, console: Console | None = None) -> None:
    """Print the headline's verdicts and the key tables (headline, comparison, families, failures, top
    experiments) to a terminal."""
    console = console or Console()
    title = f"post-mortem of {report.run}" + (f" vs {report.compare_run}" if report.compare_run else "")
    console.rule(f"[bold]{title}")
    console.print(report.sections[0].text.replace("`", ""), markup=False, highlight=False)
    for section in report.sections:
        for table in section.tables:
            if not table.terminal:
                continue
            view = RichTable(title=table.title, title_justify="left", header_style="bold")
            for column in table.columns:
                view.add_column(column.header, justify="left" if column.fmt == "text" else "right")
            for row in table.cells:
                view.add_row(*row)
            console.print(view)
    console.print(f"Markdown: {report.markdown_path}\nHTML:     {report.html_path}")


# ---------------------------------------------------------------------------------------------
# Sections

_TOP_COLUMNS = (
    Column("rank", "#", "int"),
    Column("cycle", "cycle", "int"),
    Column("index", "index", "int"),
    Column("name", "name"),
    Column("model_family", "model family"),
    Column("copies", "copies", "int"),
    Column("reward", "reward", "num"),
    Column("sharpe", "in-sample Sharpe", "num"),
    Column("dsr", "deflated Sharpe (prob.)", "num"),
    Column("holdout_sharpe", "holdout Sharpe", "num"),
    Column("evidence", "evidence (sigmas)", "num"),
    Column("decay", "decay", "num"),
)
_CYCLE_COLUMNS = (
    Column("cycle", "cycle", "int"),
    Column("experiments", "experiments", "int"),
    Column("parsed_pct", "parsed", "pct"),
    Column("ok_pct", "ran ok", "pct"),
    Column("cached", "from the cache", "int"),
    Column("reward_mean", "reward mean", "num"),
    Column("reward_median", "reward median", "num"),
    Column("reward_q25", "reward q25", "num"),
    Column("reward_q75", "reward q75", "num"),
    Column("reward_max", "reward max", "num"),
    Column("sharpe_median", "Sharpe median", "num"),
    Column("sharpe_q25", "Sharpe q25", "num"),
    Column("sharpe_q75", "Sharpe q75", "num"),
    Column("sharpe_max", "Sharpe max", "num"),
    Column("top_family", "top family"),
    Column("entropy_bits", "family entropy (bits)", "num"),
    Column("custom_pct", "custom features", "pct"),
    Column("duplicates", "duplicates", "int"),
    Column("seen_before", "repeats of earlier cycles", "int"),
)
_ARCHIVE_COLUMNS = (
    Column("cycle", "cycle", "int"),
    Column("filled", "cells filled", "int"),
    Column("coverage_pct", "coverage", "pct"),
    Column("qd_score", "QD score", "num"),
    Column("new_cells", "new cells", "int"),
    Column("improved_cells", "better elites", "int"),
)
_NAME_LENGTH = 48  # experiment names are the policy's free text


def _sections(
    analysis: RunAnalysis,
    compare: RunAnalysis | None,
    plots: dict[str, str],
    facts: RunFacts | None,
    comparison: dict[str, Any] | None = None,
    sample: pl.DataFrame | None = None,
) -> list[Section]:
    a = analysis
    headline = Table(
        "headline",
        "Headline",
        (Column("metric", "metric"), Column("value", "value")),
        tuple(
            {"metric": label, "value": Column(key, label, fmt).format(a.headline[key])}
            for key, label, fmt in HEADLINE_FIELDS
        ),
        terminal=True,
    )
    top_rows = [row | {"name": _shorten(row["name"])} | _decay(row, facts) for row in a.top_experiments.to_dicts()]
    verdicts = [_verdict(facts)] if facts else []
    verdicts.append(_learning(comparison, a.run))
    sections = [Section("Headline", f"Run `{a.run}`. " + " ".join(verdicts), (headline,))]
    if facts is not None:
        sections.append(_evaluation(facts))
    if comparison is not None and sample is not None:
        sections.append(_policy_change(comparison, sample))
    if compare is not None:
        sections.append(_comparison(a, compare))
    sections += [
        Section(
            "What models is it trying?",
            "Model family of what `make_model()` returns, read from the code's syntax tree (aliases, "
            "pipelines, wrappers and user classes followed), as a share of the experiments whose spec "
            "parsed. `unknown`: no `make_model` could be read (syntax error or missing). Of each family's "
            "experiments that ran: how many, their mean reward (what the reward paid the family; an update "
            'with `credit` "family" learns from it, shrunk toward the run\'s mean) and their mean in-sample '
            "net Sharpe.",
            (
                _table(
                    "family_usage",
                    "Model families",
                    (
                        *_share_columns("model_family", "model family"),
                        Column("ran", "ran", "int"),
                        Column("reward_mean", "mean reward (ran)", "num"),
                        Column("sharpe_mean", "mean net Sharpe (ran)", "num"),
                    ),
                    a.family_usage,
                    True,
                ),
            ),
            (plots["families"],),
        ),
        Section(
            "What features does it build?",
            "Share of the experiments whose `make_features` could be read. *custom*: uses a kind of "
            "feature the prompt's worked example does not (the template is lagged returns, rolling "
            "volatility and a moving-average ratio). The other rows are the building blocks used.",
            (
                _table(
                    "feature_usage",
                    "Features",
                    _share_columns("feature", "feature"),
                    a.feature_usage,
                ),
            ),
        ),
        Section(
            "Why does it fail?",
            "Outcome of every experiment as a share of all experiments: `ok` ran and was scored; every "
            "other row is an error class of the taxonomy (found before running, or in the sandbox).",
            (
                _table(
                    "failure_taxonomy",
                    "Failure taxonomy",
                    _share_columns("status", "outcome"),
                    a.failure_taxonomy,
                    True,
                ),
            ),
            (plots["failures"],),
        ),
        Section(
            "Is the reward improving?",
            "Per cycle: how many executions came back from the cache (code that already ran on the same "
            "data, settings and seed: nothing new was learnt from them), reward and in-sample net Sharpe "
            "(experiments that ran) with their spread, the most used model family, the Shannon entropy of the "
            "family distribution (0 = one family), "
            "the share of custom features, and duplicate programs (identical code hash) within the "
            "cycle and repeated from earlier cycles.",
            (_table("cycles", "Cycles", _CYCLE_COLUMNS, a.cycles),),
            (plots["reward"],),
        ),
        Section(
            "Is it exploring?",
            "A quality-diversity archive (MAP-Elites) over the grid of model family × feature building "
            "block: an experiment that ran sits in one cell per block its features use, and each cell "
            "keeps its best experiment by in-sample net Sharpe (its elite). Coverage is the share of "
            f"the grid's {len(GRID_CELLS)} cells holding an elite; the QD score sums the elites' Sharpe, "
            "clipped to ±3 and mapped to [0, 1] per cell, so it grows with new cells and better elites. "
            "The grid shows each elite's Sharpe (one experiment may hold several cells); the plot adds "
            f"how many experiments ran in each cell. `{MISSING}`: never filled.",
            (
                _table("archive_by_cycle", "Archive by cycle", _ARCHIVE_COLUMNS, a.archive_by_cycle),
                _table(
                    "elite_grid",
                    "Elite net Sharpe by model family and feature block",
                    (Column("model_family", "model family"), *(Column(b, b, "num") for b in FEATURE_BLOCKS)),
                    grid_table(a.elite_grid),
                ),
            ),
            (plots["archive"], plots["elites"]),
        ),
        Section(
            "Is the reward real?",
            "The best distinct programs by in-sample Sharpe, with the deflated Sharpe ratio (the "
            "probability the Sharpe beats the best of as many random trials) and the Sharpe on the "
            "final holdout, which no reward ever saw; *evidence* is the in-sample Sharpe in units of "
            "the panel's no-skill noise, *decay* the holdout Sharpe less the in-sample one. Picking the "
            "best of many trials inflates the in-sample number: points below the y = x line are that "
            f"selection bias. `{MISSING}`: not measured."
            + (f" The {facts.noskill.sentence()} on the reward folds." if facts else ""),
            (Table("top_experiments", "Top experiments", _TOP_COLUMNS, tuple(top_rows), terminal=True),),
            (plots["holdout"],),
        ),
        Section(
            "Per cycle",
            "Model-family shares (of parsed experiments) and outcome shares (of all experiments), per cycle.",
            (
                _wide_table(
                    "family_by_cycle",
                    "Model family by cycle",
                    a.family_share_by_cycle,
                    "model_family",
                    a.family_usage["model_family"].to_list(),
                ),
                _wide_table(
                    "failures_by_cycle",
                    "Outcome by cycle",
                    a.failures_by_cycle,
                    "status",
                    [s for s in STATUSES if s in set(a.failures_by_cycle["status"])],
                ),
            ),
        ),
    ]
    return sections


def _verdict(facts: RunFacts) -> str:
    """The headline's answer to "is the reward worth learning from?"."""
    selection = facts.selection
    if selection is None or selection.agreement is None:
        return "Whether the reward carries over to the holdout is measured when the run ends."
    return f"Reward–holdout agreement (Spearman): {selection.agreement.sentence()}."


def _learning(comparison: dict[str, Any] | None, run: str) -> str:
    """The headline's answer to "is the trained policy better than its base on the holdout?"."""
    if comparison is None:
        return f"Trained policy against its base: not measured yet (`sharpe-rl evaluate-policy {run}`)."
    rows = {(r["window"], r["statistic"]): r for r in comparison["comparison"]}
    holdout = rows.get(("holdout", "mean_sharpe"))
    if holdout is None or holdout["low"] is None or math.isnan(holdout["low"]):
        return "Trained policy against its base: no holdout difference could be measured."
    verdict = (
        "better than its base on the holdout"
        if holdout["low"] > 0
        else "worse than its base on the holdout"
        if holdout["high"] < 0
        else "not distinguishable from its base on the holdout"
    )
    share = rows.get(("holdout", "run_share")) or rows.get(("reward", "run_share"))
    ran = f"; run share {share['difference']:+.1%} [{share['low']:+.1%}, {share['high']:+.1%}]" if share else ""
    sentence = (
        f"The trained policy (cycle {comparison['checkpoint_cycle']}) is {verdict}: mean net Sharpe "
        f"{holdout['difference']:+.2f} [{holdout['low']:+.2f}, {holdout['high']:+.2f}] over {comparison['n']} "
        f"completions each{ran}."
    )
    if holdout["low"] <= 0 <= holdout["high"]:
        sentence += " " + _too_few(holdout, comparison["n"])
    return sentence


def _too_few(holdout: dict[str, Any], n: int) -> str:
    """What "not distinguishable" can mean: the smallest gain this sample would see, and the sample that would
    see the one observed."""
    smallest = detectable_difference(holdout["low"], holdout["high"])
    sentence = f"A sample of {n} sees a true gain of {smallest:.2f} or more 4 times in 5"
    if holdout["difference"] > 0:
        needed = pairs_needed(n, holdout["low"], holdout["high"], holdout["difference"])
        sentence += f"; one of {holdout['difference']:+.2f} would take about {needed:,} completions each"
    return sentence + " (`sharpe-rl evaluate-policy --n`)."


def _policy_change(comparison: dict[str, Any], sample: pl.DataFrame) -> Section:
    """What the trained policy writes, beside what its base writes: evaluate-policy's completions of both."""

    def beside(unit: str, fmt: str, change: str) -> tuple[Column, ...]:
        return (
            Column("aspect", "aspect"),
            Column("value", "value"),
            Column("base", f"base{unit}", fmt),
            Column("trained", f"trained{unit}", fmt),
            Column("change", change, fmt),
        )

    shares, numbers = policy_changes(sample)
    return Section(
        "What did training change in what the policy writes?",
        f"The {comparison['n']} completions of the base policy and the {comparison['n']} of the trained one "
        f"(cycle {comparison['checkpoint_cycle']}) that `sharpe-rl evaluate-policy` executed, with the same prompt "
        "and seeds, base beside trained. Outcomes are shares of all completions; model families, feature blocks "
        "and custom features are shares of those that ran, as are the turnover (mean, reward window), the "
        "features' windows (median length of `rolling`, `ewm`, `shift`, ...) and the model's settings (median of "
        "each literal keyword argument many of them set). The headline says whether the difference on the "
        "holdout is more than noise; these say what moved.",
        (
            _table(
                "policy_shares",
                "Shares, base beside trained",
                beside(" %", "pct", "change (points)"),
                shares,
                terminal=True,
            ),
            _table("policy_numbers", "Numbers, base beside trained", beside("", "num", "change"), numbers),
        ),
    )


def _evaluation(facts: RunFacts) -> Section:
    """The no-skill band, the holdout against the policy's memory, and whether the reward carries over."""
    selection = facts.selection
    agreement = selection.agreement.sentence() if selection and selection.agreement else None
    pbo = None
    if selection and selection.pbo is not None:
        pbo = f"{selection.pbo:.2f} (over {selection.pbo_experiments} distinct experiments; 0.5 or more: no better "
        pbo += "than picking at random)"
    rows = (
        {"metric": "no-skill band", "value": f"{facts.noskill.sentence()} (noise {facts.noskill.sigma:.2f})"},
        {
            "metric": "a static ranking scores",
            "value": f"{facts.noskill.static:+.2f} (timing only: its entry cost, and what listings and gaps move)",
        },
        {"metric": "decisions", "value": facts.clock or MISSING},
        {"metric": "reward window", "value": f"{facts.reward_start:%Y-%m-%d} to {facts.reward_end:%Y-%m-%d}"},
        {"metric": "holdout", "value": facts.holdout_words()},
        {
            "metric": "symbols named in the prompt",
            "value": "yes: the policy can apply what it remembers of them"
            if facts.symbols_named
            else "no (the prompt gives their number; the data is disguised)",
        },
        {"metric": "reward–holdout agreement", "value": agreement or MISSING},
        {"metric": "probability of backtest overfitting", "value": pbo or MISSING},
    )
    table = Table("evaluation", "Evaluation", (Column("metric", "metric"), Column("value", "value")), rows, True)
    return Section(
        "Is the reward worth learning from?",
        "What no skill scores on this panel (random rankings re-drawn at several speeds), where the holdout lies "
        "against what the policy may remember, and whether what the reward pays carries over to data it never "
        "saw: the rank agreement of reward-window and holdout Sharpe across experiments (the best and a random "
        "sample of the rest), and the probability that picking the best by the reward window is overfitting "
        "(combinatorially symmetric cross-validation).",
        (table,),
    )


def _decay(row: dict[str, Any], facts: RunFacts | None) -> dict[str, Any]:
    """A top experiment's evidence (its Sharpe in no-skill sigmas) and decay (holdout less in-sample Sharpe)."""
    sharpe, holdout = row.get("sharpe"), row.get("holdout_sharpe")
    return {
        "evidence": facts.noskill.evidence(sharpe) if facts and sharpe is not None else None,
        "decay": holdout - sharpe if holdout is not None and sharpe is not None else None,
    }


def _comparison(a: RunAnalysis, b: RunAnalysis) -> Section:
    """Both runs' headline numbers, families, features and failures side by side."""
    columns = (Column("a", a.run), Column("b", b.run))
    headline = tuple(
        {
            "metric": label,
            "a": Column(key, label, fmt).format(a.headline[key]),
            "b": Column(key, label, fmt).format(b.headline[key]),
        }
        for key, label, fmt in HEADLINE_FIELDS
    )
    pct_columns = (Column("a", a.run, "pct"), Column("b", b.run, "pct"))
    families = _side_by_side(a.family_usage, b.family_usage, "model_family")
    statuses = _side_by_side(a.failure_taxonomy, b.failure_taxonomy, "status")
    features = _side_by_side(a.feature_usage, b.feature_usage, "feature")
    return Section(
        "Comparison",
        f"`{a.run}` (this report) beside `{b.run}`.",
        (
            Table("compare_headline", "Headline", (Column("metric", "metric"), *columns), headline, terminal=True),
            Table(
                "compare_families",
                "Model families (% of parsed)",
                (Column("model_family", "model family"), *pct_columns),
                families,
                terminal=True,
            ),
            Table("compare_features", "Features (% read)", (Column("feature", "feature"), *pct_columns), features),
            Table(
                "compare_failures",
                "Outcomes (% of all)",
                (Column("status", "outcome"), *pct_columns),
                tuple(r for r in statuses if r["a"] or r["b"]),
                terminal=True,
            ),
        ),
    )


def _side_by_side(a: pl.DataFrame, b: pl.DataFrame, key: str) -> tuple[dict[str, Any], ...]:
    """Rows keyed by `key` with run a's pct as "a" and run b's as "b" (0 when a run lacks the key)."""
    joined = a.select(key, a="pct").join(
        b.select(key, b="pct"), on=key, how="full", coalesce=True, maintain_order="left_right"
    )
    order: dict[str, int] = {}
    for name in [*a[key], *b[key]]:  # run a's order first, then what only run b has
        order.setdefault(name, len(order))
    rows = joined.with_columns(pl.col("a", "b").fill_null(0.0)).to_dicts()
    return tuple(sorted(rows, key=lambda row: order[row[key]]))


def _share_columns(key: str, header: str) -> tuple[Column, ...]:
    return (Column(key, header), Column("experiments", "experiments", "int"), Column("pct", "share", "pct"))


def _table(name: str, title: str, columns: tuple[Column, ...], frame: pl.DataFrame, terminal: bool = False) -> Table:
    return Table(name, title, columns, tuple(frame.to_dicts()), terminal)


def _wide_table(name: str, title: str, long: pl.DataFrame, key: str, order: list[str]) -> Table:
    """cycle × key shares from a long (cycle, key, pct) table."""
    rows: dict[int, dict[str, Any]] = {}
    for record in long.iter_rows(named=True):
        rows.setdefault(record["cycle"], {"cycle": record["cycle"]})[record[key]] = record["pct"]
    columns = (Column("cycle", "cycle", "int"), *(Column(k, k, "pct") for k in order))
    return Table(name, title, columns, tuple(rows[c] for c in sorted(rows)))


def _shorten(name: str | None) -> str | None:
    if name is None or len(name) <= _NAME_LENGTH:
        return name
    return name[: _NAME_LENGTH - 1] + "…"


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("sharpe_rl.analysis", "templates"),
        # Experiment names are the policy's untrusted text; the match is on the template's name suffix.
        autoescape=jinja2.select_autoescape(["html.j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    # A Markdown cell must not break the table: pipes escaped, newlines flattened.
    env.filters["md_cell"] = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    env.filters["markdown"] = _inline_html
    return env


#: CommonMark with raw HTML off: the texts hold experiment and run names, which are not ours to trust.
_MARKDOWN = MarkdownIt("commonmark", {"html": False})


def _inline_html(text: str) -> markupsafe.Markup:
    """A section's text (Markdown: `code`, *emphasis*) as HTML, everything else in it escaped."""
    return markupsafe.Markup(_MARKDOWN.renderInline(text))
