"""Experience: one generated experiment, from prompt to reward — a row of the replay buffer.

The same record is what MLflow logs per experiment and what the post-mortem reads, so every
consumer agrees on one set of field names.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from sharpe_rl.sandbox.contract import ErrorClass

if TYPE_CHECKING:
    from sharpe_rl.policy.generation import Generation


class Experience(BaseModel):
    """One experiment of one cycle of one run."""

    # NaN and infinities (timings reported from inside the sandbox may hold them) stay visible in JSON
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")

    run: str = Field(description="Run name.")
    cycle: int = Field(ge=0, description="Cycle number, from 0.")
    index: int = Field(ge=0, description="Position in the cycle's batch.")
    prompt_version: str
    prompt: str
    completion: str
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    logprobs: list[float] = Field(description="Per-token log-probs of the completion at generation time.")
    spec_json: str | None = Field(None, description="The parsed ExperimentSpec as JSON, when it parsed.")
    name: str | None = Field(None, description="The experiment's own name, when it parsed.")
    model_family: str | None = Field(None, description="From the code's syntax tree (sharpe_rl.analysis).")
    custom_features: bool | None = Field(None, description="Feature code beyond the prompt's template.")
    error_class: ErrorClass | None = Field(None, description="None when the experiment ran and was scored.")
    error_message: str | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict, description="Scoring metrics (reward window).")
    reward: float
    code_hash: str | None = Field(None, description="Hash of features + model source, when it parsed.")
    cache_key: str | None = Field(None, description="Content hash of the execution, when it was executed.")
    cached: bool | None = Field(
        None, description="Whether its execution's result came from the cache (None: nothing was executed)."
    )
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def from_generation(cls, generation: Generation, **fields: Any) -> Experience:
        """The experience of a sampled completion: its prompt, completion, token ids and log-probs, plus `fields`."""
        return cls(**asdict(generation), **fields)
