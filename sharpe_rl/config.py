"""Every setting of sharpe-rl, as typed pydantic models.

These models are the single source of truth for defaults. The Prefect flows take them as
parameters (so the Prefect UI renders them as a form: the rl_run flow takes a night's choices as
its own parameters and `AdvancedSettings` grouped below them), the command line takes its
options' help, ranges, choices and defaults from their fields (`cli/options.py`) and builds them
from its options, and every library function receives the one sub-model it needs.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The largest seed: the sandbox seeds numpy with it, which takes 32-bit seeds.
MAX_SEED = 2**32 - 1


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvalConfig(_Settings):
    """The evaluation protocol: decisions and labels on a clock, walk-forward folds, holdout and trading costs.

    Times are durations ("1d", "4h", "30m", "2w") or whole numbers of bars; `sharpe_rl.data.clock`
    resolves them for a panel's bar interval.
    """

    decide_every: int | str | None = Field(
        None,
        description="Decisions every this long (1d, 4h, ...; or a number of bars). Default: 1d for bars shorter "
        "than a day, every bar otherwise.",
    )
    horizon: int | str | None = Field(
        None,
        description="Label = sign of the close this long after a decision against its close (default: the "
        "decision cadence).",
    )
    n_folds: int = Field(4, ge=1, description="Number of walk-forward (expanding window) test folds.")
    min_train_fraction: float = Field(
        0.5, gt=0, lt=1, description="Share of the reward window used to train the first fold."
    )
    embargo: int | str = Field(0, description="Extra time dropped between a training set and its test set.")
    holdout_fraction: float = Field(
        0.2, ge=0, lt=1, description="Last share of time carved off and never used in any reward."
    )
    fee_bps: float = Field(10.0, ge=0, description="Trading cost in basis points per unit of turnover.")
    # Market-neutral by default: under per_asset, a model that always says "up" earns the market's
    # drift (buy-and-hold), and the RL loop would learn beta instead of forecasting skill.
    scheme: Literal["per_asset", "cross_sectional"] = Field(
        "cross_sectional",
        description="Positions: cross-sectional market-neutral demeaned ranks, or per asset 2p-1.",
    )
    lookback: int | str | None = Field(
        None,
        description="History make_features gets at each decision, up to it (default: 256 bars or 30 days, "
        "whichever is longer).",
    )
    fit_on: Literal["decisions", "bars"] = Field(
        "decisions",
        description="Rows a model is fitted on: the bars at past decision times (labelled as they are traded) or "
        "every bar (more rows, overlapping labels; fits several times slower on intraday bars).",
    )
    timing_only: bool = Field(
        True,
        description="Pay timing, not static tilts: each symbol's average weight over a fold is taken out of its "
        "positions before returns (a fixed ranking earns nothing; costs are paid on the positions held).",
    )

    @model_validator(mode="after")
    def _times_are_times(self) -> EvalConfig:
        from sharpe_rl.data.clock import parse_duration

        for name in ("decide_every", "horizon", "embargo", "lookback"):
            value = getattr(self, name)
            if isinstance(value, str):
                parse_duration(value)
            elif isinstance(value, int) and value < (0 if name == "embargo" else 1):
                raise ValueError(f"{name} must be a duration or a number of bars of at least 1, got {value}")
        return self


class SandboxConfig(_Settings):
    """How generated experiments are executed."""

    executor: Literal["docker", "process"] = Field(
        "docker", description="docker (the default boundary), or process (bubblewrap, for machines without Docker)."
    )
    image: str | None = Field(None, description="Sandbox image tag (default: the tag built from this checkout).")
    timeout_seconds: float = Field(180.0, gt=0, description="Wall-clock limit per experiment.")
    memory_mb: int = Field(2048, ge=256, description="Memory limit per experiment, no swap.")
    cpus: float = Field(1.0, gt=0, description="CPU quota per experiment, in cores.")
    pids_limit: int = Field(256, ge=16, description="Maximum processes and threads per experiment.")
    tmpfs_mb: int = Field(256, ge=16, description="Size of the writable /tmp inside the sandbox.")
    output_limit_kb: int = Field(65536, ge=64, description="Cap on the stdout/stderr kept from an experiment.")
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="Experiments executed in parallel."
    )
    warm_pool: bool = Field(
        True, description="Keep `workers` sandboxes started, libraries imported, ahead of their tasks (each used once)."
    )


class TaskRunnerConfig(_Settings):
    """Where a cycle's executions run. The other steps (generation, PPO, logging) stay in the flow's process."""

    kind: Literal["threads", "dask"] = Field(
        "threads",
        description="Where executions run: threads (`sandbox.workers` threads here), or dask (the workers of the Dask "
        "cluster at `dask_address`).",
    )
    dask_address: str | None = Field(None, description="The Dask scheduler, e.g. tcp://HOST:8786 (kind dask).")

    @model_validator(mode="after")
    def _dask_has_an_address(self) -> TaskRunnerConfig:
        if self.kind == "dask" and not self.dask_address:
            raise ValueError("the dask task runner needs the scheduler's address (dask_address, e.g. tcp://HOST:8786)")
        return self


class RewardConfig(_Settings):
    """Reward shaping: evidence of skill for valid models, a fixed penalty ladder for failures.

    The default (`luck_correction="evidence"`) pays a valid model by how far its net Sharpe stands
    above what no skill scores on this panel, in units of the panel's no-skill noise
    (`sharpe_rl.noskill`), deflated by the run's trials so far (`sharpe_rl.scoring.shape_reward`).
    Options: the clipped net Sharpe (none), its deflated or shrunk forms, and diversity terms
    (`sharpe_rl.diversity`).
    """

    sharpe_clip: float = Field(
        3.0, gt=0, description="luck_correction none/shrunk: net Sharpe is clipped to ±this and scaled to [-1, 1]."
    )
    penalty_runtime: float = Field(
        -1.25, description="Reward of an experiment that ran but failed (runtime errors, timeouts, bad output)."
    )
    penalty_format: float = Field(
        -1.5, description="Reward of an experiment that never ran (unparseable JSON, schema, syntax, imports)."
    )
    luck_correction: Literal["evidence", "none", "deflated", "shrunk"] = Field(
        "evidence",
        description="Reward skill, not luck: evidence (x / (1 + |x|), x = (net Sharpe / the panel's no-skill noise - "
        "the expected best of the run's trials) / evidence_scale); none (clipped net Sharpe); deflated (2 x deflated "
        "Sharpe - 1); shrunk (net Sharpe minus the expected best Sharpe of that many zero-skill trials, then clipped).",
    )
    evidence_scale: float = Field(
        2.0, gt=0, description="luck_correction evidence: sigmas of evidence (after deflation) for a reward of 0.5."
    )
    novelty_weight: float = Field(
        0.0, ge=0, description="Bonus x 1/sqrt(visits) for a scored experiment in a rarely visited cell (0: off)."
    )
    copy_penalty: float = Field(
        0.0, ge=0, description="Taken off a scored experiment whose normalised code already ran (floor -1; 0: off)."
    )

    @model_validator(mode="after")
    def _ladder_is_ordered(self) -> RewardConfig:
        if not (self.penalty_format < self.penalty_runtime < -1.0):
            raise ValueError(
                "penalties must satisfy format < runtime < -1 (a valid but losing model always beats a failure)"
            )
        return self


class PolicyConfig(_Settings):
    """The policy model and how it generates."""

    model: str = Field(
        "runs/policy/tiny", description="Hugging Face id or local path of the base policy (from_pretrained)."
    )
    knowledge_cutoff: date | None = Field(
        None,
        description="The last day of market history the policy may have read in pretraining; a run's holdout starts "
        "after it where the data allows (None: the tiny policy has no market memory; any other: unknown).",
    )
    backend: Literal["transformers", "vllm"] = Field("transformers", description="Generation backend.")
    device: str = Field("auto", description="cpu, cuda, or auto.")
    max_new_tokens: int = Field(768, ge=16, description="Longest completion generated.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (1.0 keeps PPO on-policy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    constrained_json: bool = Field(False, description="Constrain decoding to the ExperimentSpec JSON schema.")
    generation_batch_size: int = Field(16, ge=1, description="Prompts per forward pass (transformers backend).")
    vllm_gpu_memory: float = Field(
        0.5, gt=0, lt=1, description="Share of GPU memory vLLM may take (the rest is for the PPO update)."
    )
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the PPO update's backward pass: less memory, more time."
    )


class TinyPolicyConfig(_Settings):
    """The tiny Mistral-architecture policy `sharpe-rl build-policy` trains on the CPU."""

    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the corpus, the initial weights and the data order.")
    steps: int = Field(2500, ge=1, description="Optimizer steps; the build always runs all of them.")
    batch_size: int = Field(32, ge=1, description="Examples per optimizer step.")
    learning_rate: float = Field(3e-3, gt=0, description="Peak AdamW learning rate (linear warmup, cosine decay).")
    warmup_steps: int = Field(50, ge=0, description="Steps of linear learning-rate warmup.")
    corpus_size: int = Field(4000, ge=1, description="(prompt -> spec) training examples generated.")
    mistake_share: float = Field(
        0.02, ge=0, lt=1, description="Share of corpus examples with one realistic mistake (see policy/corpus.py)."
    )
    vocab_size: int = Field(
        4096, ge=300, description="BPE vocabulary that finds the pieces; the tokenizer keeps those the corpus uses."
    )
    hidden_size: int = Field(128, ge=16, description="Model width.")
    intermediate_size: int = Field(384, ge=16, description="MLP width.")
    num_layers: int = Field(2, ge=1, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_kv_heads: int = Field(2, ge=1, description="Key/value heads (grouped-query attention, as in Mistral).")
    context_length: int = Field(2048, ge=256, description="Longest prompt + completion the model is built for.")

    @model_validator(mode="after")
    def _a_batch_fits_in_the_corpus(self) -> TinyPolicyConfig:
        if self.batch_size > self.corpus_size:
            raise ValueError(f"batch_size ({self.batch_size}) is larger than corpus_size ({self.corpus_size})")
        return self


class PPOConfig(_Settings):
    """PPO on the LoRA adapters (CleanRL-style); one update per cycle on the scored batch."""

    learning_rate: float = Field(3e-4, gt=0, description="Adam learning rate for adapters and value head.")
    epochs: int = Field(2, ge=1, description="Passes over the batch per update.")
    minibatch_size: int = Field(4, ge=1, description="Experiences per gradient step.")
    clip_coef: float = Field(0.2, gt=0, description="Surrogate clipping range for the probability ratio.")
    clip_coef_high: float | None = Field(
        None, gt=0, description="Upper clipping range (DAPO's clip-higher, e.g. 0.28); None: clip_coef both ways."
    )
    vf_coef: float = Field(0.5, ge=0, description="Weight of the value loss.")
    vf_clip: float = Field(0.2, gt=0, description="Clipping range for the value update.")
    ent_coef: float = Field(0.001, ge=0, description="Weight of the entropy bonus.")
    max_grad_norm: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount over completion tokens.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    init_kl_coef: float = Field(0.05, ge=0, description="Initial weight of the KL penalty to the reference.")
    target_kl: float | None = Field(6.0, gt=0, description="Adaptive KL target per sequence (None: fixed coef).")
    # Ziegler et al. use 10,000 samples; an overnight run is 48 × 16 = 768, so the controller would never move.
    kl_horizon: int = Field(256, ge=1, description="Horizon of the adaptive KL controller, in samples.")
    max_approx_kl: float | None = Field(
        0.02,
        gt=0,
        description="Stop an update's remaining gradient steps once a minibatch's KL (per token, k3) between the "
        "policy being updated and the one that sampled the batch passes this (CleanRL's target_kl; None: never).",
    )
    whiten_advantages: bool = Field(True, description="Normalise advantages per batch.")
    reward_ranks: bool = Field(
        False,
        description="Learn from each reward's rank in the batch (centred, ties shared) instead of its value: the "
        "update sees the order of what the reward pays, not its scale; every step between neighbours weighs the same, "
        "so a failure's gap no longer drowns the gaps among valid experiments.",
    )
    credit: Literal["own", "family"] = Field(
        "own",
        description="What the update learns from for an experiment that ran: its own reward, or the mean reward of "
        "its model family in the run so far (this cycle included, shrunk toward the mean of all by credit_prior "
        "pseudo-experiments): the choice paid by the evidence of every experiment that made it, not by one "
        "experiment's luck. Failures keep their own reward. What is logged and reported is the reward either way.",
    )
    credit_prior: float = Field(
        4.0, ge=0, description="Pseudo-experiments at the run's mean that a family's credit is shrunk with."
    )
    advantage: Literal["gae", "group"] = Field(
        "gae", description="gae (value head) or group (group-relative baseline, no critic)."
    )
    group_size: int = Field(
        4,
        ge=2,
        description="Completions per prompt: a cycle samples batch_size // group_size prompts (the remainder goes "
        "to the first ones), so advantage=group compares completions of the same prompt.",
    )
    logprob_tolerance: float = Field(
        1e-3, gt=0, description="Warn when generation log-probs differ from a forward pass by more than this."
    )


class AdvancedSettings(_Settings):
    """The settings of a run a night seldom changes: the evaluation, the sandbox, the reward, the policy, PPO,
    where executions run and where state lives. `RunConfig` adds the night's own choices to them; the rl_run
    flow's form shows those at the top and these grouped below (`advanced`)."""

    name_symbols: bool = Field(
        False,
        description="Name the symbols in the prompt (the policy can then apply what it remembers of those coins; "
        "the report says so). Off: the prompt says how many there are.",
    )
    runs_dir: Path = Field(Path("runs"), description="Where the buffer, checkpoints, cache and reports live.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking server, e.g. http://HOST:5000 (default: SQLite under runs_dir)."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    task_runner: TaskRunnerConfig = Field(default_factory=TaskRunnerConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)


class RunConfig(AdvancedSettings):
    """One RL run: the cycle repeated `cycles` times: the night's choices, and the advanced settings."""

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="Run name; starting a run with an unfinished run's name resumes it (default: a new dated name).",
    )
    cycles: int = Field(48, ge=1, description="Generate → execute → score → log → update, this many times.")
    batch_size: int = Field(16, ge=1, description="Experiences per cycle.")
    prompt_version: str = Field("v5_rules", description="Prompt template under prompts/.")
    dataset: Path = Field(Path("data/sample_daily.parquet"), description="OHLCV panel (Parquet or CSV).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed for generation, folds and models.")

    @model_validator(mode="after")
    def _groups_have_two_completions(self) -> RunConfig:
        if self.ppo.advantage == "group" and self.batch_size < 2:
            raise ValueError("advantage=group compares completions of one prompt: batch_size must be at least 2")
        return self

    def advanced(self) -> AdvancedSettings:
        """The advanced settings of this run (everything but its name, cycles, batch size, prompt, dataset, seed)."""
        return AdvancedSettings(**{name: getattr(self, name) for name in AdvancedSettings.model_fields})


MISTRAL_7B = "mistralai/Mistral-7B-v0.1"
#: Mistral-7B-v0.1's release: its training data cannot be later (its own cutoff is not published).
MISTRAL_7B_RELEASED = date(2023, 9, 27)
"""The production policy: the base (not instruct) model, because the prompts are plain completions
("... Experiment:\n" then the JSON), not a chat template. Not gated on the Hugging Face Hub."""


def mistral_7b_policy(**changes: object) -> PolicyConfig:
    """The production policy on one GPU (48 GB or more; docs/gpu.md): Mistral-7B in bf16, LoRA, vLLM generation.

    - bf16 base weights: `device="cuda"` (`load_policy` keeps the base in bf16 on a GPU, the adapters,
      value head and log-probs in fp32);
    - LoRA r=16, alpha=32 on every attention and MLP projection (q, k, v, o, gate, up, down):
      about 42M trainable parameters, 0.6% of the model;
    - gradient checkpointing in the PPO update: a minibatch of 4 prompt + completion rows of ~1,500
      tokens keeps only each layer's input (~1.6 GB in all) instead of every layer's activations
      (~1 GB per layer, 32 layers), which would not fit beside the weights;
    - vLLM samples with 45% of the GPU (its own 14.5 GB bf16 copy of the weights plus the KV
      cache); the rest is the PPO update's (another 14.5 GB copy, adapters, optimizer, activations);
    - completions of up to 1,024 tokens: Mistral's tokenizer takes roughly one token per 3
      characters of escaped code, and an experiment with a small torch network is 2,000-2,400.

    `changes` override any field, e.g. `mistral_7b_policy(backend="transformers")` to sample from
    the policy being trained without vLLM (exact and seeded, slower).
    """
    preset = {
        "model": MISTRAL_7B,
        "knowledge_cutoff": MISTRAL_7B_RELEASED,
        "backend": "vllm",
        "device": "cuda",
        "max_new_tokens": 1024,
        "generation_batch_size": 16,
        "vllm_gpu_memory": 0.45,
        "lora_r": 16,
        "lora_alpha": 32,
        "gradient_checkpointing": True,
    }
    return PolicyConfig.model_validate(preset | changes)
