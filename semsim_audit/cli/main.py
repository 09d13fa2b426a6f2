"""Entry point of the `semsim-audit` console script."""

from __future__ import annotations

import typer

from semsim_audit.cli.annotate import annotate_app
from semsim_audit.cli.bench import bench
from semsim_audit.cli.info import info
from semsim_audit.cli.run import register as register_run_commands
from semsim_audit.cli.semsim import app as semsim_app

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
app.command()(bench)
app.add_typer(annotate_app)
app.add_typer(semsim_app, name="semsim")
register_run_commands(app)


if __name__ == "__main__":
    app()
