"""`semsim-audit check RUN`: a CI gate that fails (exit 1) when a finished run leaks more than allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from semsim_audit.cli.common import fail, fail_run, report_or_fail
from semsim_audit.report import RoundRecord, format_value

__all__ = ["check", "round_problems"]


def round_problems(record: RoundRecord, max_leakage: float | None, min_mean_semsim: float | None,
                   allow_unscored: bool) -> list[str]:
    """What is wrong with one audited round under the limits (empty: it passes)."""
    problems = []
    unscored = [] if allow_unscored else [
        name for name, value, limit in (("leakage rate", record.leakage_rate, max_leakage),
                                        ("mean SemSim", record.mean_semsim, min_mean_semsim))
        if limit is not None and value is None]
    if unscored:
        reasons = sorted({c.reason for c in record.clients if c.status != "ok" and c.reason})
        why = f": {'; '.join(reasons)}" if reasons else ""
        problems.append(f"no {' or '.join(unscored)} to check ({record.status}{why})")
    if max_leakage is not None and record.leakage_rate is not None and record.leakage_rate > max_leakage:
        problems.append(f"leakage rate {record.leakage_rate:.1%} > --max-leakage {max_leakage:.1%}")
    if (min_mean_semsim is not None and record.mean_semsim is not None
            and record.mean_semsim < min_mean_semsim):
        problems.append(f"mean SemSim {record.mean_semsim:.3f} < --min-mean-semsim {min_mean_semsim:.3f} "
                        "(reconstructions closer to the originals than allowed)")
    return problems


def check(
    run: Annotated[Path, typer.Argument(help="A run folder, or its report.jsonl / report.json.")],
    max_leakage: Annotated[float | None, typer.Option(
        help="Fail when a round's leakage rate (share of its reconstructions SemSim judges recognizable) "
             "is above this, in [0, 1].")] = None,
    min_mean_semsim: Annotated[float | None, typer.Option(
        help="Fail when a round's mean SemSim distance is below this, in [0, 2]: lower distance = "
             "reconstructions more like the originals = more leakage.")] = None,
    allow_unscored: Annotated[bool, typer.Option(
        help="Let audited rounds with nothing to check (every audit failed) pass; by default they fail, "
             "since a failed attack is no evidence of privacy.")] = False,
) -> None:
    """Gate a finished run: exit 1, listing the offending rounds, when a round leaks more than allowed.

    Rounds that were not audited are skipped; a run with no scored round fails.
    """
    if max_leakage is None and min_mean_semsim is None:
        fail("give a limit: --max-leakage RATE and/or --min-mean-semsim DISTANCE")
    if max_leakage is not None and not 0.0 <= max_leakage <= 1.0:
        fail(f"--max-leakage must lie in [0, 1] (a share of reconstructions), got {max_leakage:g}")
    if min_mean_semsim is not None and not 0.0 <= min_mean_semsim <= 2.0:
        fail(f"--min-mean-semsim must lie in [0, 2] (SemSim distances do), got {min_mean_semsim:g}")
    report, _ = report_or_fail(run)

    audited = [r for r in report.rounds if r.status != "not audited"]
    scored = [r for r in audited if r.leakage_rate is not None or r.mean_semsim is not None]
    if not scored:
        fail_run(f"{run}: nothing to check: {len(report.rounds)} round(s), none with scored reconstructions")
    console = Console()
    judge = (f"SemSim {report.checkpoint_kind} checkpoint, threshold "
             f"{format_value(report.semsim.get('threshold'), '.3f')}")
    offending = 0
    for record in audited:
        problems = round_problems(record, max_leakage, min_mean_semsim, allow_unscored)
        if problems:
            offending += 1
            console.print(f"[bold red]FAIL[/] round {record.round}: {escape('; '.join(problems))}",
                          highlight=False, soft_wrap=True)
    limits = " and ".join(text for text, given in (
        (f"--max-leakage {format_value(max_leakage, '.1%')}", max_leakage is not None),
        (f"--min-mean-semsim {format_value(min_mean_semsim, '.3f')}", min_mean_semsim is not None)) if given)
    if offending:
        fail_run(f"{offending} of {len(audited)} audited round(s) break {limits} ({judge})")
    console.print(f"[bold green]ok[/]: {len(audited)} audited round(s) within {limits} ({judge})",
                  highlight=False, soft_wrap=True)
