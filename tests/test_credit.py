"""The update's credit for a family's choice: its evidence over the run, shrunk toward the run's mean."""

import pytest
from ppo_fixtures import experience as scored

from sharpe_rl.credit import family_credit
from sharpe_rl.experience import Experience
from sharpe_rl.history import experiences_frame
from sharpe_rl.sandbox.contract import ErrorClass


def experience(index: int, family: str | None, reward: float, error: ErrorClass | None = None) -> Experience:
    return scored([1], [2], reward, index=index).model_copy(update={"model_family": family, "error_class": error})


def test_a_family_seen_often_earns_its_mean_and_one_seen_once_is_pulled_toward_the_runs():
    knn = [experience(i, "sklearn/knn", r) for i, r in enumerate([-0.9, -0.7, -0.8, -0.8, -0.8, -0.8, -0.8, -0.8])]
    lucky = experience(8, "sklearn/mlp", 0.4)
    now = [*knn, lucky]
    credits = family_credit(experiences_frame(now), now, prior=1.0)
    overall = (8 * -0.8 + 0.4) / 9
    assert credits[:8] == pytest.approx([(8 * -0.8 + overall) / 9] * 8)  # every k-NN alike, whatever its own draw
    assert credits[8] == pytest.approx((0.4 + overall) / 2)  # one lucky MLP is worth half its luck
    assert family_credit(experiences_frame(now), now, prior=0.0) == pytest.approx([-0.8] * 8 + [0.4])


def test_failures_and_unclassified_experiments_keep_their_own_reward_and_a_first_cycle_alone_is_its_own_evidence():
    now = [
        experience(0, "xgboost", 0.2),
        experience(1, None, -1.5, ErrorClass.syntax),
        experience(2, None, 0.1),  # ran, but the classifier named no family
    ]
    assert family_credit(experiences_frame(now), now, prior=4.0) == pytest.approx([0.2, -1.5, 0.1])
    failures = [experience(0, None, -1.5, ErrorClass.syntax), experience(1, None, -1.25, ErrorClass.runtime_error)]
    assert family_credit(experiences_frame(failures), failures, prior=4.0) == [-1.5, -1.25]
