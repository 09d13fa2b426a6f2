"""The layer contracts (import-linter) and ruff hold, and the check fails on a violation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = ROOT / ".ci" / "lint"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VENV_BIN": str(Path(sys.executable).parent)}
    return subprocess.run(["bash", str(root / ".ci" / "lint")], capture_output=True, text=True, env=env,
                          timeout=300)


def test_layer_contracts_and_lint_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") >= 3


def _copy_of_the_project(tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.safetensors", "*.pt")
    for folder in ("semsim_audit", "attacks", "strategies", ".ci"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_the_core_importing_an_upper_layer_breaks_the_contract(tmp_path: Path) -> None:
    copy = _copy_of_the_project(tmp_path)
    runtime = copy / "semsim_audit" / "core" / "runtime.py"
    violation = "\nfrom semsim_audit.report import PrivacyReport  # noqa: E402,F401\n"
    runtime.write_text(runtime.read_text() + violation)
    result = _lint(copy)
    assert result.returncode != 0
    assert "semsim_audit.core is not allowed to import semsim_audit.report" in result.stdout


def test_flower_outside_strategies_breaks_the_contract(tmp_path: Path) -> None:
    copy = _copy_of_the_project(tmp_path)
    scoring = copy / "semsim_audit" / "scoring.py"
    scoring.write_text(scoring.read_text() + "\nimport flwr  # noqa: E402,F401\n")
    result = _lint(copy)
    assert result.returncode != 0
    assert "semsim_audit.scoring is not allowed to import flwr" in result.stdout
