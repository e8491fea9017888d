"""Classification of what an experiment tried, against a hand-labelled set of specs."""

from datetime import timedelta

import pytest
from fixtures.labelled_specs import labelled_specs

from sharpe_rl.analysis.classify import (
    FEATURE_BLOCKS,
    FEATURE_KIND_BLOCK,
    GRID_CELLS,
    MODEL_FAMILIES,
    SKLEARN_KINDS,
    TEMPLATE_FEATURE_KINDS,
    classify,
    classify_features,
    classify_model,
    classify_spec_json,
)
from sharpe_rl.policy.prompts import render_prompt
from sharpe_rl.spec import ExperimentSpec, parse_spec

CASES = labelled_specs()
# The tricky cases the labelled set must keep covering.
TRICKY = {
    "lgb_from_import_as",  # alias of a class
    "extra_trees_module_alias",  # alias of a module
    "make_pipeline_logistic",  # the final estimator decides
    "lgbm_in_user_class",  # fit builds lgb.LGBMClassifier
    "torch_module_with_predict_proba",
    "commented_out_imports",
    "unused_xgboost_import",  # the returned RandomForest decides
    "calibrated_lgbm",
    "stacking_trees_knn",
    "statsmodels_logit_class",
}


def test_labelled_set_is_large_and_covers_the_tricky_cases():
    ids = [case["id"] for case in CASES]
    assert len(ids) >= 40
    assert len(set(ids)) == len(ids)
    assert set(ids) >= TRICKY


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_model_family(case):
    found = classify_model(case["spec"]["model"])
    assert (found.label, found.members) == (case["family"], case["members"])


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_feature_blocks_and_template(case):
    found = classify_features(case["spec"]["features"])
    assert (found.blocks, found.is_custom) == (case["blocks"], case["custom"])


def test_accuracy_on_the_labelled_set_is_total():
    right = 0
    for case in CASES:
        model, features = classify_model(case["spec"]["model"]), classify_features(case["spec"]["features"])
        right += (model.label, model.members, features.blocks, features.is_custom) == (
            case["family"],
            case["members"],
            case["blocks"],
            case["custom"],
        )
    assert right == len(CASES)


def test_the_prompt_example_is_the_template():
    """The template is defined by the prompt's own worked example, read with the same classifier."""
    prompt = render_prompt("v1_example", ["open", "high", "low", "close", "volume"], timedelta(hours=1), 1, ["BTCUSDT"])
    example = classify(parse_spec(prompt))
    assert example.model_family == "lightgbm"
    assert set(example.features.kinds) == TEMPLATE_FEATURE_KINDS
    assert example.custom_features is False


def test_classification_fills_the_experience_fields():
    case = next(c for c in CASES if c["id"] == "voting_mixed")
    spec = ExperimentSpec(**case["spec"])
    found = classify(spec)
    assert found.model_family == "ensemble"
    assert found.model.members == ("lightgbm", "xgboost", "sklearn/trees")
    assert found.custom_features is True
    assert classify_spec_json(spec.model_dump_json()) == found


def test_results_use_the_documented_vocabulary():
    assert FEATURE_KIND_BLOCK.keys() >= TEMPLATE_FEATURE_KINDS
    assert set(FEATURE_KIND_BLOCK.values()) == set(FEATURE_BLOCKS)
    for case in CASES:
        model = classify_model(case["spec"]["model"])
        assert model.family in MODEL_FAMILIES
        assert (model.kind in SKLEARN_KINDS) if model.family == "sklearn" else model.kind is None
        assert set(model.members) <= {case["family"], *case["members"]}


def test_an_experiment_occupies_one_grid_cell_per_feature_block():
    for case in CASES:
        found = classify(ExperimentSpec(**case["spec"]))
        if found.model.family == "unknown" or found.custom_features is None:
            assert found.cells == ()
            continue
        assert set(found.cells) <= set(GRID_CELLS)
        assert {block for _, block in found.cells} == set(found.features.blocks or ("other",))
        assert {family for family, _ in found.cells} == {found.model_family}
    raw = ExperimentSpec(name="raw", features="def make_features(df):\n    return df\n", model="def make_model(:\n")
    assert classify(raw).cells == ()  # no model to place
    model = "from sklearn.linear_model import LogisticRegression\ndef make_model():\n    return LogisticRegression()\n"
    assert classify(raw.model_copy(update={"model": model})).cells == (("sklearn/linear", "other"),)


@pytest.mark.parametrize("source", ["", "def make_model(:\n", "x = 1\x00"])
def test_unreadable_model_source_is_unknown(source):
    assert classify_model(source).label == "unknown"


def test_recursive_helpers_terminate():
    source = """
def build(n):
    return build(n - 1) if n else build(n)

class Loop(Loop):
    pass

def make_model():
    a = b
    b = a
    return Loop() if build(3) else a
"""
    assert classify_model(source).label == "other"
    assert classify_features("def f(x):\n    return f(x)\n\ndef make_features(df):\n    return f(df)\n").kinds == ()
