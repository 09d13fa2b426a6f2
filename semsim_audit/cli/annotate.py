"""`semsim-audit annotate`: judge reconstructions in a local web page, then export SemSim training data.

    semsim-audit annotate SOURCE --out DIR [--annotator NAME] [--port N]   (same as `annotate serve ...`)
    semsim-audit annotate export DIR [--to EXPORT] [--labels MORE.jsonl] [--min-votes N] [--force]

A SOURCE folder literally named ``export`` or ``serve`` needs the explicit ``annotate serve`` form.
"""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from semsim_audit.annotate.export import export_annotations
from semsim_audit.annotate.items import load_items
from semsim_audit.annotate.store import (
    LABELS_FILE,
    LabelStore,
    claim_out_dir,
    read_labels,
    session_source,
    validate_annotator,
)
from semsim_audit.cli.common import fail
from semsim_audit.report import format_value

__all__ = ["annotate_app"]


class _ServeByDefault(TyperGroup):
    """A group whose first argument, when it is not a subcommand, is the SOURCE of `serve`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


annotate_app = typer.Typer(
    cls=_ServeByDefault,
    name="annotate",
    help="Label reconstructions as recognizable or not in a local browser page; export the answers "
         "as SemSim training data. `annotate SOURCE --out DIR` is short for "
         "`annotate serve SOURCE --out DIR`.",
    no_args_is_help=True,
)


def _default_annotator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "annotator"


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            fail(f"--port {port}: cannot listen on 127.0.0.1:{port} ({error.strerror}); choose another port")


@annotate_app.command("serve")
def serve(
    source: Annotated[Path, typer.Argument(help="A run folder (report.json + images/) or a folder of "
                                                "<name>_ori.png + <name>_rec*.png pairs.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the answers (labels.jsonl); "
                                                    "reuse it to resume.")],
    annotator: Annotated[str | None, typer.Option(help="Your name in the labels file "
                                                       "(default: your user name).")] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 8765,
    shuffle: Annotated[bool, typer.Option("--shuffle", help="Show the items in an order shuffled per "
                                                            "annotator (fixed across restarts).")] = False,
) -> None:
    """Serve the annotation page on http://127.0.0.1:PORT (loopback only) until Ctrl+C."""
    # The web stack (FastAPI, uvicorn) loads only to serve, not at every command's start-up.
    from semsim_audit.annotate.app import serve as serve_app

    try:
        name = validate_annotator(annotator if annotator is not None else _default_annotator())
    except ValueError as error:
        fail(f"--{error}")
    _check_port_free(port)
    try:
        items = load_items(source)
        labels = claim_out_dir(out, items.source, items.kind, len(items))
        store = LabelStore(labels, name)
        done = sum(item_id in items for item_id in store.answers())
    except ValueError as error:
        fail(str(error))
    console = Console(highlight=False)
    console.print(f"[bold]{len(items)}[/] pairs from {escape(str(items.source))} ({items.kind}); "
                  f"{done} already answered by [bold]{store.annotator}[/].")
    console.print(f"Open [bold]http://127.0.0.1:{port}/[/] in a browser; answers go to "
                  f"{escape(str(labels))}. Ctrl+C stops (answers are saved as you go).")
    serve_app(items, store, port, shuffle=shuffle)


@annotate_app.command("export")
def export(
    annotation_dir: Annotated[Path, typer.Argument(help="The --out folder of `annotate`.")],
    to: Annotated[Path | None, typer.Option(help="Where to write train_with_ori/ and agreement.json "
                                                 "(default: ANNOTATION_DIR/export).")] = None,
    source: Annotated[Path | None, typer.Option(help="The SOURCE, if it moved since annotating "
                                                     "(default: the one recorded in session.json).")] = None,
    labels: Annotated[list[Path] | None, typer.Option(help="More labels files to merge (annotators "
                                                           "who worked elsewhere); repeatable.")] = None,
    min_votes: Annotated[int, typer.Option(min=1, help="Votes an item needs to be exported.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier export in --to.")] = False,
) -> None:
    """Write the released SemSim training layout by majority vote, with agreement and Fleiss' kappa."""
    target = to if to is not None else annotation_dir / "export"
    try:
        items = load_items(source if source is not None else session_source(annotation_dir))
        records = read_labels(annotation_dir / LABELS_FILE)
        for extra in labels or []:
            if not extra.is_file():
                raise ValueError(f"--labels {extra}: no such file")
            records += read_labels(extra)
        if not records:
            raise ValueError(f"no answers in {annotation_dir / LABELS_FILE}: annotate first")
        summary = export_annotations(items, records, target, min_votes=min_votes, force=force)
    except ValueError as error:
        fail(str(error))
    _print_summary(summary, target)


def _print_summary(summary: dict[str, Any], target: Path) -> None:
    table = Table(title="annotation export", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    counts = summary["counts"]
    table.add_row("annotators", ", ".join(summary["annotators"]))
    table.add_row("items", str(summary["items"]))
    table.add_row("recognizable", str(counts["recognizable"]))
    table.add_row("not recognizable", str(counts["not_recognizable"]))
    table.add_row("ties (left out)", str(counts["tie"]))
    table.add_row(f"under {summary['min_votes']} vote(s) (left out)", str(counts["unlabeled"]))
    table.add_row("identities exported", str(summary["identities"]))
    table.add_row("mean agreement with majority", format_value(summary["mean_agreement"], ".3f"))
    kappa = format_value(summary["fleiss_kappa"], ".3f")
    table.add_row("Fleiss' kappa", f"{kappa} over {summary['kappa_items']} items with 2+ votes")
    if summary["unknown_items"]:
        table.add_row("answers about unknown items", str(len(summary["unknown_items"])))
    console = Console(highlight=False)
    console.print(table)
    console.print(f"wrote {escape(str(target / 'train_with_ori'))} and "
                  f"{escape(str(target / 'agreement.json'))} (per-item votes and agreement)")
