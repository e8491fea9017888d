"""Render the versioned prompt templates under `prompts/` for one dataset.

A prompt version is a Jinja2 file `prompts/<version>.j2`. Everything that depends on the data
(the columns and index `make_features(df)` receives, the bar interval, the decisions, the label
horizon, the history, the symbols) is passed in by the caller from the loaded dataset and the
evaluation's clock, never written into a template, so a dataset with other columns gets a prompt
that lists those columns. The allowed imports are rendered from
`ALLOWED_PACKAGES`, the same list the static checks enforce.

Partial templates live under `prompts/blocks/` and are not versions: `blocks/inspiration.j2`
shows a few elites of the run's archive (`EliteArchive.inspiration`); `v6_inspiration` includes
it when `render_prompt` is given elites. `blocks/panel_rules.j2` is the rules text of `v5_rules`
and `v6_inspiration`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
import jinja2.meta

import sharpe_rl
from sharpe_rl.config import RunConfig
from sharpe_rl.data.clock import Clock, describe_duration
from sharpe_rl.sandbox.contract import ALLOWED_PACKAGES, FEATURE_INDEX, OHLCV_COLUMNS

if TYPE_CHECKING:
    from sharpe_rl.archive import Elite

PROMPTS_DIR = Path(sharpe_rl.__file__).parents[1] / "prompts"

_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PROMPTS_DIR),
        undefined=jinja2.StrictUndefined,  # a template asking for a value we do not pass is a bug
        keep_trailing_newline=True,
        autoescape=False,  # plain text for a language model, not HTML
    )
    # Worked examples are written as readable code in the template and embedded as exact JSON
    # strings, so the example shows precisely the output format the parser expects.
    env.filters["json_string"] = json.dumps
    env.filters["experiment_json"] = _experiment_json
    return env


def _experiment_json(spec_json: str) -> str:
    """A stored spec in the layout a completion has: name, features, model, `json.dumps` separators."""
    spec = json.loads(spec_json)
    return json.dumps({key: spec[key] for key in ("name", "features", "model")})


def prompt_versions() -> list[str]:
    """The prompt versions available under `prompts/`, sorted."""
    return sorted(path.stem for path in PROMPTS_DIR.glob("*.j2"))


def describe_interval(interval: timedelta | str) -> str:
    """A bar interval as an adjective: `timedelta(hours=4)` -> "4-hour"; strings pass through."""
    if isinstance(interval, str):
        return interval
    seconds = int(interval.total_seconds())
    if seconds <= 0:
        raise ValueError(f"bar interval must be positive, got {interval}")
    for unit, size in _UNITS:
        if seconds % size == 0:
            return f"{seconds // size}-{unit}"
    raise AssertionError("unreachable: every whole number of seconds divides by 1")


def run_prompt(
    config: RunConfig, interval: timedelta, symbols: Sequence[str], elites: Sequence[Elite] = (), version: str = ""
) -> str:
    """The prompt a run shows for its dataset: its prompt version (or `version`), its evaluation's clock on the
    dataset's bars, and its symbols named only when `config.name_symbols` says so (by default the policy learns
    how many, not which)."""
    return render_prompt(
        version or config.prompt_version,
        OHLCV_COLUMNS,
        interval,
        Clock.of(config.eval, interval),
        list(symbols) if config.name_symbols else len(symbols),
        elites=elites,
    )


def render_prompt(
    version: str,
    columns: Sequence[str],
    interval: timedelta | str,
    clock: Clock,
    symbols: Sequence[str] | int,
    elites: Sequence[Elite] = (),
) -> str:
    """Render prompt `version` for a dataset.

    `columns` are exactly the columns the `df` passed to `make_features` has (the panel's
    columns; `timestamp` and `symbol` are its index, `contract.FEATURE_INDEX`). `clock` is the
    evaluation's decisions, label horizon and history on the panel's bars (`sharpe_rl.data.clock`).
    `symbols` are the symbols' names, or their number only (the names are then not given: what a
    model remembers of a named coin cannot be applied; the sandbox's data is disguised too).
    `elites` (from `EliteArchive.inspiration`) are shown by versions that use them
    (`v6_inspiration`); giving them to another version is an error, not a silent no-op.
    """
    if version not in prompt_versions():
        raise ValueError(f"unknown prompt version {version!r}; available: {', '.join(prompt_versions())}")
    if not columns:
        raise ValueError("a prompt needs the dataset's columns")
    stdlib = sorted(name for name in ALLOWED_PACKAGES if name in sys.stdlib_module_names)
    packages = sorted(ALLOWED_PACKAGES - set(stdlib))
    if elites and not shows_elites(version):
        raise ValueError(f"prompt version {version!r} does not show elites; use v6_inspiration or pass none")
    template = _environment().get_template(f"{version}.j2")
    return template.render(
        columns=list(columns),
        index=list(FEATURE_INDEX),
        interval=describe_interval(interval),
        decisions=describe_decisions(clock),
        fitting=describe_fitting(clock),
        horizon=describe_duration(clock.horizon),
        lookback=describe_duration(clock.lookback),
        symbols=describe_symbols(symbols),
        packages=packages,
        stdlib=stdlib,
        elites=list(elites),
    )


def describe_decisions(clock: Clock) -> str:
    """When the experiment is asked, as a prompt says it."""
    if clock.every is not None:
        period = "UTC day" if clock.every == timedelta(days=1) else f"UTC period of {describe_duration(clock.every)}"
        return f"once per {period}, at the close of its last bar"
    if clock.every_bars == 1:
        return "at every bar"
    return f"every {clock.every_bars} bars"


def describe_fitting(clock: Clock) -> str:
    """Which rows a model is fitted on, as a prompt says it."""
    return "the rows at past decision times" if clock.fit_at_decisions else "every past bar"


def describe_symbols(symbols: Sequence[str] | int) -> str:
    """The symbols as a prompt names them: their names, or how many there are when the names are not given."""
    if isinstance(symbols, int):
        return f"{symbols} symbols, whose names are not given"
    return ", ".join(symbols)


def shows_elites(version: str) -> bool:
    """Whether prompt `version` renders the archive's elites it is given (`v6_inspiration`)."""
    return "elites" in _template_variables(version)


def _template_variables(version: str) -> set[str]:
    env = _environment()
    source, _, _ = env.loader.get_source(env, f"{version}.j2")
    return jinja2.meta.find_undeclared_variables(env.parse(source))
