"""Build policy: train the tiny Mistral-architecture policy on the CPU and save it for from_pretrained."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from sharpe_rl.config import TinyPolicyConfig
from tasks.build_policy import train_tiny_policy


@flow(name="build_policy")
def build_policy(out: Path = Path("runs/policy/tiny"), config: TinyPolicyConfig = TinyPolicyConfig()) -> dict:  # noqa: B008
    """Build the tiny policy into `out` (the default PolicyConfig.model) and return its build info."""
    return train_tiny_policy(out, config)
