"""Diversity-aware reward terms: rare cells earn a bonus, copies (however disguised) a penalty."""

from __future__ import annotations

import pytest
from spec_snippets import LIGHTGBM, TREND, TREND_AND_CALENDAR, VOLUME

from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.config import RewardConfig
from sharpe_rl.diversity import Visits, copies, diversity_rewards, normalise_source, normalised_code_hash, novelty
from sharpe_rl.experience import Experience
from sharpe_rl.sandbox.contract import ErrorClass
from sharpe_rl.spec import ExperimentSpec

TORCH = """
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 2)

def make_model():
    return Net()
"""
ORIGINAL = ExperimentSpec(
    name="lgbm ma ratio",
    features="""
import pandas as pd

def make_features(df):
    out = pd.DataFrame(index=df.index)
    close = df["close"]
    out["ma_ratio"] = close.rolling(5).mean() / close.rolling(20).mean()
    return out
""",
    model="""
from lightgbm import LGBMClassifier

def make_model():
    trees = 200
    return LGBMClassifier(n_estimators=trees, learning_rate=0.05, verbose=-1)
""",
)
#: ORIGINAL with a new name, comments, a docstring, other variable names and another layout.
DISGUISED = ExperimentSpec(
    name="a brand new idea: trend model v2",
    features='''
import pandas as pd


def make_features(df):
    """Moving-average ratio."""
    # a fresh feature set
    features = pd.DataFrame(index = df.index)
    c = df["close"]    # closing prices
    features["ma_ratio"] = (c.rolling(5).mean()) / c.rolling(20).mean()
    return features
''',
    model="""
from lightgbm import LGBMClassifier
def make_model():
    n = 200  # more trees
    return LGBMClassifier(
        n_estimators=n,
        learning_rate=0.05,
        verbose=-1,
    )
""",
)


def spec(features: str, model: str, name: str = "experiment") -> str:
    return ExperimentSpec(name=name, features=features, model=model).model_dump_json()


def scored(
    spec_json: str | None,
    index: int = 0,
    cycle: int = 1,
    reward: float = 0.1,
    error_class: ErrorClass | None = None,
    executed: bool = True,
) -> Experience:
    return Experience(
        run="run",
        cycle=cycle,
        index=index,
        prompt_version="v5_rules",
        prompt="p",
        completion="c",
        prompt_token_ids=[1],
        completion_token_ids=[2],
        logprobs=[0.0],
        spec_json=spec_json,
        error_class=error_class,
        reward=reward,
        cache_key=f"key-{cycle}-{index}" if executed else None,
    )


def crowded_history(n: int = 10) -> list[Experience]:
    """n scored LightGBM-on-trend experiments from cycle 0, each a different program."""
    return [scored(spec(TREND, LIGHTGBM.format(n=100 + i)), index=i, cycle=0) for i in range(n)]


# -- novelty ------------------------------------------------------------------------------------


def test_a_rare_cell_earns_more_than_a_crowded_one():
    history = Visits.from_experiences(crowded_history(10))
    crowded = scored(spec(TREND, LIGHTGBM.format(n=999)), index=0)
    rare = scored(spec(VOLUME, TORCH), index=1)
    bonuses = novelty([crowded, rare], history)
    assert bonuses == [pytest.approx(1 / 11**0.5), 1.0]  # 10 earlier + itself; a first visit
    rewards = diversity_rewards([crowded, rare], history, RewardConfig(novelty_weight=0.2))
    assert rewards == [pytest.approx(0.1 + 0.2 / 11**0.5), pytest.approx(0.3)]
    assert rewards[1] > rewards[0]


def test_the_batch_counts_too_and_its_order_does_not_matter():
    twins = [scored(spec(VOLUME, TORCH.replace("2)", f"{k})")), index=k) for k in range(2, 6)]
    assert novelty(twins, Visits()) == [0.5] * 4  # four visits to (torch, volume) in this batch
    assert novelty(list(reversed(twins)), Visits()) == [0.5] * 4


def test_the_least_visited_cell_decides():
    history = Visits.from_experiences(crowded_history(10))
    adds_a_calendar_feature = scored(spec(TREND_AND_CALENDAR, LIGHTGBM.format(n=100)))
    assert novelty([adds_a_calendar_feature], history) == [1.0]  # (lightgbm, calendar) was never visited


def test_failures_earn_no_bonus_keep_their_rung_and_do_not_crowd_a_cell():
    failed = [
        scored(spec(VOLUME, TORCH), index=i, cycle=0, reward=-1.25, error_class=ErrorClass.type_error) for i in range(5)
    ]
    history = Visits.from_experiences(failed)
    assert sum(history.cells.values()) == 0
    fails_again = scored(spec(VOLUME, TORCH), index=0, reward=-1.25, error_class=ErrorClass.type_error)
    works = scored(spec(VOLUME, TORCH.replace("2)", "3)")), index=1)
    cfg = RewardConfig(novelty_weight=0.5, copy_penalty=0.5)
    assert novelty([fails_again, works], history) == [0.0, 1.0]
    assert diversity_rewards([fails_again, works], history, cfg) == [-1.25, pytest.approx(0.6)]


def test_with_the_default_weights_rewards_are_unchanged():
    history = Visits.from_experiences(crowded_history(3))
    batch = [scored(ORIGINAL.model_dump_json(), 0, reward=0.3), scored(ORIGINAL.model_dump_json(), 1, reward=0.3)]
    assert diversity_rewards(batch, history, RewardConfig()) == [0.3, 0.3]


# -- copies -------------------------------------------------------------------------------------


def test_an_exact_duplicate_earns_the_penalty():
    history = Visits.from_experiences([scored(ORIGINAL.model_dump_json(), cycle=0)])
    renamed_only = ORIGINAL.model_copy(update={"name": "another name"}).model_dump_json()
    batch = [scored(renamed_only, reward=0.4)]
    assert copies(batch, history) == [True]
    assert diversity_rewards(batch, history, RewardConfig(copy_penalty=0.3, novelty_weight=1.0)) == [
        pytest.approx(0.1)
    ]  # no novelty bonus for a copy either


def test_a_reformatted_renamed_commented_copy_earns_the_penalty():
    history = Visits.from_experiences([scored(ORIGINAL.model_dump_json(), cycle=0)])
    assert copies([scored(DISGUISED.model_dump_json())], history) == [True]
    assert normalised_code_hash(DISGUISED.model_dump_json()) == normalised_code_hash(ORIGINAL.model_dump_json())


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("n_estimators=trees", "max_depth=trees"),  # another hyperparameter
        ("trees = 200", "trees = 300"),  # another value
        ('close = df["close"]', 'close = df["open"]'),  # another column
        ("rolling(20)", "rolling(30)"),  # another window
    ],
)
def test_a_changed_program_is_not_a_copy(old, new):
    changed = ExperimentSpec(
        name=ORIGINAL.name, features=ORIGINAL.features.replace(old, new), model=ORIGINAL.model.replace(old, new)
    )
    assert changed != ORIGINAL
    history = Visits.from_experiences([scored(ORIGINAL.model_dump_json(), cycle=0)])
    assert copies([scored(changed.model_dump_json())], history) == [False]


def test_names_reached_from_outside_are_kept():
    # the harness calls make_model and the model's fit by name: a renamed method is another program
    fit = "    def fit(self, X, y):\n        return self\n\n"
    model = TORCH.replace("    def __init__(self):", fit + "    def __init__(self):")
    renamed = model.replace("def fit", "def train")
    assert "def fit" in model and "def train" in renamed
    assert normalise_source(model) != normalise_source(renamed)
    assert normalise_source("def make_model():\n    return 1\n") != normalise_source("def build():\n    return 1\n")


def test_a_second_copy_in_the_same_batch_is_a_copy_and_the_first_is_not():
    batch = [scored(ORIGINAL.model_dump_json(), index=0), scored(DISGUISED.model_dump_json(), index=1)]
    assert copies(batch, Visits()) == [False, True]
    assert copies(list(reversed(batch)), Visits()) == [True, False]  # by batch index, not list position


def test_code_that_never_ran_is_not_code_already_executed():
    never_ran = scored(ORIGINAL.model_dump_json(), cycle=0, error_class=ErrorClass.forbidden_import, executed=False)
    assert copies([scored(ORIGINAL.model_dump_json())], Visits.from_experiences([never_ran])) == [False]


def test_a_copy_never_falls_below_the_worst_valid_model():
    cfg = RewardConfig(copy_penalty=5.0)
    history = Visits.from_experiences([scored(ORIGINAL.model_dump_json(), cycle=0)])
    [reward] = diversity_rewards([scored(ORIGINAL.model_dump_json(), reward=-0.8)], history, cfg)
    assert reward == -1.0 > cfg.penalty_runtime


# -- history from the replay buffer ---------------------------------------------------------------


def test_visits_read_from_the_buffer_equal_visits_of_the_experiences(tmp_path):
    earlier = [
        *crowded_history(4),
        scored(ORIGINAL.model_dump_json(), index=4, cycle=0),
        scored(spec(VOLUME, TORCH), index=5, cycle=0, reward=-1.25, error_class=ErrorClass.type_error),
        scored(None, index=6, cycle=0, reward=-1.5, error_class=ErrorClass.json_parse, executed=False),
    ]
    buffer = ReplayBuffer(tmp_path)
    buffer.write("run", 0, earlier)
    from_frame = Visits.from_frame(buffer.frame(run="run"))
    assert from_frame == Visits.from_experiences(earlier)
    assert from_frame.cells[("lightgbm", "trend")] == 5
    assert len(from_frame.programs) == 6  # the type error ran too
