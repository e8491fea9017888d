"""The `sharpe-rl` Typer app: every command, in the order `--help` lists them, and its errors in one line."""

from __future__ import annotations

import sys

import typer

from cli import data, experiment, policy, runs, serve
from cli.inputs import say_error


class _Commands(typer.core.TyperGroup):
    """The commands, with a bad option or argument (missing, out of range, of the wrong type) answered in one line
    that says where to look, like every other error of the command line, rather than a usage panel."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # type: ignore[no-untyped-def]
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as exc:  # click's usage errors, as Typer vendors them
            context = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and context is not None:
                typer.echo(context.get_help())
                sys.exit(exc.exit_code)
            hint = f" See `{context.command_path} --help`." if context is not None else ""
            say_error(exc.format_message().rstrip(".") + "." + hint)
            sys.exit(exc.exit_code)
        except typer.Abort:
            say_error("aborted: nothing was changed")
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    name="sharpe-rl",
    help="Teach a language model to write ML code that trades crypto well.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=_Commands,
)
app.add_typer(data.app, name="data")
app.command("build-policy")(policy.build_policy)
app.command("exec")(experiment.exec_spec)
app.command("sample")(policy.sample)
app.command("report")(runs.report)
app.command("run")(runs.run)
app.command("evaluate-policy")(runs.evaluate_policy)
app.command("reset")(runs.reset)
app.command("rerun")(runs.rerun)
app.command("serve")(serve.serve)


def main() -> None:
    """Run the command line (`python -m cli`, or the `sharpe-rl` script)."""
    app()
