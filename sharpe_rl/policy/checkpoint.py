"""Per-cycle checkpoints of the policy and its trainer: atomic save, exact resume, reset to base.

Layout under `runs/checkpoints/<run>/`:

    cycle-007/
        adapter/                  peft `save_pretrained` (what a vLLM backend or MLflow picks up)
        value_head.safetensors
        trainer.pt                optimizer state, kl_coef, the minibatch RNG
        rng.pt                    global RNG states: torch (CPU and CUDA), python, numpy
        state.json                cycle, run, base model, time
    latest                        "cycle-007", replaced last

A checkpoint is written into a hidden temporary directory beside its final place and renamed
into place only when complete; `latest` is replaced after that. A crash at any point leaves
`latest` on the previous good checkpoint, and resume reads only what `latest` names.
`reset` moves the run's checkpoints to `runs/checkpoints-archive/<timestamp>/<run>/` (nothing is
deleted) and returns the trainer to the base model.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, set_peft_model_state_dict
from peft.utils import load_peft_weights
from safetensors.torch import load_file, save_file

from sharpe_rl.data.atomic import DiskFull, disk_full_names, is_disk_full, write_bytes_atomic
from sharpe_rl.policy.ppo import PPOTrainer

_ADAPTER = "default"


class Checkpoints:
    """The checkpoints of one run."""

    def __init__(self, runs_dir: Path, run: str) -> None:
        if not run or Path(run).name != run or run.startswith("."):
            raise ValueError(f"run name {run!r} must be a plain directory name")
        self.runs_dir = Path(runs_dir)
        self.run = run
        self.directory = self.runs_dir / "checkpoints" / run

    def path(self, cycle: int) -> Path:
        return self.directory / f"cycle-{cycle:03d}"

    def latest_cycle(self) -> int | None:
        """The cycle `latest` names, or None before the first save."""
        pointer = self.directory / "latest"
        if not pointer.exists():
            return None
        return int(json.loads((self.directory / pointer.read_text().strip() / "state.json").read_text())["cycle"])

    def save(self, trainer: PPOTrainer, cycle: int) -> Path:
        """Write the checkpoint of `cycle` atomically, then point `latest` at it.

        A directory of the same cycle that `latest` does not name yet (a crash before the pointer
        moved) is replaced. Saving at or before the latest cycle is refused: it would mean one
        cycle's update was applied twice.
        """
        latest = self.latest_cycle()
        if latest is not None and cycle <= latest:
            raise ValueError(
                f"run {self.run!r} already has a checkpoint at cycle {latest}; saving cycle {cycle} would apply "
                f"an update twice. Call load_latest() and continue from cycle {latest + 1}, or reset the run"
            )
        final = self.path(cycle)
        with disk_full_names(final):
            self._save(trainer, cycle, final)
        write_bytes_atomic(self.directory / "latest", f"{final.name}\n".encode())
        return final

    def _save(self, trainer: PPOTrainer, cycle: int, final: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(".cycle-*.tmp-*"):  # left by a save that crashed
            shutil.rmtree(stale)
        staging = self.directory / f".{final.name}.tmp-{uuid.uuid4().hex}"
        try:
            staging.mkdir()
            _write_checkpoint(staging, trainer, self.run, cycle)
            _fsync_tree(staging)
            if final.exists():  # written before a crash, never pointed at: swap it out, then drop it
                replaced = self.directory / f".{final.name}.tmp-{uuid.uuid4().hex}"
                os.replace(final, replaced)
                os.replace(staging, final)
                shutil.rmtree(replaced)
            else:
                os.replace(staging, final)
            _fsync_dir(self.directory)
        except Exception as exc:
            if is_disk_full(exc, staging):  # checked before the cleanup below frees the space again
                raise DiskFull(final) from exc
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def load_latest(self, trainer: PPOTrainer) -> int | None:
        """Restore the trainer in place from the checkpoint `latest` names; returns its cycle (None: nothing saved)."""
        cycle = self.latest_cycle()
        if cycle is not None:
            self.load(trainer, cycle)
        return cycle

    def load(self, trainer: PPOTrainer, cycle: int) -> None:
        """Restore the trainer in place from the checkpoint of `cycle`."""
        _read_checkpoint(self.path(cycle), trainer)

    def reset(self, trainer: PPOTrainer | None = None) -> Path | None:
        """Archive this run's checkpoints (returns where, None if there were none) and reset `trainer` to base."""
        archive = None
        if self.directory.exists():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            archive = self.runs_dir / "checkpoints-archive" / stamp / self.run
            archive.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.directory, archive)
        if trainer is not None:
            trainer.reset()
        return archive


def _write_checkpoint(directory: Path, trainer: PPOTrainer, run: str, cycle: int) -> None:
    policy = trainer.policy
    policy.model.save_pretrained(str(directory / "adapter"))
    value_head = {name: tensor.contiguous() for name, tensor in policy.value_head.state_dict().items()}
    save_file(value_head, directory / "value_head.safetensors")
    torch.save(trainer.state_dict(), directory / "trainer.pt")
    torch.save(_rng_states(), directory / "rng.pt")
    state = {
        "cycle": cycle,
        "run": run,
        "base_model": policy.model.peft_config[_ADAPTER].base_model_name_or_path,
        "saved_at": datetime.now(UTC).isoformat(),
    }
    (directory / "state.json").write_text(json.dumps(state, indent=2))


def _read_checkpoint(directory: Path, trainer: PPOTrainer) -> None:
    policy = trainer.policy
    saved, live = LoraConfig.from_pretrained(str(directory / "adapter")), policy.model.peft_config[_ADAPTER]
    if (saved.r, saved.lora_alpha, set(saved.target_modules)) != (live.r, live.lora_alpha, set(live.target_modules)):
        raise ValueError(
            f"checkpoint {directory} has a LoRA adapter r={saved.r}, alpha={saved.lora_alpha} on "
            f"{sorted(saved.target_modules)}, but the policy was built with r={live.r}, alpha={live.lora_alpha} on "
            f"{sorted(live.target_modules)}; resume with the run's PolicyConfig, or reset the run"
        )
    weights = load_peft_weights(str(directory / "adapter"), device=str(policy.device))
    result = set_peft_model_state_dict(policy.model, weights, adapter_name=_ADAPTER)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint {directory} has adapter weights the policy lacks: {result.unexpected_keys[:5]}")
    policy.value_head.load_state_dict(load_file(directory / "value_head.safetensors", device=str(policy.device)))
    trainer.load_state_dict(torch.load(directory / "trainer.pt", map_location=policy.device, weights_only=True))
    _restore_rng_states(torch.load(directory / "rng.pt", weights_only=True))


def _rng_states() -> dict:
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), position, has_gauss, cached_gaussian),
    }


def _restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root` to disk, so the rename publishes durable content."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        else:
            _fsync_dir(path)
    _fsync_dir(root)


def _fsync_dir(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
