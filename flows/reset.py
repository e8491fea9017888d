"""Reset: back to the base policy with an empty replay buffer (both archived, nothing deleted), once confirmed.

A reset is one click away in the Prefect UI (Quick run), so the flow run first pauses and lists what it would
archive; it archives only when a person resumes it with `archive` ticked (the command line asks the same
question). Unanswered for an hour, it ends and archives nothing.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from tasks.reset import archive_state, plan_reset
from tasks.say import say

#: How long a reset waits for its confirmation.
CONFIRMATION_SECONDS = 3600


class ConfirmReset(RunInput):
    """The answer to "archive all this?"."""

    archive: bool = Field(False, description="Tick to archive everything listed above; unticked, nothing changes.")


@flow(name="reset")
def reset(runs_dir: Path = Path("runs")) -> dict[str, str | None]:
    """Archive every run's checkpoints and the replay buffer once confirmed: runs then restart from the base policy.

    The flow run pauses and lists what it would archive: Resume, tick `archive`, Submit.
    """
    plan = plan_reset(runs_dir)
    if not plan:
        say(f"nothing to archive under {runs_dir}")
        return {}
    listed = "\n".join(f"- {what}" for what in plan)
    say(f"a reset would archive, under {runs_dir}/*-archive/:\n{listed}\nwaiting for a confirmation (Resume)")
    if not confirmed(listed, runs_dir):
        say("not confirmed: nothing was archived")
        return {}
    archived = archive_state(runs_dir)
    for what, where in archived.items():
        say(f"{what}: {'archived to ' + where if where else 'nothing to archive'}")
    return archived


def confirmed(listed: str, runs_dir: Path) -> bool:
    """Pause the flow run until a person answers in the UI; False when they untick `archive` or never answer."""
    question = ConfirmReset.with_initial_data(
        description=f"**Archive these, under `{runs_dir}/*-archive/`?** Every run then restarts from the base "
        f"policy with an empty replay buffer.\n\n{listed}",
        archive=False,
    )
    try:
        return pause_flow_run(wait_for_input=question, timeout=CONFIRMATION_SECONDS).archive
    except FlowPauseTimeout:
        return False
