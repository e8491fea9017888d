"""Reading an ExperimentSpec out of what the policy wrote."""

import json

import pytest

from sharpe_rl.sandbox.contract import ErrorClass
from sharpe_rl.spec import ExperimentSpec, SpecError, parse_spec

SPEC = {
    "name": "lgbm returns",
    "features": "def make_features(df):\n    return df[['close']].pct_change()\n",
    "model": "import lightgbm as lgb\ndef make_model():\n    return lgb.LGBMClassifier()\n",
}


def test_spec_inside_fences_and_prose_is_found():
    text = f"Here is my experiment:\n```json\n{json.dumps(SPEC)}\n```\nGood luck!"
    assert parse_spec(text) == ExperimentSpec(**SPEC)


def test_spec_wins_over_an_earlier_small_object():
    text = "The interface returns {} here. " + json.dumps(SPEC)
    assert parse_spec(text).name == SPEC["name"]


@pytest.mark.parametrize(
    "text",
    [
        "no json at all",
        json.dumps(SPEC)[:-20],  # cut off mid-object, as at max_new_tokens
        "[1, 2, 3]",
    ],
)
def test_unreadable_completion_is_json_parse(text):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert info.value.error_class is ErrorClass.json_parse


@pytest.mark.parametrize(
    ("obj", "where"),
    [
        ({k: v for k, v in SPEC.items() if k != "model"}, "model"),
        ({**SPEC, "extra": 1}, "extra"),
        ({**SPEC, "features": 3}, "features"),
        ({**SPEC, "name": "  "}, "name"),
    ],
)
def test_json_that_is_not_a_spec_is_schema_and_names_the_field(obj, where):
    with pytest.raises(SpecError) as info:
        parse_spec(json.dumps(obj))
    assert info.value.error_class is ErrorClass.schema
    assert str(info.value).startswith(where)


def test_code_hash_ignores_the_name():
    a = ExperimentSpec(**SPEC)
    b = ExperimentSpec(**{**SPEC, "name": "other"})
    c = ExperimentSpec(**{**SPEC, "model": SPEC["model"] + "# tweak\n"})
    assert a.code_hash == b.code_hash != c.code_hash
