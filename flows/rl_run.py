"""An RL run: the cycle repeated `cycles` times, resumable, with the post-mortem kept up to date.

The flow's parameters are the run's form in the Prefect UI (Deployments → rl_run/nightly → Run → Custom
run): a night's choices at the top, every other setting grouped below them under `advanced`. The run is
named after its flow run (the form's Run Name): the name of an unfinished run resumes it. `run(config)`
runs the flow with the settings of a `RunConfig` (the command line, the tests, the benches).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from prefect import flow

from flows.cycle import cycle
from flows.holdout import holdout
from flows.task_runners import task_runner
from sharpe_rl.config import AdvancedSettings, RunConfig
from sharpe_rl.policy.prompts import prompt_versions
from tasks.report import publish_report
from tasks.run import carry_over, finish_run, start_run
from tasks.say import say

_DEFAULTS = RunConfig()
#: The prompt versions under prompts/: a drop-down in the form.
PromptVersion = Literal[tuple(prompt_versions())]  # type: ignore[valid-type]


@flow(name="rl_run")
def rl_run(
    cycles: int = _DEFAULTS.cycles,
    batch_size: int = _DEFAULTS.batch_size,
    dataset: Path = _DEFAULTS.dataset,
    prompt_version: PromptVersion = _DEFAULTS.prompt_version,
    seed: int | None = None,
    advanced: AdvancedSettings = _DEFAULTS.advanced(),  # noqa: B008 - a pydantic default renders the form's groups
) -> str:
    """Start (or resume) the run named after this flow run, run its unfinished cycles, publish the post-mortem.

    Args:
        cycles: Cycles of generate → execute → score → log → update (a resumed run runs those it has not done).
        batch_size: Experiments the policy writes per cycle.
        dataset: The OHLCV panel (Parquet or CSV), a path on the worker's machine.
        prompt_version: The prompt template under prompts/.
        seed: Seed of generation, folds and models. Empty: a new run draws a fresh one, said in its logs (the same
            seed and settings repeat a run), and a resumed run keeps its own.
        advanced: Everything else: evaluation, sandbox, reward, policy, PPO, where executions run and state lives.
    """
    run = start_run(cycles, batch_size, dataset, prompt_version, seed, advanced)
    run_cycle = cycle.with_options(task_runner=task_runner(run.config.task_runner, run.config.sandbox.workers))
    score_holdout = holdout.with_options(task_runner=task_runner(run.config.task_runner, run.config.sandbox.workers))
    policy = run.policy
    try:
        for index in run.pending_cycles:
            policy, line = run_cycle(run, policy, index)
            say(line)
            publish_report(run)
        score_holdout(run)
        carry_over(run)
        publish_report(run)
    except BaseException:
        finish_run(run, failed=True)  # marked FAILED in MLflow, not left RUNNING
        raise
    finish_run(run)
    return run.name


def run(config: RunConfig, *, seeded: bool = True) -> str:
    """Run the flow with the settings of `config`, named `config.name` (a new dated name when it has none).

    `seeded=False` ignores `config.seed`, as a form with no seed does: a new run draws a fresh one, a resumed
    run keeps its own.
    """
    name = config.name or datetime.now().strftime("run-%Y%m%d-%H%M%S")
    return rl_run.with_options(flow_run_name=name)(
        cycles=config.cycles,
        batch_size=config.batch_size,
        dataset=config.dataset,
        prompt_version=config.prompt_version,
        seed=config.seed if seeded else None,
        advanced=config.advanced(),
    )
