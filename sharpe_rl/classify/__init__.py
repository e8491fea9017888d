"""What an experiment tried, read from the syntax tree of its code — never from regexes over text.

Two readers, one per function of the experiment: `models` reads what `make_model()` returns,
`features` reads the kinds of feature `make_features(df)` outputs. Their answers place the
experiment in the quality-diversity grid (`sharpe_rl.grid`): one cell per feature building block,
under its model family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache

from sharpe_rl.classify.features import FeatureClass, classify_features
from sharpe_rl.classify.models import ModelClass, classify_model
from sharpe_rl.grid import Cell
from sharpe_rl.spec import ExperimentSpec

__all__ = [
    "Classification",
    "FeatureClass",
    "ModelClass",
    "classify",
    "classify_features",
    "classify_model",
    "classify_spec_json",
]


@dataclass(frozen=True, slots=True)
class Classification:
    """What one experiment tried: its model and its features."""

    model: ModelClass
    features: FeatureClass = field(default_factory=FeatureClass)

    @property
    def model_family(self) -> str:
        """The value of `Experience.model_family`."""
        return self.model.label

    @property
    def custom_features(self) -> bool | None:
        """The value of `Experience.custom_features`."""
        return self.features.is_custom

    @property
    def cells(self) -> tuple[Cell, ...]:
        """The grid cells this experiment occupies: one per feature building block, under its model family.

        Empty when the model family is unknown or `make_features` could not be read: there is no
        choice to place. Features in which the reader finds no operation (`return df`) are raw
        columns, the "other" block.
        """
        if self.model.family == "unknown" or self.features.is_custom is None:
            return ()
        return tuple((self.model_family, block) for block in self.features.blocks or ("other",))


def classify(spec: ExperimentSpec) -> Classification:
    """Classify an experiment's model and features."""
    return Classification(classify_model(spec.model), classify_features(spec.features))


@lru_cache(maxsize=4096)  # the reward and the archive classify every earlier experiment of the run each cycle
def classify_spec_json(spec_json: str) -> Classification:
    """Classify an experiment stored as JSON (the buffer's `spec_json`)."""
    payload = json.loads(spec_json)
    return Classification(classify_model(payload["model"]), classify_features(payload["features"]))
