"""The nightly run's form in the Prefect UI is the rl_run flow's parameter schema: what a user changes for a night
at the top, everything else grouped below, and one name field (Prefect's Run Name: the run is named after its
flow run). The browser test (tests/test_ui.py) fills it in; this checks the schema it renders."""

from __future__ import annotations

from prefect.utilities.callables import parameter_schema

from flows.rl_run import rl_run
from sharpe_rl.config import AdvancedSettings, RunConfig
from sharpe_rl.policy.prompts import prompt_versions


def test_the_nights_settings_are_at_the_top_and_the_rest_is_grouped_below():
    schema = parameter_schema(rl_run).model_dump_for_openapi()
    fields = sorted(schema["properties"], key=lambda name: schema["properties"][name]["position"])
    assert fields == ["cycles", "batch_size", "dataset", "prompt_version", "seed", "advanced"]
    assert "name" not in fields  # the one name field is the form's Run Name
    assert schema["properties"]["prompt_version"]["enum"] == prompt_versions()  # a drop-down, no typos
    assert all(schema["properties"][name].get("description") for name in fields)
    advanced = schema["definitions"]["AdvancedSettings"]["properties"]
    assert {"eval", "sandbox", "reward", "policy", "ppo", "task_runner", "runs_dir"} <= set(advanced)


def test_the_form_and_the_run_config_hold_the_same_settings_with_the_same_defaults():
    config = RunConfig()
    night = {"cycles", "batch_size", "dataset", "prompt_version", "seed", "name"}
    assert set(RunConfig.model_fields) == night | set(AdvancedSettings.model_fields)
    assert config.advanced() == AdvancedSettings()
    schema = parameter_schema(rl_run).model_dump_for_openapi()["properties"]
    assert {name: schema[name]["default"] for name in ("cycles", "batch_size", "prompt_version")} == {
        "cycles": config.cycles,
        "batch_size": config.batch_size,
        "prompt_version": config.prompt_version,
    }
    assert schema["seed"]["default"] is None  # no seed: a fresh one for a new run
