"""Generation backends: one small interface that returns text, token ids and per-token log-probs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Generation:
    """One sampled completion, with what PPO needs to score it again later."""

    prompt: str
    completion: str
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    logprobs: list[float]  # log-prob of each completion token under the sampling policy


class Generator(Protocol):
    """A policy that samples completions for prompts."""

    def generate(self, prompts: list[str], seed: int) -> list[Generation]: ...
