"""What a policy writes, before a run: sampled completions with their static-check outcome and model family.

`sharpe-rl sample` shows these, so a user can see whether a policy writes experiments the
pipeline can run (and which model families it reaches for) before spending a night on it. The
outcome is the one the pipeline's own static checks give (`check_completion`); nothing runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sharpe_rl.checks import check_completion
from sharpe_rl.classify import classify
from sharpe_rl.policy.generation import Generation
from sharpe_rl.spec import SpecError, parse_spec

OK = "ok"


@dataclass(frozen=True)
class CompletionPreview:
    """One sampled completion and what the pipeline's static checks make of it."""

    index: int
    completion: str
    completion_tokens: int
    check: str  # "ok", or the error class the static checks give
    message: str | None  # why the static checks refused it
    name: str | None  # the experiment's name, when the completion parses
    model_family: str | None  # as the post-mortem reads it, whenever the completion parses
    features: str | None  # the sources, when the completion parses
    model: str | None


def preview(generations: Sequence[Generation], columns: Sequence[str]) -> list[CompletionPreview]:
    """Check each completion against the dataset's `columns` and classify the ones that parse.

    A completion that parses but fails a later check (a missing column, a forbidden import) still
    gets its model family: it shows what the policy was trying to write.
    """
    previews = []
    for index, generation in enumerate(generations):
        text = generation.completion
        try:
            spec = parse_spec(text)
        except SpecError:
            spec = None
        try:
            check_completion(text, columns)
            check, message = OK, None
        except SpecError as exc:
            check, message = str(exc.error_class), str(exc)
        previews.append(
            CompletionPreview(
                index=index,
                completion=text,
                completion_tokens=len(generation.completion_token_ids),
                check=check,
                message=message,
                name=spec.name if spec else None,
                model_family=classify(spec).model_family if spec else None,
                features=spec.features if spec else None,
                model=spec.model if spec else None,
            )
        )
    return previews
