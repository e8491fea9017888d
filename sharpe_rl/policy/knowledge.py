"""What a policy may remember of the markets, and from when on it cannot: its knowledge cutoff.

A language model pretrained on the web has read which coin did best in which month of the years
its data covers. Code it writes can carry that memory ("long this coin in March 2021"), and earn
on any window inside those years: the reward's, and a holdout's too. Data after the cutoff is
what it cannot have seen (the dual-period idea of Look-Ahead-Bench: memorised "alpha" falls off a
cliff there). So a run's holdout starts after the policy's cutoff where the data allows
(`sharpe_rl.data.splits.plan_evaluation`), and the post-mortem says where it lies.

- A policy configured with `PolicyConfig.knowledge_cutoff` (the Mistral-7B preset: its release
  date, 2023-09-27, a bound its training data cannot pass) has that cutoff.
- The tiny policy, built here (`build_info.json` beside its weights), has no market memory: its
  corpus is generated code, with no prices, returns or dates of market events.
- Any other policy's cutoff is unknown: the report says so, and the holdout is the default one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path

from sharpe_rl.config import PolicyConfig

#: Beside a policy built by `sharpe-rl build-policy` (sharpe_rl.policy.tiny.BUILD_INFO).
BUILD_INFO = "build_info.json"
#: What the tiny policy's build records of its market memory.
TINY_MEMORY = "none: its corpus is generated code, with no prices, returns or dates of market events"


@dataclass(frozen=True)
class Knowledge:
    """A policy's knowledge cutoff (None: it has none, or it is unknown), in words too."""

    cutoff: date | None
    text: str
    memory: bool  # whether it may remember market history at all (False: the tiny policy)

    @property
    def holdout_after(self) -> datetime | None:
        """The last instant the policy may know of: a holdout starts after it."""
        return datetime.combine(self.cutoff, time.max, tzinfo=UTC) if self.cutoff else None


def policy_knowledge(cfg: PolicyConfig) -> Knowledge:
    """What `cfg`'s policy may remember of the markets (see the module docstring)."""
    if cfg.knowledge_cutoff is not None:
        return Knowledge(cfg.knowledge_cutoff, f"knowledge cutoff {cfg.knowledge_cutoff:%Y-%m-%d}", True)
    info = Path(cfg.model) / BUILD_INFO
    if info.is_file():
        memory = json.loads(info.read_text()).get("market_memory", TINY_MEMORY)
        return Knowledge(None, f"no market memory (the tiny policy: {memory})", False)
    return Knowledge(None, "knowledge cutoff unknown (set policy.knowledge_cutoff)", True)
