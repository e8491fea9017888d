"""What a policy may remember of the markets: its knowledge cutoff, read from its settings or its build."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

from sharpe_rl.config import PolicyConfig, mistral_7b_policy
from sharpe_rl.policy.knowledge import BUILD_INFO, policy_knowledge


def test_the_mistral_preset_knows_nothing_after_its_release():
    knowledge = policy_knowledge(mistral_7b_policy())
    assert knowledge.cutoff == date(2023, 9, 27) and knowledge.memory
    assert knowledge.holdout_after == datetime(2023, 9, 27, 23, 59, 59, 999999, tzinfo=UTC)


def test_the_tiny_policy_has_no_market_memory(tmp_path):
    (tmp_path / BUILD_INFO).write_text(json.dumps({"market_memory": "none: generated code"}))
    knowledge = policy_knowledge(PolicyConfig(model=str(tmp_path)))
    assert knowledge.cutoff is None and not knowledge.memory and "no market memory" in knowledge.text


def test_another_policys_cutoff_is_unknown_unless_set():
    assert "unknown" in policy_knowledge(PolicyConfig(model="someone/model")).text
    assert policy_knowledge(PolicyConfig(model="someone/model", knowledge_cutoff=date(2024, 6, 1))).cutoff == date(
        2024, 6, 1
    )
