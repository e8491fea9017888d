"""The run's score and log steps with the run's history: luck correction, diversity terms, the archive, the prompts.

No sandbox, policy or MLflow: outcomes are built by hand, as `evaluate` returns them, each step is
handed the run's history as the flow reads it (`read_history`), and the buffer and the archive are
written to a temporary runs directory. What a user relies on: a resumed cycle computes
what its first attempt did (rewards, archive, prompts), and each option changes the reward in the
direction it promises.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from spec_snippets import CALENDAR, LIGHTGBM, LOGISTIC, TREND, VOLUME

from sharpe_rl import steps
from sharpe_rl.archive import load_archive, save_archive
from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.config import PolicyConfig, PPOConfig, RewardConfig, RunConfig
from sharpe_rl.evaluation import EvaluationRef, Outcome, evaluate, load_evaluation
from sharpe_rl.experience import Experience
from sharpe_rl.facts import RunFacts, load_facts, save_facts
from sharpe_rl.history import UNREAD_COLUMNS, History, read_history
from sharpe_rl.policy.generation import Generation
from sharpe_rl.policy.learner import Batch, PolicyRef
from sharpe_rl.policy.prompts import run_prompt
from sharpe_rl.sandbox.contract import ErrorClass
from sharpe_rl.sandbox.result import ExecutionResult
from sharpe_rl.scoring import Metrics, expected_max_sharpe
from sharpe_rl.spec import ExperimentSpec


def plain(**changes) -> RewardConfig:
    """The clipped net Sharpe (luck_correction none), so that the diversity terms' effects read as numbers."""
    return RewardConfig(luck_correction="none", **changes)


def make_run(runs_dir: Path, dataset: Path, **updates) -> steps.RunRef:
    """A started run as plain values (what `steps.start` returns, without MLflow or a policy); reward plain()
    unless given."""
    updates.setdefault("reward", plain())
    config = RunConfig(name="r", runs_dir=runs_dir, dataset=dataset, batch_size=4).model_copy(update=updates)
    config = RunConfig.model_validate(config.model_dump())
    evaluation = EvaluationRef.of(dataset, config.eval, config.sandbox, runs_dir / "cache", run_id="r")
    return steps.RunRef(
        config=config,
        evaluation=evaluation,
        prompt=run_prompt(config, timedelta(days=1), ["BTCUSDT", "ETHUSDT", "SOLUSDT"]),
        parent_run_id="not-tracked",
        mlflow_url="",
        policy=PolicyRef(policy=config.policy, ppo=config.ppo, seed=0, runs_dir=runs_dir, run="r"),
        description="",
    )


@pytest.fixture
def run(tmp_path: Path, pipeline_dataset: Path) -> steps.RunRef:
    return make_run(tmp_path / "runs", pipeline_dataset)


def spec(features: str = TREND, model: str = LIGHTGBM, n: int = 100) -> ExperimentSpec:
    return ExperimentSpec(name=f"e{n}", features=features, model=model.format(n=n))


def ran(spec: ExperimentSpec, sharpe: float) -> Outcome:
    """An outcome that ran and was scored (about a year of daily bars, normal returns)."""
    metrics = Metrics(
        valid=True, n_bars=365, periods_per_year=365.0, sharpe_net=sharpe, skewness=0.0, kurtosis=3.0, psr=0.5
    )
    result = ExecutionResult(
        status="ok",
        error_class=None,
        spec_hash=spec.code_hash,
        data_hash="data",
        harness_hash="harness",
        cache_key=f"key-{spec.code_hash}",
        executor="docker",
    )
    return Outcome(spec=spec, result=result, metrics=metrics)


def failed(error: ErrorClass = ErrorClass.syntax) -> Outcome:
    return Outcome(error_class=error, message="failed")


def batch(cycle: int, outcomes: list[Outcome]) -> tuple[Batch, steps.Executions]:
    generations = [Generation("p", "c", [1], [2], [0.0]) for _ in outcomes]
    return Batch(cycle=cycle, generations=generations, seconds=0.0), steps.Executions(outcomes=outcomes, seconds=0.0)


def past(run: steps.RunRef, cycle: int) -> History:
    """What cycle `cycle` knows of the run's past, read as the flow reads it."""
    return read_history(run.config.runs_dir, run.name, cycle)


def score_and_store(run: steps.RunRef, cycle: int, outcomes: list[Outcome]) -> list[Experience]:
    """Score a cycle and keep it in the buffer and the archive, as the log step does (without MLflow)."""
    history = past(run, cycle)
    scored = steps.score(run, *batch(cycle, outcomes), history)
    ReplayBuffer(run.config.runs_dir).write(run.name, cycle, scored.experiences)
    steps.update_archive(run, scored, history)
    return scored.experiences


def rewards(experiences: list[Experience]) -> list[float]:
    return [e.reward for e in experiences]


# -- luck correction ----------------------------------------------------------------------------


@pytest.mark.parametrize("correction", ["deflated", "shrunk"])
def test_the_same_sharpe_earns_less_after_many_trials_with_a_luck_correction(tmp_path, pipeline_dataset, correction):
    fresh = make_run(tmp_path / "fresh", pipeline_dataset, reward=RewardConfig(luck_correction=correction))
    late = make_run(tmp_path / "late", pipeline_dataset, reward=RewardConfig(luck_correction=correction))
    for cycle in range(3):  # twelve earlier trials whose Sharpe ratios spread from -1.5 to 1.5
        score_and_store(late, cycle, [ran(spec(n=10 * cycle + i), -1.5 + cycle + i / 3) for i in range(4)])
    probe = [ran(spec(n=999), 1.0), failed()]

    first = steps.score(fresh, *batch(3, probe), past(fresh, 3)).experiences
    after = steps.score(late, *batch(3, probe), past(late, 3)).experiences
    assert after[0].reward < first[0].reward
    assert after[0].metrics["dsr"] < first[0].metrics["dsr"]
    assert after[1].reward == first[1].reward == RewardConfig().penalty_format


def test_without_a_luck_correction_the_reward_is_the_clipped_sharpe(run):
    for cycle in range(2):
        score_and_store(run, cycle, [ran(spec(n=10 * cycle + i), -1.0 + cycle + i / 2) for i in range(4)])
    experiences = steps.score(run, *batch(2, [ran(spec(n=999), 1.5)]), past(run, 2)).experiences
    assert experiences[0].reward == pytest.approx(1.5 / RewardConfig().sharpe_clip)


def test_the_default_reward_is_the_evidence_of_skill_in_units_of_the_panels_no_skill_noise(tmp_path, pipeline_dataset):
    run = make_run(tmp_path / "runs", pipeline_dataset, reward=RewardConfig())
    sigma = load_evaluation(run.evaluation).noskill.sigma
    first = steps.score(
        run, *batch(0, [ran(spec(n=1), 3 * sigma), ran(spec(n=2), 1.3 * sigma)]), past(run, 0)
    ).experiences
    # two trials: what the best of two no-skill draws scores by luck (E[max z], about 0.5) is taken off
    luck = expected_max_sharpe(2, 1.0)
    assert [e.metrics["evidence"] for e in first] == pytest.approx([3.0, 1.3])
    x = [(3.0 - luck) / 2, (1.3 - luck) / 2]
    assert rewards(first) == pytest.approx([x[0] / (1 + abs(x[0])), x[1] / (1 + abs(x[1]))])
    for cycle in range(3):  # many earlier trials: the same evidence earns less, a lucky 1.3 sigma nothing
        score_and_store(run, cycle, [ran(spec(n=10 * cycle + i), 0.0) for i in range(16)])
    late = steps.score(
        run, *batch(3, [ran(spec(n=1), 3 * sigma), ran(spec(n=2), 1.3 * sigma)]), past(run, 3)
    ).experiences
    assert rewards(late)[0] < rewards(first)[0] and rewards(late)[1] < 0 < rewards(first)[1]


# -- diversity ----------------------------------------------------------------------------------


def test_the_novelty_bonus_pays_a_rare_cell_more_than_a_crowded_one(tmp_path, pipeline_dataset):
    run = make_run(tmp_path / "runs", pipeline_dataset, reward=plain(novelty_weight=0.5))
    for cycle in range(2):  # (lightgbm, trend) visited eight times
        score_and_store(run, cycle, [ran(spec(n=10 * cycle + i), 0.3) for i in range(4)])
    crowded, rare = steps.score(
        run, *batch(2, [ran(spec(n=500), 0.3), ran(spec(CALENDAR, LOGISTIC, 1), 0.3)]), past(run, 2)
    ).experiences
    assert rare.reward > crowded.reward > 0.3 / 3


def test_a_program_that_already_ran_earns_the_copy_penalty(tmp_path, pipeline_dataset):
    run = make_run(tmp_path / "runs", pipeline_dataset, reward=plain(copy_penalty=0.5))
    score_and_store(run, 0, [ran(spec(n=100), 0.9)])
    copy, new = steps.score(run, *batch(1, [ran(spec(n=100), 0.9), ran(spec(n=101), 0.9)]), past(run, 1)).experiences
    assert copy.reward == pytest.approx(0.3 - 0.5)
    assert new.reward == pytest.approx(0.3)


def test_with_the_default_weights_the_diversity_terms_change_nothing(run):
    score_and_store(run, 0, [ran(spec(n=100), 0.9)])
    experiences = steps.score(
        run, *batch(1, [ran(spec(n=100), 0.9), ran(spec(VOLUME, LOGISTIC, 1), 0.9)]), past(run, 1)
    ).experiences
    assert rewards(experiences) == pytest.approx([0.3, 0.3])


# -- what the update learns from (PPOConfig.credit) -------------------------------------------------


def test_with_family_credit_the_update_learns_each_familys_evidence_and_the_reward_stays_its_own(
    tmp_path, pipeline_dataset, monkeypatch
):
    run = make_run(tmp_path / "runs", pipeline_dataset, ppo=PPOConfig(credit="family", credit_prior=2.0))
    score_and_store(run, 0, [ran(spec(n=i), 0.3 * i) for i in range(4)])  # lightgbm earned 0, 0.1, 0.2, 0.3
    probe = [ran(spec(n=9), 2.4), ran(spec(CALENDAR, LOGISTIC, 1), 0.3), failed()]
    scored = steps.score(run, *batch(1, probe), past(run, 1))

    penalty = RewardConfig().penalty_format
    assert rewards(scored.experiences) == pytest.approx([0.8, 0.1, penalty])  # what is logged and paid
    # the run so far: lightgbm 0, 0.1, 0.2, 0.3, 0.8 (sum 1.4), logistic 0.1; the mean of all that ran 0.25
    lightgbm, logistic = (1.4 + 2 * 0.25) / (5 + 2), (0.1 + 2 * 0.25) / (1 + 2)
    assert scored.learned == pytest.approx([lightgbm, logistic, penalty])  # a lucky draw is one of five
    own = make_run(tmp_path / "own", pipeline_dataset)
    score_and_store(own, 0, [ran(spec(n=i), 0.3 * i) for i in range(4)])
    assert steps.score(own, *batch(1, probe), past(own, 1)).learned is None  # the update takes the rewards

    logged = []  # the cycle's numbers, as MLflow and the cycle line get them, say what the update learned from
    monkeypatch.setattr(steps.RunRef, "tracker", lambda self: SimpleNamespace(log_cycle=lambda *a: logged.append(a)))
    assert steps.log(run, scored, {}, past(run, 1)).summary["credit_mean"] == pytest.approx(
        (lightgbm + logistic + penalty) / 3
    )
    own_scored = steps.score(own, *batch(1, probe), past(own, 1))
    assert "credit_mean" not in steps.log(own, own_scored, {}, past(own, 1)).summary
    assert len(logged) == 2


def test_code_that_fails_a_static_check_keeps_its_family_and_earns_only_the_failures_penalty(
    tmp_path, pipeline_dataset
):
    """The post-mortem's family tables see what the policy tried, failures included; the reward and what the
    update learns from are the failure's alone, and no diversity term counts code that never ran."""
    config = plain(novelty_weight=0.5, copy_penalty=0.5)
    run = make_run(tmp_path / "runs", pipeline_dataset, reward=config, ppo=PPOConfig(credit="family"))
    forbidden = spec(model="import os\n" + LIGHTGBM, n=7)
    score_and_store(run, 0, [evaluate(forbidden.model_dump_json(), run.evaluation)])  # static: no sandbox
    (stored,) = ReplayBuffer(run.config.runs_dir).experiences(run.name, 0)
    assert stored.error_class == ErrorClass.forbidden_import and stored.model_family == "lightgbm"
    assert stored.name == "e7" and stored.code_hash == forbidden.code_hash and stored.spec_json
    assert stored.reward == config.penalty_format

    # the same code, run and scored later, is no copy, and lightgbm's credit holds only what ran
    scored = steps.score(run, *batch(1, [ran(forbidden, 0.3)]), past(run, 1))
    alone = make_run(tmp_path / "alone", pipeline_dataset, reward=config, ppo=PPOConfig(credit="family"))
    assert scored.experiences[0].reward == pytest.approx(0.1 + 0.5)  # plain Sharpe / 3, novelty of a first visit
    assert scored.learned == steps.score(alone, *batch(1, [ran(forbidden, 0.3)]), past(alone, 1)).learned


def test_a_resumed_cycle_scores_exactly_as_its_first_attempt(tmp_path, pipeline_dataset):
    options = RewardConfig(luck_correction="deflated", novelty_weight=0.3, copy_penalty=0.5)
    run = make_run(tmp_path / "runs", pipeline_dataset, reward=options)
    score_and_store(run, 0, [ran(spec(n=100), 0.4), ran(spec(VOLUME, n=1), -0.2), failed()])
    cycle_1 = [ran(spec(n=100), 0.4), ran(spec(CALENDAR, LOGISTIC, 2), 0.8), failed(ErrorClass.type_error)]

    first_attempt = score_and_store(run, 1, cycle_1)  # then killed before its checkpoint
    archive_after_first = load_archive(run.config.runs_dir, run.name)
    resumed = score_and_store(run, 1, cycle_1)
    assert rewards(resumed) == rewards(first_attempt)
    assert [e.metrics for e in resumed] == [e.metrics for e in first_attempt]
    assert load_archive(run.config.runs_dir, run.name) == archive_after_first


def test_a_step_refuses_the_history_of_another_cycle(run):
    score_and_store(run, 0, [ran(spec(n=100), 0.4)])
    with pytest.raises(ValueError, match="cycle 1 of run r was handed the history of run r before cycle 0"):
        steps.score(run, *batch(1, [ran(spec(n=101), 0.4)]), past(run, 0))


def test_the_history_through_a_cycle_is_what_the_buffer_holds_once_the_cycle_is_written(run):
    score_and_store(run, 0, [ran(spec(n=100), 0.4), failed()])
    history = past(run, 1)
    cycle_1 = score_and_store(run, 1, [ran(spec(VOLUME, LOGISTIC, 1), -0.2), failed(ErrorClass.type_error)])
    stored = ReplayBuffer(run.config.runs_dir).frame(run=run.name).drop(UNREAD_COLUMNS)
    assert history.through(cycle_1).select(stored.columns).equals(stored)
    assert past(run, 1).frame.equals(history.frame)  # what cycle 1 knows of its past does not change once it ran


# -- the archive --------------------------------------------------------------------------------


def test_the_log_step_keeps_the_archive_of_the_cycles_so_far(run):
    score_and_store(run, 0, [ran(spec(n=100), 0.4), ran(spec(VOLUME, LOGISTIC, 1), -0.2), failed()])
    score_and_store(run, 1, [ran(spec(n=101), 0.9)])
    archive = load_archive(run.config.runs_dir, run.name)
    assert archive.cycles == [0, 1]
    elites = {e.cell: e.sharpe_net for e in archive.elites}
    assert elites == {("lightgbm", "trend"): 0.9, ("sklearn/linear", "volume"): -0.2}
    assert archive.qd_score == pytest.approx((0.9 + 3) / 6 + (-0.2 + 3) / 6)


def test_an_archive_missing_earlier_cycles_is_rebuilt_from_the_buffer(run):
    score_and_store(run, 0, [ran(spec(n=100), 0.4), ran(spec(VOLUME, LOGISTIC, 1), -0.2)])
    save_archive(run.config.runs_dir, load_archive(run.config.runs_dir, "other").model_copy(update={"run": "r"}))
    score_and_store(run, 1, [ran(spec(n=101), 0.1)])
    archive = load_archive(run.config.runs_dir, run.name)
    assert archive.cycles == [0, 1] and len(archive.elites) == 2


# -- the cycle's prompts and groups -------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_size", "group_size", "sizes"),
    [(16, 4, [4, 4, 4, 4]), (16, 16, [16]), (2, 4, [2]), (18, 4, [5, 5, 4, 4]), (7, 2, [3, 2, 2])],
)
def test_every_prompt_gets_at_least_group_size_completions(batch_size, group_size, sizes):
    assert steps.group_sizes(batch_size, group_size) == sizes


def test_a_prompt_without_elites_is_the_same_for_every_group(tmp_path, pipeline_dataset):
    run = make_run(tmp_path / "runs", pipeline_dataset, batch_size=8, ppo=PPOConfig(group_size=2))
    assert steps.cycle_prompts(run, 3, past(run, 3)) == [run.prompt] * 8


def test_inspiration_prompts_differ_by_group_and_a_resumed_cycle_draws_the_same(tmp_path, pipeline_dataset):
    run = make_run(
        tmp_path / "runs", pipeline_dataset, prompt_version="v6_inspiration", batch_size=8, ppo=PPOConfig(group_size=2)
    )
    assert steps.cycle_prompts(run, 0, past(run, 0)) == [run.prompt] * 8  # nothing in the archive yet
    profitable = [(TREND, LIGHTGBM), (VOLUME, LIGHTGBM), (CALENDAR, LOGISTIC), (VOLUME, LOGISTIC), (TREND, LOGISTIC)]
    score_and_store(run, 0, [ran(spec(f, m, i), 0.5 + i / 10) for i, (f, m) in enumerate(profitable)])

    prompts = steps.cycle_prompts(run, 1, past(run, 1))
    groups = [prompts[i : i + 2] for i in range(0, 8, 2)]
    assert all(a == b for a, b in groups) and len({a for a, _ in groups}) > 1
    assert all("net Sharpe" in a for a, _ in groups)

    score_and_store(run, 1, [ran(spec(CALENDAR, LIGHTGBM, 50), 2.5)])  # a killed attempt of cycle 1 was logged
    assert steps.cycle_prompts(run, 1, past(run, 1)) == prompts


def test_the_group_advantage_needs_two_completions_a_cycle():
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        RunConfig(batch_size=1, ppo=PPOConfig(advantage="group"))


# -- does the reward carry over? ------------------------------------------------------------------


def test_the_holdout_takes_the_best_and_a_seeded_sample_of_the_rest(run):
    for cycle in range(3):
        score_and_store(run, cycle, [ran(spec(n=10 * cycle + i), cycle + i / 4) for i in range(4)])
    candidates = steps.holdout_candidates(run, top_n=3, sample_n=3)
    assert [(c.cycle, c.index) for c in candidates[:3]] == [(2, 3), (2, 2), (2, 1)]  # the best three
    rest = {(c.cycle, c.index) for c in candidates[3:]}
    assert len(rest) == 3 and not rest & {(2, 3), (2, 2), (2, 1)}
    assert candidates == steps.holdout_candidates(run, top_n=3, sample_n=3)  # the same sample every time


def test_the_run_says_whether_its_reward_carries_over_to_the_holdout(run):
    for cycle in range(3):
        score_and_store(run, cycle, [ran(spec(n=10 * cycle + i), cycle - 1 + i / 4) for i in range(4)])
    band = load_evaluation(run.evaluation).noskill
    now = datetime(2025, 1, 1, tzinfo=UTC)
    facts = RunFacts(
        noskill=band,
        knowledge="no market memory",
        cutoff=None,
        memory=False,
        reward_start=now,
        reward_end=now,
        holdout_start=now,
        holdout_end=now,
        symbols_named=False,
    )
    save_facts(run.config.runs_dir, run.name, facts)
    candidates = steps.holdout_candidates(run, top_n=4, sample_n=8)
    frame = ReplayBuffer(run.config.runs_dir).frame(run=run.name)
    in_sample = {(r["cycle"], r["index"]): r["metric_sharpe_net"] for r in frame.iter_rows(named=True)}
    scores = [
        {"metric_holdout_sharpe_net": 0.5 * in_sample[(c.cycle, c.index)] + 0.05 * (c.index % 2)} for c in candidates
    ]
    steps.save_holdout(run, candidates, scores)

    selection = steps.carry_over(run)
    assert selection.agreement is not None and selection.agreement.n == 12 and selection.agreement.rho > 0.9
    assert selection.pbo is None  # these outcomes were made by hand: no predictions to cut into blocks
    assert load_facts(run.config.runs_dir, run.name).selection == selection


def test_a_run_opens_with_its_clock_workload_no_skill_band_and_where_its_holdout_lies(
    tmp_path, pipeline_dataset, micro_policy
):
    config = RunConfig(
        name="opening",
        runs_dir=tmp_path / "runs",
        dataset=pipeline_dataset,
        policy=PolicyConfig(model=str(micro_policy)),
    )
    run = steps.start(config)
    try:
        band = load_evaluation(run.evaluation).noskill
        lines = run.description.splitlines()
        clock = next(line for line in lines if line.startswith("point-in-time: "))
        assert "point-in-time: a decision every bar (1 day); label over 1 day" in clock
        noskill = lines[lines.index(clock) + 1]  # the band right below the clock
        assert noskill.startswith(band.sentence()) and "the unit of the evidence reward" in noskill
        assert lines[-1].startswith("holdout: ") and "no market memory (the tiny policy" in lines[-1]
        facts = load_facts(config.runs_dir, "opening")
        assert facts.noskill == band and facts.clock.startswith("a decision every bar")
    finally:
        steps.finish(run)


def test_a_new_run_without_a_seed_draws_a_fresh_one_and_a_resumed_run_keeps_its_own(tmp_path):
    # With one fixed default seed, a second run's first cycle sampled the same completions from the same base
    # policy, and every one of its executions came back from the cache.
    runs = tmp_path / "runs"
    drawn = {steps.choose_seed(runs, f"new-{i}", None) for i in range(20)}
    assert {why for _, why in drawn} == {"fresh"}
    assert len({seed for seed, _ in drawn}) > 15 and all(0 <= seed < steps.FRESH_SEEDS for seed, _ in drawn)
    assert steps.choose_seed(runs, "given", 7) == (7, "given")
    saved = steps.run_config_path(runs, "unfinished")
    saved.parent.mkdir(parents=True)
    saved.write_text(RunConfig(name="unfinished", seed=123).model_dump_json())
    assert steps.choose_seed(runs, "unfinished", None) == (123, "the run's own, resuming")
