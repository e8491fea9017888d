"""Checkpoints: exact resume, crash-safe saves, reset to the base weights with the old checkpoints archived."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from ppo_fixtures import adapter_state, experience, save_tiny_base, tiny_policy

import sharpe_rl.policy.checkpoint as checkpoint_module
from sharpe_rl.config import PPOConfig
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.policy.ppo import PPOTrainer, collate

CONFIG = PPOConfig(learning_rate=1e-2, minibatch_size=2)
FIRST = [
    experience([5, 6, 7], [10, 11, 12], 1.0, index=0),
    experience([5, 6, 7], [20, 21], -1.0, index=1),
    experience([8, 9], [30, 31, 32, 33], 0.5, index=2),
]
SECOND = [  # three experiences in minibatches of two: the result depends on the restored shuffling RNG
    experience([5, 6, 7], [10, 40], -0.5, index=0),
    experience([8, 9], [41, 42, 43], 1.0, index=1),
    experience([8, 9], [44], -1.0, index=2),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base"))


def trainer_for(base, seed: int = 0) -> PPOTrainer:
    return PPOTrainer(tiny_policy(base), CONFIG, seed=seed)


def assert_same_state(a: PPOTrainer, b: PPOTrainer) -> None:
    state_a, state_b = adapter_state(a.policy), adapter_state(b.policy)
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    optimizer_a, optimizer_b = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert optimizer_a["param_groups"] == optimizer_b["param_groups"]
    for index, slots in optimizer_a["state"].items():
        for key, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(optimizer_b["state"][index][key])), key
    assert a.kl_controller.value == b.kl_controller.value
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_save_then_load_restores_weights_optimizer_and_controller(base, tmp_path):
    trainer = trainer_for(base)
    trainer.update(FIRST)
    checkpoints = Checkpoints(tmp_path, "run-a")
    path = checkpoints.save(trainer, cycle=0)
    assert (path / "adapter" / "adapter_model.safetensors").exists()
    assert checkpoints.latest_cycle() == 0

    resumed = trainer_for(base, seed=99)  # a different seed: everything must come from the checkpoint
    assert checkpoints.load_latest(resumed) == 0
    assert_same_state(trainer, resumed)


def test_resume_gives_the_update_the_uninterrupted_run_gives(base, tmp_path):
    uninterrupted = trainer_for(base)
    uninterrupted.update(FIRST)
    checkpoints = Checkpoints(tmp_path, "run-a")
    checkpoints.save(uninterrupted, cycle=0)
    torch.manual_seed(123)  # the pipeline moves the global RNGs on between save and the next update
    random.seed(123)
    np.random.seed(123)
    uninterrupted_stats = uninterrupted.update(SECOND)

    resumed = trainer_for(base)  # as after a crash: a new process loads the base model again
    checkpoints.load_latest(resumed)
    resumed_stats = resumed.update(SECOND)
    assert resumed_stats == uninterrupted_stats
    assert_same_state(uninterrupted, resumed)


def test_global_rng_states_are_restored(base, tmp_path):
    trainer = trainer_for(base)
    checkpoints = Checkpoints(tmp_path, "run-a")
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    checkpoints.save(trainer, cycle=0)
    expected = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    checkpoints.load_latest(trainer)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.random.rand() == expected[2]


def test_a_crash_mid_save_leaves_the_previous_checkpoint_latest(base, tmp_path, monkeypatch):
    trainer = trainer_for(base)
    checkpoints = Checkpoints(tmp_path, "run-a")
    checkpoints.save(trainer, cycle=0)
    saved = adapter_state(trainer.policy)
    trainer.update(FIRST)

    calls = []

    def crash_on_second_save(obj, path):  # trainer.pt is written, rng.pt is not
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        torch.save(obj, path)

    monkeypatch.setattr(checkpoint_module.torch, "save", crash_on_second_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save(trainer, cycle=1)
    monkeypatch.undo()

    assert sorted(p.name for p in checkpoints.directory.iterdir()) == ["cycle-000", "latest"]
    fresh = trainer_for(base)
    assert checkpoints.load_latest(fresh) == 0
    for name, tensor in adapter_state(fresh.policy).items():
        assert torch.equal(tensor, saved[name]), name


def test_a_crash_before_the_pointer_moves_is_redone_cleanly(base, tmp_path, monkeypatch):
    trainer = trainer_for(base)
    checkpoints = Checkpoints(tmp_path, "run-a")
    checkpoints.save(trainer, cycle=0)
    trainer.update(FIRST)

    def crash(*args):
        raise OSError("killed")

    monkeypatch.setattr(checkpoint_module, "write_bytes_atomic", crash)
    with pytest.raises(OSError, match="killed"):
        checkpoints.save(trainer, cycle=1)
    monkeypatch.undo()
    assert checkpoints.path(1).exists()  # complete, but never pointed at
    assert checkpoints.latest_cycle() == 0

    checkpoints.save(trainer, cycle=1)  # the re-run of cycle 1 replaces it
    assert checkpoints.latest_cycle() == 1
    assert sorted(p.name for p in checkpoints.directory.iterdir()) == ["cycle-000", "cycle-001", "latest"]


def test_saving_a_cycle_twice_is_refused(base, tmp_path):
    trainer = trainer_for(base)
    checkpoints = Checkpoints(tmp_path, "run-a")
    checkpoints.save(trainer, cycle=3)
    with pytest.raises(ValueError, match="apply an update twice"):
        checkpoints.save(trainer, cycle=3)


def test_a_checkpoint_of_another_lora_shape_is_refused(base, tmp_path):
    checkpoints = Checkpoints(tmp_path, "run-a")
    checkpoints.save(trainer_for(base), cycle=0)
    other = PPOTrainer(tiny_policy(base, lora_r=4), CONFIG)
    with pytest.raises(ValueError, match="r=8"):
        checkpoints.load_latest(other)


def test_reset_returns_to_the_base_model_and_archives_checkpoints(base, tmp_path):
    trainer = trainer_for(base)
    checkpoints = Checkpoints(tmp_path, "run-a")
    for cycle in range(2):
        trainer.update(FIRST)
        checkpoints.save(trainer, cycle)

    archive = checkpoints.reset(trainer)

    assert archive is not None and archive.parent.parent == tmp_path / "checkpoints-archive"
    assert sorted(p.name for p in archive.iterdir()) == ["cycle-000", "cycle-001", "latest"]
    assert checkpoints.latest_cycle() is None
    fresh = trainer_for(base)
    assert_same_state(trainer, fresh)  # same LoRA A draw, zero B and value head, fresh optimizer and RNG
    batch = collate(FIRST, 0, trainer.policy.device)
    with torch.no_grad():
        logits, values = trainer.policy.completion_outputs(batch.input_ids, batch.attention_mask, batch.logit_positions)
        with trainer.policy.reference():
            base_logits, _ = trainer.policy.completion_outputs(
                batch.input_ids, batch.attention_mask, batch.logit_positions
            )
    assert torch.equal(logits, base_logits)
    assert not values.any()


def test_reset_without_a_trainer_only_archives(tmp_path):
    checkpoints = Checkpoints(tmp_path, "run-a")
    assert checkpoints.reset() is None  # nothing saved yet


def test_run_names_must_be_plain_directory_names(tmp_path):
    with pytest.raises(ValueError, match="plain directory name"):
        Checkpoints(tmp_path, "../elsewhere")
