"""Fixtures for the view tests: a hand-made run folder with a journal and saved images."""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_run import make_run

from semsim_audit.report import PrivacyReport


@pytest.fixture
def sample_run(tmp_path: Path) -> tuple[PrivacyReport, Path]:
    run_dir = tmp_path / "run"
    return make_run(run_dir), run_dir
