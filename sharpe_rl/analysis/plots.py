"""The post-mortem plots, as PNG files, from the tables of `sharpe_rl.analysis.tables`.

Figures are built as `matplotlib.figure.Figure` objects and saved through the Agg canvas
directly: no pyplot, so no global figure registry and no GUI backend, whichever process calls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sharpe_rl.analysis.tables import STATUSES, RunAnalysis

_DPI = 100


def write_plots(analysis: RunAnalysis, directory: Path) -> dict[str, Path]:
    """Every plot of one run into `directory`; returns name -> PNG path."""
    directory.mkdir(parents=True, exist_ok=True)
    families = analysis.family_usage["model_family"].to_list()
    return {
        "reward": plot_reward_curve(analysis.cycles, directory / "reward.png"),
        "families": plot_family_share(analysis.family_share_by_cycle, families, directory / "families.png"),
        "failures": plot_failures(analysis.failures_by_cycle, directory / "failures.png"),
        "holdout": plot_holdout_scatter(analysis.top_experiments, directory / "holdout.png"),
        "elites": plot_elite_grid(analysis.elite_grid, directory / "elites.png"),
        "archive": plot_archive_by_cycle(analysis.archive_by_cycle, directory / "archive.png"),
    }


def plot_reward_curve(cycles: pl.DataFrame, path: Path) -> Path:
    """Reward and in-sample Sharpe per cycle: median line, interquartile band, mean and max."""
    figure = Figure(figsize=(9, 4.5), dpi=_DPI)
    for axes, prefix, title in zip(
        figure.subplots(1, 2), ("reward", "sharpe"), ("Reward", "In-sample net Sharpe (ran ok)"), strict=True
    ):
        x = cycles["cycle"].to_numpy()
        median = cycles[f"{prefix}_median"].to_numpy()
        axes.fill_between(
            x,
            cycles[f"{prefix}_q25"].to_numpy(),
            cycles[f"{prefix}_q75"].to_numpy(),
            alpha=0.25,
            color="tab:blue",
            label="interquartile range",
        )
        axes.plot(x, median, color="tab:blue", marker="o", markersize=3, label="median")
        axes.plot(x, cycles[f"{prefix}_mean"].to_numpy(), color="tab:orange", linewidth=1, label="mean")
        axes.plot(x, cycles[f"{prefix}_max"].to_numpy(), color="tab:green", linestyle=":", label="max")
        axes.axhline(0, color="grey", linewidth=0.6)
        _label(axes, title, "cycle")
    figure.axes[0].legend(fontsize=8, loc="best")
    return _save(figure, path)


def plot_family_share(share: pl.DataFrame, families: list[str], path: Path) -> Path:
    """Stacked share of each model family among the parsed experiments of each cycle."""
    wide = _wide(share, "model_family", families)
    figure = Figure(figsize=(9, 4.5), dpi=_DPI)
    axes = figure.subplots()
    _stacked_bars(axes, wide, families, colormaps["tab20"])
    _label(axes, "Model family per cycle (% of parsed experiments)", "cycle")
    axes.set_ylim(0, 100)
    if families:
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(figure, path)


def plot_failures(failures: pl.DataFrame, path: Path) -> Path:
    """Stacked share of each error class per cycle (the bar's height is the failure rate)."""
    classes = [s for s in STATUSES if s != "ok" and s in set(failures["status"])]
    wide = _wide(failures, "status", classes)
    figure = Figure(figsize=(9, 4.5), dpi=_DPI)
    axes = figure.subplots()
    colours = colormaps["tab20"]
    # A fixed colour per error class across runs; tab20's dark shades first so neighbours differ.
    position = {s: STATUSES.index(s) - 1 for s in classes}
    _stacked_bars(
        axes, wide, classes, colours, colour_index={s: (2 * p) % 20 + (2 * p) // 20 for s, p in position.items()}
    )
    _label(axes, "Failures per cycle (% of all experiments)", "cycle")
    axes.set_ylim(0, 100)
    if classes:
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(figure, path)


def plot_holdout_scatter(top: pl.DataFrame, path: Path) -> Path:
    """In-sample vs holdout Sharpe of the top experiments: points under y = x are selection bias."""
    figure = Figure(figsize=(5.5, 5), dpi=_DPI)
    axes = figure.subplots()
    both = top.filter(pl.col("holdout_sharpe").is_not_null())
    if both.height:
        x, y = both["sharpe"].to_numpy(), both["holdout_sharpe"].to_numpy()
        axes.scatter(x, y, color="tab:blue", zorder=3)
        for rank, xi, yi in zip(both["rank"], x, y, strict=True):
            axes.annotate(str(rank), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        low, high = min(x.min(), y.min(), 0.0), max(x.max(), y.max(), 0.0)
        pad = 0.05 * (high - low or 1.0)
        axes.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", linestyle="--", label="y = x")
        axes.axhline(0, color="grey", linewidth=0.6)
        axes.legend(fontsize=8, loc="upper left")
    else:
        axes.text(0.5, 0.5, "no holdout Sharpe recorded", ha="center", va="center", transform=axes.transAxes)
    _label(axes, "Top experiments: in-sample vs holdout Sharpe", "in-sample net Sharpe")
    axes.set_ylabel("holdout net Sharpe")
    return _save(figure, path)


def plot_elite_grid(grid: pl.DataFrame, path: Path) -> Path:
    """The archive as a grid: each cell's elite net Sharpe as a colour, its visits as a number.

    Rows are the model families the run used, columns the feature building blocks; a blank cell
    was never visited by an experiment that ran.
    """
    used = set(grid.filter(pl.col("visits") > 0)["model_family"])
    families = [f for f in grid["model_family"].unique(maintain_order=True) if f in used]
    blocks = grid["block"].unique(maintain_order=True).to_list()
    sharpe = np.full((len(families), len(blocks)), np.nan)
    visits = np.zeros((len(families), len(blocks)), dtype=int)
    for row in grid.filter(pl.col("model_family").is_in(families)).iter_rows(named=True):
        at = families.index(row["model_family"]), blocks.index(row["block"])
        visits[at] = row["visits"]
        sharpe[at] = np.nan if row["sharpe"] is None else row["sharpe"]
    figure = Figure(figsize=(9, 1.2 + 0.45 * max(len(families), 1)), dpi=_DPI)
    axes = figure.subplots()
    if not families:
        axes.text(0.5, 0.5, "no experiment ran", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return _save(figure, path)
    limit = max(float(np.nanmax(np.abs(sharpe))) if np.isfinite(sharpe).any() else 1.0, 1e-9)
    image = axes.imshow(np.ma.masked_invalid(sharpe), cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
    for (i, j), n in np.ndenumerate(visits):
        if n:
            axes.text(j, i, str(n), ha="center", va="center", fontsize=8)
    axes.set_xticks(range(len(blocks)), blocks, rotation=30, ha="right", fontsize=8)
    axes.set_yticks(range(len(families)), families, fontsize=8)
    axes.set_title("Elite net Sharpe per cell (colour) and experiments that ran in it (number)", fontsize=10)
    figure.colorbar(image, ax=axes, label="elite net Sharpe")
    return _save(figure, path)


def plot_archive_by_cycle(by_cycle: pl.DataFrame, path: Path) -> Path:
    """Archive coverage (% of the grid) and QD score after each cycle."""
    figure = Figure(figsize=(9, 4), dpi=_DPI)
    coverage_axes, qd_axes = figure.subplots(1, 2)
    x = by_cycle["cycle"].to_numpy()
    coverage_axes.plot(x, by_cycle["coverage_pct"].to_numpy(), color="tab:blue", marker="o", markersize=3)
    _label(coverage_axes, "Archive coverage (% of the grid's cells)", "cycle")
    coverage_axes.set_ylim(0, None)
    qd_axes.plot(x, by_cycle["qd_score"].to_numpy(), color="tab:green", marker="o", markersize=3)
    _label(qd_axes, "QD score (sum of the elites' clipped Sharpe, each in [0, 1])", "cycle")
    qd_axes.set_ylim(0, None)
    return _save(figure, path)


def _wide(long: pl.DataFrame, key: str, order: list[str]) -> pl.DataFrame:
    """cycle × key percentages, one column per key in `order`, zeros where a key is absent."""
    if long.height == 0:
        return pl.DataFrame({"cycle": []}, schema={"cycle": pl.Int64})
    wide = long.pivot(on=key, index="cycle", values="pct").sort("cycle")
    missing = [k for k in order if k not in wide.columns]
    return wide.with_columns(pl.lit(0.0).alias(k) for k in missing).fill_null(0.0)


def _stacked_bars(
    axes: Axes,
    wide: pl.DataFrame,
    keys: list[str],
    colours: Colormap,
    colour_index: dict[str, int] | None = None,
) -> None:
    x = wide["cycle"].to_numpy()
    bottom = None
    for position, key in enumerate(keys):
        heights = wide[key].to_numpy()
        colour = colours((colour_index or {}).get(key, position) % colours.N)
        axes.bar(x, heights, bottom=bottom, color=colour, width=0.85, label=key)
        bottom = heights if bottom is None else bottom + heights


def _label(axes: Axes, title: str, xlabel: str) -> None:
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.grid(alpha=0.3)
    if xlabel == "cycle":
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # no cycle 1.5, no -0.4 (1 cycle)


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(str(path))
    return path
