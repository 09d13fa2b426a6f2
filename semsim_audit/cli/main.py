"""Entry point of the `semsim-audit` console script."""

from __future__ import annotations

import typer

from semsim_audit.cli.info import info

app = typer.Typer(
    name="semsim-audit",
    help="Privacy audits for Flower: gradient-inversion attacks scored with SemSim, round by round.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Privacy audits for Flower: gradient-inversion attacks scored with SemSim, round by round."""


app.command()(info)


if __name__ == "__main__":
    app()
