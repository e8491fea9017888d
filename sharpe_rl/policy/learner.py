"""The learner: the policy's two steps of a cycle, `generate` and `update`, on a `PolicyRef`.

A `PolicyRef` says which weights: the base model with its LoRA and PPO settings and seed, and
the checkpoint a run saved after some cycle (or none: the base policy). `update` takes a ref and
returns the ref of the checkpoint it wrote, so the flow carries the policy from cycle to cycle as
a value, and a step's arguments say what its result depends on.

The weights themselves stay in memory between steps, one loaded policy per run and settings:
moving it to the ref a step asks for costs nothing when it is already there (the update that
just ran), and a checkpoint load otherwise (a resumed run, or a step in a fresh process). What is
in memory is only a cache of what the checkpoints say; an update that fails half-way drops it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from transformers import AutoTokenizer

from sharpe_rl.config import PolicyConfig, PPOConfig
from sharpe_rl.experience import Experience
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.policy.generation import Generation, make_generator, policy_source
from sharpe_rl.policy.model import load_policy
from sharpe_rl.policy.ppo import PPOTrainer


class PolicyRef(BaseModel):
    """Which policy: a base model and its settings, and the checkpoint of `run` after `cycle` (None: the base)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: PolicyConfig
    ppo: PPOConfig
    seed: int
    runs_dir: Path
    run: str
    cycle: int | None = None

    @property
    def checkpoint(self) -> Path | None:
        return None if self.cycle is None else Checkpoints(self.runs_dir, self.run).path(self.cycle)

    def after(self, cycle: int) -> PolicyRef:
        """The ref of this run's checkpoint after `cycle`."""
        return self.model_copy(update={"cycle": cycle})


@dataclass(frozen=True)
class Batch:
    """One cycle's sampled completions."""

    cycle: int
    generations: list[Generation]
    seconds: float


@dataclass(frozen=True)
class Update:
    """One PPO update: the checkpoint it committed, its statistics, and how long it took."""

    policy: PolicyRef
    stats: dict[str, float]
    seconds: float


def generate(policy: PolicyRef, prompts: Sequence[str], *, cycle: int, seed: int) -> Batch:
    """Sample one completion of each prompt from `policy` (repeat a prompt for several); the same ref, prompts
    and seed give the same completions."""
    started = time.perf_counter()
    with _loaded(policy) as loaded:
        generations = loaded.generator.generate(list(prompts), seed=seed)
    return Batch(cycle=cycle, generations=generations, seconds=time.perf_counter() - started)


def update(
    policy: PolicyRef, cycle: int, experiences: Sequence[Experience], rewards: Sequence[float] | None = None
) -> Update:
    """One PPO step from `policy` on the scored batch of `cycle`, committed by its checkpoint; it learns from
    `rewards` when given (`PPOConfig.credit`), else from the experiences' own."""
    started = time.perf_counter()
    with _loaded(policy) as loaded:
        stats = loaded.trainer.update(experiences, rewards)
        loaded.checkpoints.save(loaded.trainer, cycle)
        loaded.arrived(policy.after(cycle))
    return Update(policy=policy.after(cycle), stats=asdict(stats), seconds=time.perf_counter() - started)


def release(run: str | None = None) -> None:
    """Drop the loaded policies of `run` (of every run when None) from memory, e.g. at the end of a run."""
    with _cache_lock:
        for key in [key for key in _cache if run is None or key[0] == run]:
            del _cache[key]


class _LoadedPolicy:
    """A policy, its trainer and generator in memory, positioned at `at` (None: unknown, reload)."""

    def __init__(self, ref: PolicyRef) -> None:
        cfg = ref.policy
        source = policy_source(cfg)
        self.policy = load_policy(cfg, seed=ref.seed)
        self.trainer = PPOTrainer(self.policy, ref.ppo, seed=ref.seed)
        self.checkpoints = Checkpoints(ref.runs_dir, ref.run)
        if cfg.backend == "vllm":  # vLLM holds its own copy of the base and follows the saved adapters
            self.generator = make_generator(cfg)
        else:  # the transformers backend samples the policy being trained
            tokenizer = AutoTokenizer.from_pretrained(source)
            self.generator = make_generator(cfg, model=self.policy.model, tokenizer=tokenizer)
        self.at: PolicyRef | None = ref.model_copy(update={"cycle": None})
        self.lock = threading.Lock()

    def move_to(self, ref: PolicyRef) -> None:
        if ref == self.at:
            return
        self.at = None  # until the move is complete
        if ref.cycle is None:
            self.trainer.reset()
        else:
            self.checkpoints.load(self.trainer, ref.cycle)
        self.arrived(ref)

    def arrived(self, ref: PolicyRef) -> None:
        """The weights in memory are now those of `ref` (a vLLM generator is pointed at its adapter)."""
        if ref.policy.backend == "vllm":
            self.generator.set_adapter(None if ref.checkpoint is None else ref.checkpoint / "adapter")
        self.at = ref


_cache: dict[tuple, _LoadedPolicy] = {}
_cache_lock = threading.Lock()


@contextmanager
def _loaded(ref: PolicyRef) -> Iterator[_LoadedPolicy]:
    """The run's policy moved to `ref`, held exclusively; if the block fails it is marked for a reload."""
    key = (ref.run, ref.runs_dir, ref.policy, ref.ppo, ref.seed)
    with _cache_lock:
        loaded = _cache.get(key)
        if loaded is None:
            loaded = _cache[key] = _LoadedPolicy(ref)
    with loaded.lock:
        try:
            loaded.move_to(ref)
            yield loaded
        except BaseException:
            loaded.at = None  # the weights may be half-updated: the next step loads a checkpoint
            raise
