"""Views of a :class:`semsim_audit.report.PrivacyReport`: rich console, CSV/JSON/PNG files, HTML."""

from semsim_audit.views.console import ConsoleSink, export_svg, render_report, rounds_table, summary_panel
from semsim_audit.views.files import RunFiles, new_run_dir
from semsim_audit.views.html import render_html, write_html
from semsim_audit.views.run import RunFolderSink, render_run

__all__ = [
    "ConsoleSink", "RunFolderSink", "RunFiles", "export_svg", "new_run_dir", "render_html", "render_report",
    "render_run", "rounds_table", "summary_panel", "write_html",
]
