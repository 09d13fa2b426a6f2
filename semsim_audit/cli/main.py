"""Entry point of the `semsim-audit` console script."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import click
import typer
from click.exceptions import NoArgsIsHelpError
from typer.core import TyperGroup

from semsim_audit import __version__
from semsim_audit.cli.annotate import annotate_app
from semsim_audit.cli.bench import bench
from semsim_audit.cli.check import check
from semsim_audit.cli.common import fail
from semsim_audit.cli.info import info
from semsim_audit.cli.run import register as register_run_commands
from semsim_audit.cli.semsim import app as semsim_app


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except NoArgsIsHelpError:  # click has printed the help already
        raise
    except click.UsageError as error:
        message = error.format_message().strip()
        if not message.endswith((".", "?", "!")):
            message += "."
        where = f" Try '{error.ctx.command_path} --help'." if error.ctx is not None else ""
        fail(message + where)


class _RootGroup(TyperGroup):
    """Click's usage errors (unknown option, bad value, value not among the choices) print one line,
    like every other bad input, instead of a usage block and a boxed panel; exit code 2 either way."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


app = typer.Typer(
    name="semsim-audit",
    cls=_RootGroup,
    help="Privacy audits for Flower: gradient-inversion attacks scored with SemSim, round by round.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"semsim-audit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Privacy audits for Flower: gradient-inversion attacks scored with SemSim, round by round.

    Exit codes: 0 done; 1 the work failed (a run, an attack, an unreadable file, a `check` not met);
    2 the command line is wrong.
    """


app.command()(info)
app.command()(bench)
app.command()(check)
app.add_typer(annotate_app)
app.add_typer(semsim_app, name="semsim")
register_run_commands(app)


if __name__ == "__main__":
    app()
