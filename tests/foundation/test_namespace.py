"""One installed namespace: everything is semsim_audit.*, and a user's own modules never shadow it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import semsim_audit

PUBLIC_API = ("AuditedFedAvg", "AuditedClientApp", "AuditedStrategy", "audit_mod", "record_batch",
              "make_client_app", "run_audited_simulation", "AuditConfig", "SemSim", "PrivacyReport",
              "DataSpec", "Observation", "AttackConfig", "run_attack", "run_attacks", "ATTACKS")


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a user would, from ``cwd``; PYTHONPATH is dropped (Ray sets it for its workers
    when an earlier test started it, and a user's shell does not point at this repository)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def test_a_users_strategies_and_attacks_modules_do_not_shadow_the_plugin(tmp_path: Path) -> None:
    # A Flower app folder with its own strategies.py and attacks.py, run from that folder.
    (tmp_path / "strategies.py").write_text("USER_STRATEGIES = True\n")
    (tmp_path / "attacks.py").write_text("USER_ATTACKS = True\n")
    result = _python(f"""
        import strategies, attacks
        assert strategies.USER_STRATEGIES and attacks.USER_ATTACKS
        from semsim_audit import {", ".join(PUBLIC_API)}
        import semsim_audit.attacks, semsim_audit.strategies
        assert AuditedFedAvg.__module__.startswith("semsim_audit.strategies")
        assert run_attacks.__module__.startswith("semsim_audit.attacks")
        print("ok")
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_no_top_level_attacks_or_strategies_is_installed(tmp_path: Path) -> None:
    result = _python("""
        import importlib.util
        print(importlib.util.find_spec("attacks"), importlib.util.find_spec("strategies"))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None None"


def test_the_public_api_is_importable_from_the_package_itself() -> None:
    for name in PUBLIC_API:
        assert getattr(semsim_audit, name) is not None, name
    assert set(PUBLIC_API) <= set(semsim_audit.__all__)
    assert all(hasattr(semsim_audit, name) for name in semsim_audit.__all__)
    assert semsim_audit.DataSpec is semsim_audit.attacks.DataSpec  # one definition, re-exported
