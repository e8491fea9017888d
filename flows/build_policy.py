"""Build policy: train the tiny Mistral-architecture policy on the CPU and save it for from_pretrained."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE

from sharpe_rl.config import TinyPolicyConfig
from sharpe_rl.policy.tiny import build_tiny_policy


@task(cache_policy=NONE)
def train_tiny_policy(out: Path, config: TinyPolicyConfig) -> dict:
    return build_tiny_policy(out, config)


@flow(name="build_policy")
def build_policy(out: Path = Path("runs/policy/tiny"), config: TinyPolicyConfig = TinyPolicyConfig()) -> dict:  # noqa: B008
    """Build the tiny policy into `out` (the default PolicyConfig.model) and return its build info."""
    return train_tiny_policy(out, config)
