"""The options that set a run's settings, derived from the settings' models in `sharpe_rl/config.py`.

A setting is named by its path in `RunConfig` (`"cycles"`, `"sandbox.executor"`). Its option takes the
field's description as its help, the field's bounds as its range, the field's `Literal` as its choices and
the field's default (`default`), so each of them is written once, in the model. `OPTIONS` names the option
of each setting: the commands declare their options with it, and `validated` names the option behind a
value the model refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from functools import cache
from typing import Any, Literal, TypeVar, get_args, get_origin

import annotated_types
import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from cli.inputs import fail
from sharpe_rl.config import RunConfig

#: A run under the default settings: every default of the command line comes from it.
RUN_DEFAULTS = RunConfig()

#: The option behind each setting a command takes, by the setting's path in RunConfig.
OPTIONS = {
    "name": "--name",
    "cycles": "--cycles",
    "batch_size": "--batch-size",
    "dataset": "--data",
    "prompt_version": "--prompt",
    "seed": "--seed",
    "runs_dir": "--runs-dir",
    "tracking_uri": "--tracking-uri",
    "eval.scheme": "--scheme",
    "sandbox.executor": "--executor",
    "sandbox.workers": "--workers",
    "task_runner.kind": "--task-runner",
    "task_runner.dask_address": "--dask-address",
    "policy.model": "--policy",
}

#: What RunConfig.name's pattern says, in words.
NAME_RULE = "a run name is letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100 characters"


def field(path: str, model: type[BaseModel] = RunConfig) -> FieldInfo:
    """The field of the setting at `path` ("sandbox.executor": RunConfig.sandbox's `executor`)."""
    *parents, name = path.split(".")
    for parent in parents:
        model = model.model_fields[parent].annotation  # type: ignore[assignment]  # a sub-model
    return model.model_fields[name]


def setting(path: str, note: str = "", *, model: type[BaseModel] = RunConfig, **option: Any) -> Any:
    """The option of the setting at `path`: named by `OPTIONS`, its help the field's description (then `note`, e.g.
    what a default of None means here), its range the field's bounds. `option`: more of `typer.Option`'s arguments."""
    info = field(path, model)
    bounds: dict[str, Any] = {}
    for constraint in info.metadata:
        if isinstance(constraint, annotated_types.Ge):
            bounds["min"] = constraint.ge
        elif isinstance(constraint, annotated_types.Le):
            bounds["max"] = constraint.le
    names = (OPTIONS[path],) if model is RunConfig else ()
    return typer.Option(*names, help=" ".join(filter(None, (info.description, note))), **(bounds | option))


@cache
def choices(path: str) -> type[StrEnum]:
    """The values of the setting's `Literal` as an enum, which Typer offers as the option's choices."""
    annotation = field(path).annotation
    if get_origin(annotation) is not Literal:
        raise TypeError(f"{path} is not a Literal setting")
    values = get_args(annotation)
    return StrEnum("".join(part.title() for part in path.replace(".", "_").split("_")), [(v, v) for v in values])


def default(path: str) -> Any:
    """The setting's default, as `RunConfig()` has it (a member of `choices(path)` for a Literal setting)."""
    value: Any = RUN_DEFAULTS
    for name in path.split("."):
        value = getattr(value, name)
    return choices(path)(value) if get_origin(field(path).annotation) is Literal else value


Executor = choices("sandbox.executor")
Scheme = choices("eval.scheme")
TaskRunner = choices("task_runner.kind")


def option_at(path: str) -> str:
    """The option(s) behind the setting at `path` or inside it, e.g. "--task-runner/--dask-address" for a check
    of the task runner's settings as a whole."""
    while path:
        if path in OPTIONS:
            return OPTIONS[path]
        inside = [option for name, option in OPTIONS.items() if name.startswith(path + ".")]
        if inside:
            return "/".join(inside)
        path = path.rpartition(".")[0]
    return "an option"


ModelT = TypeVar("ModelT", bound=BaseModel)


def validated(model: type[ModelT], values: Mapping[str, object], command: str, at: str = "") -> ModelT:
    """`model` from `values`, or a one-line error that names the option of the refused value. `at`: the path of
    `model`'s settings in RunConfig ("task_runner" for a TaskRunnerConfig)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = ".".join(str(part) for part in (*filter(None, [at]), *error["loc"]))
        option = option_at(path)
        if path == "name" and error["type"] == "string_pattern_mismatch":
            fail(f"{option} {error['input']!r}: {NAME_RULE}")
        fail(f"{option}: {error['msg'].removeprefix('Value error, ')}. See `sharpe-rl {command} --help`.")
