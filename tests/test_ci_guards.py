"""What CI's SHARPE_RL_REQUIRE_* settings do to a test that cannot run here: a skip becomes a failure.

.ci/run sets both, so that a missing engine, browser or data folder, or a busy port, can never pass
CI by skipping the tests that claim isolation or check the UIs.
"""

from __future__ import annotations

import pytest
from service_fixtures import REQUIRE_BROWSER, REQUIRE_DOCKER, require


@pytest.fixture
def developer_machine(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Neither setting set, whatever the environment running these tests sets."""
    monkeypatch.delenv(REQUIRE_DOCKER, raising=False)
    monkeypatch.delenv(REQUIRE_BROWSER, raising=False)
    return monkeypatch


def test_without_the_settings_a_test_that_cannot_run_is_skipped(developer_machine):
    require(True, "never said")
    with pytest.raises(pytest.skip.Exception, match=r"^no engine here$"):
        require(False, "no engine here")


def test_under_a_setting_that_requires_it_the_test_fails_and_says_why(developer_machine):
    developer_machine.setenv(REQUIRE_DOCKER, "1")
    with pytest.raises(pytest.fail.Exception, match=r"^SHARPE_RL_REQUIRE_DOCKER=1, but no engine here$"):
        require(False, "no engine here")
    require(True, "never said")


def test_only_the_settings_named_turn_a_skip_into_a_failure(developer_machine):
    developer_machine.setenv(REQUIRE_BROWSER, "1")
    with pytest.raises(pytest.skip.Exception):
        require(False, "no engine here")  # a Docker requirement, by default
    with pytest.raises(pytest.fail.Exception, match=r"^SHARPE_RL_REQUIRE_BROWSER=1, but a port is busy$"):
        require(False, "a port is busy", (REQUIRE_DOCKER, REQUIRE_BROWSER))
    developer_machine.setenv(REQUIRE_BROWSER, "0")
    with pytest.raises(pytest.skip.Exception):
        require(False, "a port is busy", (REQUIRE_DOCKER, REQUIRE_BROWSER))
