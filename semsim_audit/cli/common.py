"""What every command shares: the one-line error with exit code 2."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

__all__ = ["fail", "err_console"]

err_console = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """Print one line naming the problem to stderr and exit with code 2 (no traceback)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)
