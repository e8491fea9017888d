"""A run's policy, ready to sample: the one setup behind `sharpe-rl sample` and evaluate-policy.

`run_policy(runs_dir, run)` reads the settings the run was started with (the defaults when there is
no run), renders the prompt the run shows for its dataset (without elites), and says which weights
to sample: the base policy, and the run's latest checkpoint. Sampling is then
`policy.learner.generate(ref, [prompt] * n, ...)`, the same call a cycle makes, so the same ref,
prompt and seed give the same completions everywhere. Nothing is loaded here beyond the panel:
every input is checked before a model is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from sharpe_rl.config import RunConfig
from sharpe_rl.data.panel import detect_interval, load_panel
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.policy.generation import policy_source
from sharpe_rl.policy.learner import PolicyRef
from sharpe_rl.policy.prompts import run_prompt
from sharpe_rl.steps import run_config_path

#: The run a base policy sampled outside any run is filed under: no run can have it (a run name starts with a
#: letter or a digit), so no run's checkpoints are ever read for it.
OUTSIDE_A_RUN = "-base-"


class SamplingError(ValueError):
    """The policy cannot be sampled as asked; the message says what to do."""


class RunPolicy(BaseModel):
    """A run's settings, the prompt it shows, and its policy: the base and the latest checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: RunConfig
    prompt: str
    base: PolicyRef
    latest: PolicyRef  # the base until the run saved a checkpoint


def run_policy(
    runs_dir: Path,
    run: str | None = None,
    *,
    model: str | None = None,
    dataset: Path | None = None,
    prompt_version: str | None = None,
    backend: Literal["transformers", "vllm"] | None = None,
) -> RunPolicy:
    """The policy of `run` under `runs_dir` as the run left it (None: a base policy under the default settings).

    `model`, `dataset`, `prompt_version` and `backend` replace the run's own; a run's checkpoints hold adapters of
    its base model, so another `model` for a run is refused. Raises `SamplingError` (no such run, another model,
    no policy there) or the panel's `PanelError`.
    """
    config = RunConfig()
    if run is not None:
        saved = run_config_path(runs_dir, run)
        if not saved.is_file():
            raise SamplingError(f"no run {run!r} under {runs_dir} ({saved} is missing)")
        config = RunConfig.model_validate_json(saved.read_text())
        if model is not None and model != config.policy.model:
            raise SamplingError(f"run {run}'s adapters belong to its base policy {config.policy.model}: drop --policy")
    panel = load_panel(dataset or config.dataset)
    symbols = panel.get_column("symbol").unique().sort().to_list()
    prompt = run_prompt(config, detect_interval(panel), symbols, version=prompt_version or "")
    policy = config.policy.model_copy(
        update={"model": model or config.policy.model, "backend": backend or config.policy.backend}
    )
    try:
        policy_source(policy)
    except FileNotFoundError as exc:
        raise SamplingError(str(exc)) from None
    base = PolicyRef(policy=policy, ppo=config.ppo, seed=config.seed, runs_dir=runs_dir, run=run or OUTSIDE_A_RUN)
    last = None if run is None else Checkpoints(runs_dir, run).latest_cycle()
    return RunPolicy(config=config, prompt=prompt, base=base, latest=base if last is None else base.after(last))
