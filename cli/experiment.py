"""`sharpe-rl exec`: one experiment checked, run in the sandbox and scored as a run would, its result printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli.inputs import fail, spec_text
from cli.options import RUN_DEFAULTS, Executor, default, setting
from cli.render import print_execution
from sharpe_rl.data.panel import PanelError, load_panel
from sharpe_rl.data.splits import ProtocolError

#: The score `exec --json` reports, besides the reward and the evidence.
SCORE_METRICS = ("sharpe_net", "sharpe_gross", "turnover", "hit_rate")


def exec_spec(
    spec_file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="An ExperimentSpec as JSON (prose around it is fine).")
    ],
    data: Annotated[Path, setting("dataset")] = default("dataset"),
    executor: Annotated[Executor, setting("sandbox.executor")] = default("sandbox.executor"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check, run and score one experiment as a run would, print the result and the score on the reward window.
    Exits 0 whenever it was run, whatever the outcome; non-zero only when the sandbox itself cannot run."""
    # Imported here so that the other commands do not pay for the Docker SDK.
    from sharpe_rl.evaluation import DatasetMismatch, EvaluationRef, evaluate, load_evaluation
    from sharpe_rl.sandbox import InfrastructureError

    text = spec_text(spec_file)
    # one experiment: no sandbox need be started ahead for a next one
    sandbox = RUN_DEFAULTS.sandbox.model_copy(update={"executor": executor.value, "warm_pool": False})
    try:
        load_panel(data)  # a missing or unreadable panel is said before anything starts
        ref = EvaluationRef.of(
            data, RUN_DEFAULTS.eval, sandbox, RUN_DEFAULTS.runs_dir / "cache", seed=RUN_DEFAULTS.seed
        )
        outcome = evaluate(text, ref)
        band = load_evaluation(ref).noskill if outcome.metrics is not None else None  # beside a Sharpe
    except (PanelError, DatasetMismatch, ProtocolError, OSError) as exc:
        fail(exc)
    except InfrastructureError as exc:
        fail(exc, 2)
    metrics = outcome.metrics
    score = {name: getattr(metrics, name) if metrics is not None else None for name in SCORE_METRICS} | {
        "evidence": band.evidence(metrics.sharpe_net) if metrics is not None and band is not None else None,
        "reward": outcome.reward(RUN_DEFAULTS.reward, noskill_sigma=band.sigma if band else None),
    }
    if as_json:
        found = {"status": outcome.status, "error_class": outcome.error_class, "message": outcome.message}
        shown = outcome.result.model_dump(mode="json") if outcome.result is not None else found
        noskill = band.model_dump() if band is not None else None
        typer.echo(json.dumps(shown | {"outcome": outcome.status, "score": score, "noskill": noskill}, indent=2))
        return
    print_execution(Console(), outcome, score, band)
