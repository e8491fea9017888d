"""ExperimentSpec: what the policy writes, read out of a completion and validated strictly.

A completion may wrap the JSON object in prose or Markdown fences; the first JSON object in it
is taken. Anything that is not a JSON object maps to `json_parse`, anything that is JSON but not
an ExperimentSpec maps to `schema`.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sharpe_rl.sandbox.contract import ErrorClass

MAX_NAME_CHARS = 200
MAX_SOURCE_CHARS = 20_000
_SPEC_KEYS = {"name", "features", "model"}


class ExperimentSpec(BaseModel):
    """One experiment: feature code and a model, as Python source."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    features: str = Field(
        min_length=1, max_length=MAX_SOURCE_CHARS, description="Defines make_features(df) -> DataFrame."
    )
    model: str = Field(
        min_length=1, max_length=MAX_SOURCE_CHARS, description="Defines make_model() -> fit/predict_proba."
    )

    @property
    def code_hash(self) -> str:
        """Hash of the code alone (the name does not change what runs)."""
        payload = json.dumps({"features": self.features, "model": self.model}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class SpecError(ValueError):
    """A completion that is not a valid ExperimentSpec, with its error class; `spec` is the spec it parsed to,
    when the JSON was an ExperimentSpec and a check of its code failed (so its model family is still known)."""

    def __init__(self, error_class: ErrorClass, message: str, spec: ExperimentSpec | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.spec = spec


def extract_json_object(text: str) -> dict:
    """Return the first JSON object in `text`; raise SpecError(json_parse) when there is none.

    An object with any ExperimentSpec key wins over other objects, so prose such as
    "returns {}" before the spec does not hide it. Objects found only inside text that failed
    to parse (a completion cut off mid-object) do not count: that is a json_parse failure.
    """
    decoder = json.JSONDecoder()
    first_object: dict | None = None
    seen_broken = False
    start = text.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            seen_broken = True
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            if _SPEC_KEYS & value.keys():
                return value
            if first_object is None and not seen_broken:
                first_object = value
        start = text.find("{", end)
    if first_object is not None:
        return first_object
    raise SpecError(ErrorClass.json_parse, "no complete JSON object found in the completion")


def parse_spec(text: str) -> ExperimentSpec:
    """Parse a completion into an ExperimentSpec, or raise SpecError (json_parse or schema)."""
    obj = extract_json_object(text)
    try:
        return ExperimentSpec.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise SpecError(ErrorClass.schema, f"{where}: {first['msg']}") from exc
