"""Fixtures for the CLI tests: the hand-made run folder of the view tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SAMPLE = Path(__file__).parents[1] / "views" / "sample_run.py"
_spec = importlib.util.spec_from_file_location("sample_run", _SAMPLE)
assert _spec is not None and _spec.loader is not None
sample_run_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sample_run_module)


@pytest.fixture
def sample_run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    sample_run_module.make_run(run_dir)
    return run_dir
