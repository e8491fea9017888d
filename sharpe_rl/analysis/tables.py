"""The post-mortem tables, per run and per cycle, computed with polars from the replay buffer frame.

Column contract — what this module reads from the buffer frame (`ReplayBuffer.frame()`), one row
per experiment:

| column                      | type              | meaning                                            |
| --------------------------- | ----------------- | -------------------------------------------------- |
| `run`                       | String            | run name                                           |
| `cycle`                     | Int64             | cycle number                                       |
| `index`                     | Int64             | position in the cycle's batch                      |
| `spec_json`                 | String, nullable  | the parsed spec; null when it did not parse        |
| `error_class`               | String, nullable  | an `ErrorClass` value; null when scored            |
| `reward`                    | Float64           | the shaped reward                                  |
| `code_hash`                 | String, nullable  | hash of the features + model source                |
| `name`                      | String (optional) | the experiment's own name                          |
| `prompt_version`            | String (optional) | the prompt template it was generated from          |
| `created_at`                | Datetime (opt.)   | picks the latest run when none is named            |
| `cached`                    | Boolean (opt.)    | result from the cache; null: nothing executed      |
| `metric_sharpe_net`         | Float64 (opt.)    | net Sharpe on the reward window (in-sample)        |
| `metric_dsr`                | Float64 (opt.)    | deflated Sharpe ratio, a probability               |
| `metric_holdout_sharpe_net` | Float64 (opt.)    | net Sharpe on the final holdout (often missing)    |

An optional column that is absent reads as all null. The buffer's stored `model_family` and
`custom_features` are not read: they are recomputed from `spec_json` with the current classifier,
so the report of an old run benefits from classifier fixes and never disagrees with the code.

Percentages are 0-100. Model-family shares are of *parsed* experiments (those with a spec);
feature shares are of experiments whose `make_features` could be read; failure shares are of
*all* experiments. In-sample Sharpe statistics cover experiments that ran (`status == "ok"`).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

import polars as pl

from sharpe_rl.analysis.quality_diversity import archive_by_cycle, elite_grid
from sharpe_rl.classify import classify_features, classify_spec_json
from sharpe_rl.classify.parameters import feature_windows, model_settings
from sharpe_rl.grid import FEATURE_BLOCKS
from sharpe_rl.sandbox.contract import ErrorClass
from sharpe_rl.spec import SpecError, parse_spec

REQUIRED_COLUMNS = ("run", "cycle", "index", "spec_json", "error_class", "reward", "code_hash")
SHARPE = "metric_sharpe_net"
DSR = "metric_dsr"
HOLDOUT_SHARPE = "metric_holdout_sharpe_net"
_OPTIONAL_COLUMNS: dict[str, pl.DataType] = {
    "name": pl.String(),
    "prompt_version": pl.String(),
    SHARPE: pl.Float64(),
    DSR: pl.Float64(),
    HOLDOUT_SHARPE: pl.Float64(),
    "cached": pl.Boolean(),
}
#: Outcome of an experiment: "ok" or an error class, in the taxonomy's order.
STATUSES = ("ok", *(e.value for e in ErrorClass))
UNKNOWN_FAMILY = "unknown"


def annotate(frame: pl.DataFrame) -> pl.DataFrame:
    """The buffer frame with its classification: `status`, `parsed`, `model_family`,
    `custom_features` and `feature_blocks`, sorted by (cycle, index)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"the experiment frame lacks the columns {missing}; pass ReplayBuffer.frame() "
            "(see the column contract in sharpe_rl/analysis/tables.py)"
        )
    absent = {name: dtype for name, dtype in _OPTIONAL_COLUMNS.items() if name not in frame.columns}
    frame = frame.with_columns(pl.lit(None, dtype=dtype).alias(name) for name, dtype in absent.items())
    # Classify each distinct spec once: a policy that repeats itself repeats its code verbatim.
    cache: dict[str, tuple[str | None, bool | None, list[str]]] = {}
    for spec_json in frame["spec_json"].drop_nulls().unique():
        found = classify_spec_json(spec_json)
        cache[spec_json] = (found.model_family, found.custom_features, list(found.features.blocks))
    classified = [cache.get(spec_json, (None, None, [])) for spec_json in frame["spec_json"]]
    families, customs, blocks = ([row[i] for row in classified] for i in range(3))
    return frame.with_columns(
        status=pl.col("error_class").fill_null("ok"),
        parsed=pl.col("spec_json").is_not_null(),
        model_family=pl.Series(families, dtype=pl.String),
        custom_features=pl.Series(customs, dtype=pl.Boolean),
        feature_blocks=pl.Series(blocks, dtype=pl.List(pl.String)),
    ).sort("cycle", "index")


def family_usage(annotated: pl.DataFrame) -> pl.DataFrame:
    """model_family, experiments, pct (of parsed experiments), most used first; and of the family's experiments
    that ran: `ran`, `reward_mean` (what the reward paid the family: what an update with `credit` "family"
    learns from, before its shrinkage) and `sharpe_mean` (in-sample net Sharpe), null when none ran."""
    parsed = annotated.filter(pl.col("parsed"))
    ran = pl.col("status") == "ok"
    return (
        parsed.group_by("model_family")
        .agg(
            experiments=pl.len(),
            ran=ran.sum().cast(pl.Int64),
            reward_mean=pl.col("reward").filter(ran).mean(),
            sharpe_mean=pl.col(SHARPE).filter(ran).mean(),
        )
        .with_columns(pct=100 * pl.col("experiments") / parsed.height)
        .sort(["experiments", "model_family"], descending=[True, False])
    )


def family_share_by_cycle(annotated: pl.DataFrame) -> pl.DataFrame:
    """cycle, model_family, experiments, pct (of the cycle's parsed experiments)."""
    return (
        annotated.filter(pl.col("parsed"))
        .group_by("cycle", "model_family")
        .agg(experiments=pl.len())
        .with_columns(pct=100 * pl.col("experiments") / pl.col("experiments").sum().over("cycle"))
        .sort("cycle", "model_family")
    )


def family_entropy_by_cycle(annotated: pl.DataFrame) -> pl.DataFrame:
    """cycle, identified, families, entropy_bits: Shannon entropy of the model-family distribution.

    Over experiments whose family was identified ("unknown" is no choice of model): 0 bits when
    every experiment uses one family, log2(k) when k families are used equally often.
    """
    per_cycle = (
        _identified(annotated)
        .group_by("cycle", "model_family")
        .agg(n=pl.len())
        .sort("cycle", "model_family")  # a fixed summation order: the same run gives the same bits
        .group_by("cycle")
        .agg(identified=pl.col("n").sum(), families=pl.len(), entropy_bits=_entropy_bits(pl.col("n")))
    )
    return (
        annotated.select(pl.col("cycle").unique())
        .join(per_cycle, on="cycle", how="left")
        .with_columns(
            pl.col("identified", "families").fill_null(0).cast(pl.Int64),
            pl.col("entropy_bits").fill_null(0.0),
        )
        .sort("cycle")
    )


def _identified(annotated: pl.DataFrame) -> pl.DataFrame:
    return annotated.filter(pl.col("parsed") & (pl.col("model_family") != UNKNOWN_FAMILY))


def _entropy_bits(counts: pl.Expr) -> pl.Expr:
    p = counts / counts.sum()
    return (p * (1 / p).log(2)).sum()


def feature_usage(annotated: pl.DataFrame) -> pl.DataFrame:
    """feature, experiments, pct: each building block and "custom (beyond the template)", as a
    share of the experiments whose features could be read."""
    read = annotated.filter(pl.col("custom_features").is_not_null())
    counts = read.select(
        pl.col("custom_features").sum().alias("custom"),
        *(pl.col("feature_blocks").list.contains(block).sum().alias(block) for block in FEATURE_BLOCKS),
    )
    rows = [{"feature": name, "experiments": int(counts[name][0] or 0)} for name in ("custom", *FEATURE_BLOCKS)]
    return pl.DataFrame(rows, schema={"feature": pl.String, "experiments": pl.Int64}).with_columns(
        pct=100 * pl.col("experiments") / read.height if read.height else pl.lit(None, dtype=pl.Float64)
    )


def failure_taxonomy(annotated: pl.DataFrame) -> pl.DataFrame:
    """status, experiments, pct (of all experiments): "ok" and every error class, zeros included."""
    counts = annotated.group_by("status").agg(experiments=pl.len())
    total = annotated.height
    return (
        pl.DataFrame({"status": list(STATUSES)})
        .join(counts, on="status", how="left")
        .with_columns(pl.col("experiments").fill_null(0).cast(pl.Int64))
        .with_columns(pct=100 * pl.col("experiments") / total if total else pl.lit(None, dtype=pl.Float64))
    )


def failures_by_cycle(annotated: pl.DataFrame) -> pl.DataFrame:
    """cycle, status, experiments, pct (of the cycle's experiments), for the statuses the run has."""
    present = [s for s in STATUSES if s in set(annotated["status"])]
    grid = annotated.select(pl.col("cycle").unique()).join(pl.DataFrame({"status": present}), how="cross")
    counts = annotated.group_by("cycle", "status").agg(experiments=pl.len())
    per_cycle = annotated.group_by("cycle").agg(total=pl.len())
    return (
        grid.join(counts, on=["cycle", "status"], how="left")
        .join(per_cycle, on="cycle")
        .with_columns(pl.col("experiments").fill_null(0).cast(pl.Int64))
        .with_columns(pct=100 * pl.col("experiments") / pl.col("total"))
        .drop("total")
        .with_columns(order=pl.col("status").replace_strict(present, list(range(len(present)))))
        .sort("cycle", "order")
        .drop("order")
    )


def _spread(column: pl.Expr, prefix: str) -> list[pl.Expr]:
    return [
        column.mean().alias(f"{prefix}_mean"),
        column.median().alias(f"{prefix}_median"),
        column.quantile(0.25, interpolation="linear").alias(f"{prefix}_q25"),
        column.quantile(0.75, interpolation="linear").alias(f"{prefix}_q75"),
        column.max().alias(f"{prefix}_max"),
        column.std().alias(f"{prefix}_std"),
    ]


def reward_by_cycle(annotated: pl.DataFrame) -> pl.DataFrame:
    """Per cycle: experiments, ok_pct, cached (executions whose result came from the cache; null when the buffer
    did not record it), reward mean/median/q25/q75/max/std, and the same for the in-sample net Sharpe of the
    experiments that ran (`sharpe_n` of them)."""
    sharpe = pl.col(SHARPE).filter((pl.col("status") == "ok") & pl.col(SHARPE).is_not_null())
    return (
        annotated.group_by("cycle")
        .agg(
            pl.len().alias("experiments"),
            (100 * (pl.col("status") == "ok").mean()).alias("ok_pct"),
            pl.when(pl.col("cached").is_not_null().any()).then(pl.col("cached").sum()).alias("cached"),
            *_spread(pl.col("reward"), "reward"),
            sharpe.len().alias("sharpe_n"),
            *_spread(sharpe, "sharpe"),
        )
        .sort("cycle")
    )


def duplicates_by_cycle(annotated: pl.DataFrame) -> pl.DataFrame:
    """Per cycle: hashed (experiments with a code hash), unique codes, duplicates (hashed − unique),
    duplicate_pct, and seen_before: experiments whose exact code already appeared in an earlier cycle."""
    hashed = annotated.filter(pl.col("code_hash").is_not_null())
    first_cycle = hashed.group_by("code_hash").agg(first_cycle=pl.col("cycle").min())
    per_cycle = (
        hashed.join(first_cycle, on="code_hash")
        .group_by("cycle")
        .agg(
            hashed=pl.len(),
            unique=pl.col("code_hash").n_unique(),
            seen_before=(pl.col("first_cycle") < pl.col("cycle")).sum(),
        )
    )
    return (
        annotated.select(pl.col("cycle").unique())
        .join(per_cycle, on="cycle", how="left")
        .with_columns(pl.col("hashed", "unique", "seen_before").fill_null(0).cast(pl.Int64))
        .with_columns(duplicates=pl.col("hashed") - pl.col("unique"))
        .with_columns(
            duplicate_pct=pl.when(pl.col("hashed") > 0).then(100 * pl.col("duplicates") / pl.col("hashed")),
        )
        .select("cycle", "hashed", "unique", "duplicates", "duplicate_pct", "seen_before")
        .sort("cycle")
    )


def top_experiments(annotated: pl.DataFrame, n: int = 10) -> pl.DataFrame:
    """The n best distinct experiments by in-sample net Sharpe, with deflated and holdout Sharpe beside.

    Identical code counts once (its first occurrence; `copies` says how often it ran), so a
    policy repeating one lucky program does not fill the table. Holdout Sharpe may be null.
    """
    scored = annotated.filter((pl.col("status") == "ok") & pl.col(SHARPE).is_not_null())
    hashed = (
        scored.filter(pl.col("code_hash").is_not_null())
        .with_columns(copies=pl.len().over("code_hash"))
        .unique(subset="code_hash", keep="first", maintain_order=True)
    )
    unhashed = scored.filter(pl.col("code_hash").is_null()).with_columns(copies=pl.lit(1, dtype=pl.UInt32))
    return (
        pl.concat([hashed, unhashed])
        .sort([SHARPE, "reward", "cycle", "index"], descending=[True, True, False, False])
        .head(n)
        .select(
            pl.int_range(1, pl.len() + 1).alias("rank"),
            "cycle",
            "index",
            "name",
            "model_family",
            pl.col("copies").cast(pl.Int64),
            "reward",
            pl.col(SHARPE).alias("sharpe"),
            pl.col(DSR).alias("dsr"),
            pl.col(HOLDOUT_SHARPE).alias("holdout_sharpe"),
        )
    )


def cycle_summary(annotated: pl.DataFrame) -> pl.DataFrame:
    """One row per cycle: outcome, reward and Sharpe spread, family diversity, custom features, duplicates."""
    parsed = annotated.group_by("cycle").agg(
        parsed_pct=100 * pl.col("parsed").mean(),
        custom_pct=100 * pl.col("custom_features").drop_nulls().mean(),
    )
    top_family = (
        family_share_by_cycle(annotated)
        .sort(["cycle", "experiments", "model_family"], descending=[False, True, False])
        .unique(subset="cycle", keep="first", maintain_order=True)
        .select("cycle", top_family="model_family", top_family_pct="pct")
    )
    return (
        reward_by_cycle(annotated)
        .join(parsed, on="cycle")
        .join(top_family, on="cycle", how="left")
        .join(family_entropy_by_cycle(annotated).select("cycle", "entropy_bits"), on="cycle")
        .join(duplicates_by_cycle(annotated).select("cycle", "duplicates", "seen_before"), on="cycle")
        .sort("cycle")
    )


def cycle_metrics(annotated: pl.DataFrame, cycle: int) -> dict[str, float]:
    """One cycle's headline numbers as MLflow logs them at step=cycle: the numeric columns of its row of
    `cycle_summary` (the report's Cycles table, same rules) and `failure_pct_<class>` for every error class.

    Pass the run's experiments up to and including `cycle`: `seen_before` looks at the earlier cycles.
    """
    rows = cycle_summary(annotated).filter(pl.col("cycle") == cycle).to_dicts()
    if not rows:
        raise ValueError(f"there are no experiments of cycle {cycle}")
    numbers = {
        key: float(value)
        for key, value in rows[0].items()
        if key != "cycle" and isinstance(value, int | float) and not isinstance(value, bool)
    }
    failures = failure_taxonomy(annotated.filter(pl.col("cycle") == cycle)).filter(pl.col("status") != "ok")
    return numbers | {f"failure_pct_{row['status']}": float(row["pct"]) for row in failures.to_dicts()}


@dataclass(frozen=True)
class RunAnalysis:
    """Every table of one run, computed once; the report, the plots and the terminal read these."""

    run: str
    annotated: pl.DataFrame
    family_usage: pl.DataFrame
    family_share_by_cycle: pl.DataFrame
    feature_usage: pl.DataFrame
    failure_taxonomy: pl.DataFrame
    failures_by_cycle: pl.DataFrame
    cycles: pl.DataFrame
    top_experiments: pl.DataFrame
    archive_by_cycle: pl.DataFrame
    elite_grid: pl.DataFrame
    headline: dict[str, Any]


def analyse(frame: pl.DataFrame, top_n: int = 10) -> RunAnalysis:
    """Every table for the experiments of one run."""
    runs = frame["run"].unique().to_list() if "run" in frame.columns else []
    if len(runs) != 1:
        raise ValueError(f"analyse() takes the experiments of exactly one run, got runs {sorted(runs)}")
    annotated = annotate(frame)
    analysis = RunAnalysis(
        run=runs[0],
        annotated=annotated,
        family_usage=family_usage(annotated),
        family_share_by_cycle=family_share_by_cycle(annotated),
        feature_usage=feature_usage(annotated),
        failure_taxonomy=failure_taxonomy(annotated),
        failures_by_cycle=failures_by_cycle(annotated),
        cycles=cycle_summary(annotated),
        top_experiments=top_experiments(annotated, top_n),
        archive_by_cycle=archive_by_cycle(annotated),
        elite_grid=elite_grid(annotated),
        headline={},
    )
    analysis.headline.update(_headline(analysis))
    return analysis


#: The headline numbers, in display order: key, label, format.
HEADLINE_FIELDS = (
    ("prompt_versions", "prompt version", "text"),
    ("cycles", "cycles", "int"),
    ("experiments", "experiments", "int"),
    ("parsed_pct", "parsed (a valid spec)", "pct"),
    ("ok_pct", "ran and scored", "pct"),
    ("top_failure", "most common failure", "text"),
    ("top_family", "most used model family", "text"),
    ("family_entropy_bits", "model-family entropy (bits)", "num"),
    ("custom_pct", "custom feature engineering", "pct"),
    ("reward_mean_first", "mean reward, first cycle", "num"),
    ("reward_mean_last", "mean reward, last cycle", "num"),
    ("best_sharpe", "best in-sample Sharpe", "num"),
    ("top_sharpe_mean", "top experiments: mean in-sample Sharpe", "num"),
    ("top_holdout_mean", "top experiments: mean holdout Sharpe", "num"),
    ("duplicate_pct", "repeated code (seen earlier in the run)", "pct"),
    ("cached_pct", "executions whose result came from the cache", "pct"),
    ("archive_coverage_pct", "archive coverage (cells with an elite)", "pct"),
    ("qd_score", "QD score", "num"),
)


def _headline(analysis: RunAnalysis) -> dict[str, Any]:
    annotated, cycles, top = analysis.annotated, analysis.cycles, analysis.top_experiments
    archive = analysis.archive_by_cycle
    failures = analysis.failure_taxonomy.filter((pl.col("status") != "ok") & (pl.col("experiments") > 0))
    worst = failures.sort("experiments", descending=True).head(1)
    usage = analysis.family_usage.head(1)
    hashed = annotated.filter(pl.col("code_hash").is_not_null())
    repeated = hashed.height - hashed["code_hash"].n_unique()
    versions = annotated["prompt_version"].drop_nulls().unique().sort().to_list()
    return {
        "prompt_versions": ", ".join(versions) or None,
        "cycles": cycles.height,
        "experiments": annotated.height,
        "parsed_pct": _pct(annotated["parsed"].sum(), annotated.height),
        "ok_pct": _pct((annotated["status"] == "ok").sum(), annotated.height),
        "top_failure": f"{worst['status'][0]} ({worst['pct'][0]:.1f}%)" if worst.height else None,
        "top_family": f"{usage['model_family'][0]} ({usage['pct'][0]:.1f}%)" if usage.height else None,
        "family_entropy_bits": _identified(annotated)
        .group_by("model_family")
        .agg(n=pl.len())
        .sort("model_family")
        .select(_entropy_bits(pl.col("n")))
        .item(),
        "custom_pct": _pct(annotated["custom_features"].sum(), annotated["custom_features"].count()),
        "reward_mean_first": cycles["reward_mean"][0] if cycles.height else None,
        "reward_mean_last": cycles["reward_mean"][-1] if cycles.height else None,
        "best_sharpe": top["sharpe"].max() if top.height else None,
        "top_sharpe_mean": top["sharpe"].mean() if top.height else None,
        "top_holdout_mean": top["holdout_sharpe"].mean() if top["holdout_sharpe"].count() else None,
        "duplicate_pct": _pct(repeated, hashed.height),
        "cached_pct": _pct(annotated["cached"].sum(), annotated["cached"].count()),
        "archive_coverage_pct": archive["coverage_pct"][-1] if archive.height else None,
        "qd_score": archive["qd_score"][-1] if archive.height else None,
    }


def _pct(part: float, whole: float) -> float | None:
    return 100 * part / whole if whole else None


# ---- base beside trained: what evaluate-policy's sample shows the policy writes --------------------------------

#: A model setting is shown when at least this share of one policy's experiments that ran set it.
SETTING_MIN_SHARE = 0.1
#: At most this many model settings are shown (the most often set first).
SETTINGS_SHOWN = 8
_POLICY_COLUMNS = {"aspect": pl.String, "value": pl.String, "base": pl.Float64, "trained": pl.Float64}


@dataclass(frozen=True)
class _Written:
    """What one completion of evaluate-policy's sample wrote, and whether it ran."""

    status: str
    family: str | None
    blocks: tuple[str, ...]
    custom: bool
    windows: list[float]
    settings: dict[str, float]
    turnover: float | None


def policy_changes(sample: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """What the base and the final policy wrote, from `sharpe-rl evaluate-policy`'s sample: (shares, numbers).

    `sample` has one row per completion: `policy` ("base" or "final"), `index`, `status`, `family`,
    `completion` and optionally `reward_turnover`. Each completion is read once, for both tables.
    """
    written = _written_by_policy(sample)
    return _policy_shares(written), _policy_numbers(written)


def _policy_shares(written: dict[str, list[_Written]]) -> pl.DataFrame:
    """aspect, value, base, trained (percentages) and change (points).

    Outcomes are shares of all completions of a policy; model families, feature blocks and custom
    features are shares of those that ran (`status == "ok"`).
    """
    aspects = (
        ("outcome", lambda w: [w.status], False, STATUSES),
        ("model family", lambda w: [w.family or UNKNOWN_FAMILY], True, None),
        ("feature block", lambda w: list(w.blocks), True, FEATURE_BLOCKS),
        ("features", lambda w: ["custom"] if w.custom else [], True, ("custom",)),
    )
    rows = []
    for aspect, values_of, of_ran, order in aspects:
        counts, totals = {}, {}
        for which, completions in written.items():
            chosen = [w for w in completions if w.status == "ok"] if of_ran else completions
            counts[which] = Counter(value for w in chosen for value in values_of(w))
            totals[which] = len(chosen)
        seen = set(counts["base"]) | set(counts["final"])
        for value in [v for v in order if v in seen] + sorted(seen - set(order)) if order else sorted(seen):
            shares = {w: 100 * counts[w][value] / totals[w] if totals[w] else None for w in written}
            rows.append({"aspect": aspect, "value": value, "base": shares["base"], "trained": shares["final"]})
    return _with_change(rows)


def _policy_numbers(written: dict[str, list[_Written]]) -> pl.DataFrame:
    """aspect, value, base, trained and change, over the completions that ran: mean turnover on the reward window,
    the median feature window, and the median of each model setting that many of them set."""
    ran = {which: [w for w in completions if w.status == "ok"] for which, completions in written.items()}
    turnover = {w: _mean([x.turnover for x in ran[w] if x.turnover is not None]) for w in ran}
    windows = {w: _median([window for x in ran[w] for window in x.windows]) for w in ran}
    rows = [
        {"aspect": "turnover", "value": "mean, reward window", "base": turnover["base"], "trained": turnover["final"]},
        {"aspect": "feature window", "value": "median (bars)", "base": windows["base"], "trained": windows["final"]},
    ]
    setters = Counter(name for written in ran.values() for w in written for name in w.settings)

    def common(name: str) -> bool:  # set by at least SETTING_MIN_SHARE of one policy's experiments that ran
        return any(
            written and sum(name in w.settings for w in written) >= SETTING_MIN_SHARE * len(written)
            for written in ran.values()
        )

    shown = [name for name in sorted(setters, key=lambda n: (-setters[n], n)) if common(name)]
    for name in shown[:SETTINGS_SHOWN]:
        medians = {x: _median([w.settings[name] for w in ran[x] if name in w.settings]) for x in ran}
        rows.append(
            {
                "aspect": "model setting",
                "value": f"{name} (median)",
                "base": medians["base"],
                "trained": medians["final"],
            }
        )
    return _with_change(rows)


def _written_by_policy(sample: pl.DataFrame) -> dict[str, list[_Written]]:
    turnover = "reward_turnover" in sample.columns
    return {
        which: [
            _read(row["status"], row["family"], row["completion"], row["reward_turnover"] if turnover else None)
            for row in sample.filter(pl.col("policy") == which).sort("index").iter_rows(named=True)
        ]
        for which in ("base", "final")
    }


def _read(status: str, family: str | None, completion: str, turnover: float | None) -> _Written:
    try:
        spec = parse_spec(completion)
    except SpecError:
        return _Written(status, family, (), False, [], {}, turnover)
    features = classify_features(spec.features)
    windows, settings = feature_windows(spec.features), model_settings(spec.model)
    return _Written(status, family, features.blocks, bool(features.is_custom), windows, settings, turnover)


def _with_change(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=_POLICY_COLUMNS).with_columns(change=pl.col("trained") - pl.col("base"))


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
