"""`sharpe-rl run|evaluate-policy|reset|rerun|report`: RL runs, and what can be asked of them afterwards.

`run` and `evaluate-policy` start Prefect flows: they check their inputs first, then point Prefect at the
runs folder's state and import the flows, so that the other commands never load Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli.inputs import existing_runs_dir, fail, writable_folder
from cli.options import RUN_DEFAULTS, Executor, Scheme, TaskRunner, default, setting, validated
from cli.render import comparison_table, quiet_libraries, rerun_table
from sharpe_rl.config import RunConfig, TaskRunnerConfig
from sharpe_rl.data.panel import PanelError, load_panel


def run(
    cycles: Annotated[int, setting("cycles")] = default("cycles"),
    batch_size: Annotated[int, setting("batch_size")] = default("batch_size"),
    data: Annotated[Path, setting("dataset")] = default("dataset"),
    prompt: Annotated[str, setting("prompt_version")] = default("prompt_version"),
    executor: Annotated[Executor, setting("sandbox.executor")] = default("sandbox.executor"),
    name: Annotated[str | None, setting("name")] = None,
    scheme: Annotated[Scheme, setting("eval.scheme")] = default("eval.scheme"),
    seed: Annotated[
        int | None,
        setting(
            "seed",
            "Default: a fresh one for a new run, printed; a resumed run keeps its own. The same seed and settings "
            "repeat a run.",
        ),
    ] = None,
    policy: Annotated[str, setting("policy.model")] = default("policy.model"),
    workers: Annotated[int, setting("sandbox.workers")] = default("sandbox.workers"),
    task_runner: Annotated[TaskRunner, setting("task_runner.kind")] = default("task_runner.kind"),
    dask_address: Annotated[str | None, setting("task_runner.dask_address")] = None,
    tracking_uri: Annotated[str | None, setting("tracking_uri")] = None,
    runs_dir: Annotated[Path, setting("runs_dir")] = default("runs_dir"),
    verbose: Annotated[bool, typer.Option(help="Show Prefect's own logs.")] = False,
) -> None:
    """Run (or resume) an RL run: generate → execute → score → log → update, `cycles` times."""
    config = checked_run_config(
        name=name,
        cycles=cycles,
        batch_size=batch_size,
        dataset=data,
        prompt_version=prompt,
        seed=seed or 0,  # the flow draws a fresh one when none was given
        runs_dir=runs_dir,
        eval=RUN_DEFAULTS.eval.model_copy(update={"scheme": scheme.value}),
        sandbox=RUN_DEFAULTS.sandbox.model_copy(update={"executor": executor.value, "workers": workers}),
        task_runner={"kind": task_runner.value, "dask_address": dask_address},
        tracking_uri=tracking_uri,
        policy=RUN_DEFAULTS.policy.model_copy(update={"model": policy}),
    )
    from sharpe_rl.services import use_orchestration_environment

    api = use_orchestration_environment(runs_dir)
    if not verbose:
        quiet_libraries()
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
        fail(exc)


def checked_run_config(**settings: object) -> RunConfig:
    """The run's settings, checked before anything starts: values in range, the dataset a readable panel, the
    prompt version and the policy there, the tracking server up. A bad one exits in one line."""
    from sharpe_rl.policy.generation import policy_source
    from sharpe_rl.policy.prompts import prompt_versions
    from sharpe_rl.tracking import Tracker

    config = validated(RunConfig, RUN_DEFAULTS.model_dump() | settings, "run")
    if config.prompt_version not in prompt_versions():
        fail(f"--prompt {config.prompt_version}: no such prompt version; choose one of {', '.join(prompt_versions())}")
    try:
        load_panel(config.dataset)
        policy_source(config.policy)
    except (PanelError, FileNotFoundError) as exc:
        fail(exc)
    writable_folder(config.runs_dir, "--runs-dir")
    if config.tracking_uri and not Tracker(config.runs_dir, config.tracking_uri).reachable():
        fail(f"--tracking-uri {config.tracking_uri}: the MLflow server does not answer; start it, or drop the option")
    return config


def evaluate_policy(
    run: Annotated[str, typer.Argument(help="The run whose latest checkpoint is compared with its base policy.")],
    n: Annotated[
        int, typer.Option("--n", min=64, help="Completions per policy (at least 64: four blocks of 16).")
    ] = 64,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (default: one no training cycle used).")] = None,
    task_runner: Annotated[TaskRunner | None, setting("task_runner.kind", "Default: the run's own.")] = None,
    dask_address: Annotated[
        str | None, setting("task_runner.dask_address", "Alone, it means --task-runner dask.")
    ] = None,
    runs_dir: Annotated[Path, setting("runs_dir")] = default("runs_dir"),
    verbose: Annotated[bool, typer.Option(help="Show Prefect's own logs.")] = False,
) -> None:
    """Is the learning real? Sample the base policy and the run's final checkpoint alike, execute, compare."""
    from sharpe_rl.evaluate_policy import EVALUATION_SEED, ComparisonError, plan_comparison
    from sharpe_rl.evaluation import DatasetMismatch

    where = None  # where the run's executions ran
    if task_runner is not None or dask_address is not None:
        kind = TaskRunner.dask if task_runner is None else task_runner
        settings = {"kind": kind.value, "dask_address": dask_address}
        where = validated(TaskRunnerConfig, settings, "evaluate-policy", at="task_runner")
    try:  # the run, its checkpoint and its dataset are checked before anything starts
        plan = plan_comparison(existing_runs_dir(runs_dir), run, n, EVALUATION_SEED if seed is None else seed)
    except (ComparisonError, DatasetMismatch, PanelError) as exc:
        fail(exc)
    from sharpe_rl.services import use_orchestration_environment

    api = use_orchestration_environment(runs_dir)
    if not verbose:
        quiet_libraries()
    from flows.evaluate_policy import evaluate_policy as evaluate_policy_flow
    from sharpe_rl.progress import RunProgress
    from sharpe_rl.sandbox import InfrastructureError

    stdout, stderr = Console(), Console(stderr=True)
    stderr.print(
        f"Prefect: {api or 'a temporary local server'}; sampling {n} completions from the base policy and from "
        f"run {run} after cycle {plan.final.cycle}, then executing them on the reward window and the holdout",
        soft_wrap=True,
    )
    try:
        with RunProgress(stderr):
            rows = evaluate_policy_flow(run, n=n, seed=plan.seed, runs_dir=runs_dir, task_runner=where)
    except (ComparisonError, InfrastructureError, DatasetMismatch) as exc:
        fail(exc)
    stdout.print(comparison_table(rows, f"{run}: base policy vs cycle {plan.final.cycle}, {n} completions each"))
    stdout.print(
        "difference = final − base, with its 95% paired bootstrap interval; an interval that contains 0 "
        f"cannot be told from noise. Saved in {runs_dir / 'evaluations' / (run + '.json')}; the run's post-mortem "
        f"says it in its headline: {runs_dir / 'reports' / run / 'report.html'} (also in its MLflow run)",
        soft_wrap=True,
    )


def reset(
    runs_dir: Annotated[Path, setting("runs_dir")] = default("runs_dir"),
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Archive every run's checkpoints and the replay buffer: runs restart from the base policy."""
    from sharpe_rl.reset import reset_plan, reset_runs

    stdout = Console()
    plan = reset_plan(existing_runs_dir(runs_dir))
    if not plan:
        stdout.print(f"nothing to archive under {runs_dir}", soft_wrap=True)
        return
    stdout.print(f"a reset archives, under {runs_dir}/*-archive/:", soft_wrap=True)
    for what in plan:
        stdout.print(f"  {what}", soft_wrap=True, markup=False)
    if not yes:
        typer.confirm("Archive them (every run then restarts from the base policy)?", abort=True)
    for what, where in reset_runs(runs_dir).items():
        stdout.print(f"{what}: {'archived to ' + where if where else 'nothing to archive'}", soft_wrap=True)


def rerun(
    run: Annotated[str, typer.Argument(help="Run name.")],
    cycle: Annotated[int, typer.Argument(min=0, help="Cycle to run again.")],
    index: Annotated[int | None, typer.Option(min=0, help="Only this experiment of the cycle.")] = None,
    executor: Annotated[Executor | None, setting("sandbox.executor", "Default: the run's own.")] = None,
    runs_dir: Annotated[Path, setting("runs_dir")] = default("runs_dir"),
) -> None:
    """Re-execute a past cycle (or one experiment) from the replay buffer and show whether it reproduces."""
    from sharpe_rl.rerun import rerun_experiments
    from sharpe_rl.sandbox import InfrastructureError
    from sharpe_rl.steps import RunError

    stdout = Console()
    try:
        reruns = rerun_experiments(existing_runs_dir(runs_dir), run, cycle, index, executor.value if executor else None)
    except (RunError, InfrastructureError) as exc:
        fail(exc)
    stdout.print(rerun_table(reruns))
    stdout.print(f"{sum(r.reproduces for r in reruns)} of {len(reruns)} reproduced")


def report(
    run: Annotated[str | None, typer.Argument(help="Run name (default: the latest run in the buffer).")] = None,
    compare: Annotated[
        str | None, typer.Option("--compare", help="Another run to put side by side (e.g. prompt v1 vs v2).")
    ] = None,
    runs_dir: Annotated[Path, setting("runs_dir")] = default("runs_dir"),
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: <runs-dir>/reports/<run>[-vs-<other>]).")
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="How many top experiments to list.")] = 10,
) -> None:
    """Print a run's post-mortem and write it as Markdown + HTML with its plots."""
    # Imported here so that the other commands do not pay for loading the policy's model stack.
    from sharpe_rl.analysis.report import build_report, print_report, select_run
    from sharpe_rl.holdout import report_frame

    frame = report_frame(existing_runs_dir(runs_dir))
    try:
        name = select_run(frame, run)["run"][0]
        target = out or runs_dir / "reports" / (f"{name}-vs-{compare}" if compare else name)
        built = build_report(frame, target, run=name, compare_run=compare, top_n=top, runs_dir=runs_dir)
    except ValueError as exc:
        fail(exc)
    print_report(built, Console())
