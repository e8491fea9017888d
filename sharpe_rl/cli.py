"""The `sharpe-rl` command line (Typer + Rich). Each command is a thin shell over the library."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="sharpe-rl",
    help="Teach a language model to write ML code that trades crypto well.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


if __name__ == "__main__":
    app()
