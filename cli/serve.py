"""`sharpe-rl serve`: the Prefect server with the deployments and a worker, and the MLflow UI, on localhost."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from rich.console import Console

from cli.inputs import fail, writable_folder
from cli.options import default, setting


def serve(runs_dir: Annotated[Path, setting("runs_dir")] = default("runs_dir")) -> None:
    """Start on localhost the Prefect server with the deployments and a worker, and the MLflow UI."""
    from sharpe_rl.services import serve as start_services

    writable_folder(runs_dir, "--runs-dir")
    try:
        console = Console()
        start_services(runs_dir, say=lambda line: console.print(line, soft_wrap=True, markup=False, highlight=False))
    except RuntimeError as exc:
        fail(exc)
