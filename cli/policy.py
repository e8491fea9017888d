"""`sharpe-rl build-policy` and `sharpe-rl sample`: the tiny policy built on the CPU, and what a policy writes.

torch and transformers are imported inside the commands, so that the other commands do not pay for them.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli.inputs import fail, writable_folder
from cli.options import RUN_DEFAULTS, setting
from cli.render import progress_bar, quiet_libraries, sample_summary, sample_table
from sharpe_rl.config import TinyPolicyConfig
from sharpe_rl.data.panel import PanelError

_TINY_DEFAULTS = TinyPolicyConfig()
#: What sample's settings default to: those of the run it samples, else those of a new run.
_THE_RUNS = "Default: the run's, else {}."


def build_policy(
    out: Annotated[Path, typer.Option(help="Where to save it (PolicyConfig.model's default).")] = Path(
        RUN_DEFAULTS.policy.model
    ),
    seed: Annotated[int, setting("seed", model=TinyPolicyConfig)] = _TINY_DEFAULTS.seed,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Do nothing when a finished build is there.")
    ] = False,
) -> None:
    """Build the tiny Mistral-architecture policy: corpus, BPE tokenizer, CPU training, save_pretrained."""
    from transformers.utils import logging as transformers_logging

    from sharpe_rl.policy.tiny import build_tiny_policy, policy_exists

    stdout = Console()
    writable_folder(out, "--out")
    if if_missing and policy_exists(out):
        stdout.print(f"up to date: {out} (a finished build is there; drop --if-missing to rebuild)", soft_wrap=True)
        return
    cfg = TinyPolicyConfig(seed=seed)
    transformers_logging.disable_progress_bar()  # one progress bar: ours
    with progress_bar(Console(stderr=True)) as progress:
        task = progress.add_task("corpus and tokenizer", total=cfg.steps)

        def report(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, total=total, description=f"training, loss {loss:.3f}")

        info = build_tiny_policy(out, cfg, on_step=report)
    stdout.print(
        f"wrote {out}: {info['parameters']:,} parameters, {info['steps']} steps in {info['seconds']:.0f} s, "
        f"final loss {info['loss']['last_20_mean']:.3f} (details in {out}/build_info.json)",
        soft_wrap=True,
    )


def sample(
    n: Annotated[int, typer.Option("--n", min=1, help="Completions to sample.")] = 8,
    prompt: Annotated[str | None, setting("prompt_version", _THE_RUNS.format(RUN_DEFAULTS.prompt_version))] = None,
    data: Annotated[
        Path | None, setting("dataset", "The prompt is rendered for it. " + _THE_RUNS.format(RUN_DEFAULTS.dataset))
    ] = None,
    policy: Annotated[str | None, setting("policy.model", _THE_RUNS.format(RUN_DEFAULTS.policy.model))] = None,
    run_name: Annotated[
        str | None, typer.Option("--run", help="Sample from this run's latest checkpoint instead of the base policy.")
    ] = None,
    runs_dir: Annotated[Path, setting("runs_dir")] = RUN_DEFAULTS.runs_dir,
    seed: Annotated[int, typer.Option(help="Generation seed: the same seed gives the same completions.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
) -> None:
    """Sample completions from the current policy and show their static-check outcome and model family."""
    from sharpe_rl.policy import learner
    from sharpe_rl.policy.preview import preview
    from sharpe_rl.sampling import SamplingError, run_policy
    from sharpe_rl.sandbox.contract import OHLCV_COLUMNS

    quiet_libraries()
    try:  # sampling always runs the transformers backend on the policy itself, adapters included
        chosen = run_policy(
            runs_dir, run_name, model=policy, dataset=data, prompt_version=prompt, backend="transformers"
        )
    except (PanelError, SamplingError) as exc:
        fail(exc)
    try:
        batch = learner.generate(chosen.latest, [chosen.prompt] * n, cycle=chosen.latest.cycle or 0, seed=seed)
    except OSError as exc:  # a Hugging Face id that does not load
        fail(exc)
    finally:
        learner.release(chosen.latest.run)
    previews = preview(batch.generations, OHLCV_COLUMNS)
    if as_json:
        typer.echo(json.dumps([asdict(p) for p in previews], indent=2))
        return
    source = f"base policy {chosen.base.policy.model}"
    if run_name is not None:
        last = chosen.latest.cycle
        source = f"run {run_name}, " + ("no checkpoint yet: " + source if last is None else f"after cycle {last}")
    stdout = Console()
    stdout.print(sample_table(previews, f"{n} completions from the {source}, seed {seed}"))
    stdout.print(sample_summary(previews), soft_wrap=True)
