"""Building the tiny policy as a Prefect task: train it on the CPU and save it for from_pretrained."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from sharpe_rl.config import TinyPolicyConfig
from sharpe_rl.policy.tiny import build_tiny_policy


@task(cache_policy=NONE)
def train_tiny_policy(out: Path, config: TinyPolicyConfig) -> dict:
    return build_tiny_policy(out, config)
