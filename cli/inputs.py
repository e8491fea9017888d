"""A command's inputs, checked before it starts anything, and the one-line error that answers a bad one.

Every error of the command line is one `error: ...` line on stderr that says what to do (`fail`); no
traceback, no usage panel (`cli.app` turns click's usage errors into such a line too).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console


def fail(exc: Exception | str, code: int = 1) -> NoReturn:
    """Print the error for the user on stderr (no traceback) and exit with `code`."""
    say_error(str(exc))
    raise typer.Exit(code) from None


def say_error(message: str) -> None:
    """The one `error: ...` line on stderr."""
    Console(stderr=True).print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)


def existing_runs_dir(runs_dir: Path) -> Path:
    """`--runs-dir` for a command that reads runs: an existing folder, or a one-line error."""
    if not runs_dir.exists():
        fail(f"--runs-dir {runs_dir}: no such folder; runs keep their state under the --runs-dir they ran with")
    if not runs_dir.is_dir():
        fail(f"--runs-dir {runs_dir}: not a folder; runs keep their state under the --runs-dir they ran with")
    return runs_dir


def writable_folder(folder: Path, option: str) -> Path:
    """A folder a command writes to: made when missing; one that cannot be is a one-line error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{option} {folder}: cannot be made a folder ({exc.strerror}); choose a folder you can write to")
    if not os.access(folder, os.W_OK | os.X_OK):
        fail(f"{option} {folder}: not writable; choose a folder you can write to")
    return folder


def spec_text(path: Path) -> str:
    """The spec file's text; a file that is not UTF-8 text exits in one line."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        fail(
            f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): "
            "save the spec as UTF-8 JSON"
        )
