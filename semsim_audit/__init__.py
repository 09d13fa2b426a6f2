"""semsim-audit: privacy audits for Flower federated learning, scored with SemSim.

The public API is imported lazily so that ``import semsim_audit`` stays fast and does not pull
in Flower or torch until a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # core and attacks
    "DataSpec": "semsim_audit.core",
    "Observation": "semsim_audit.attacks",
    "AttackConfig": "semsim_audit.attacks",
    "run_attack": "semsim_audit.attacks",
    "run_attacks": "semsim_audit.attacks",
    "ATTACKS": "semsim_audit.attacks",
    # judging and reporting
    "SemSim": "semsim_audit.semsim",
    "AuditConfig": "semsim_audit.config",
    "PrivacyReport": "semsim_audit.report",
    "RoundRecord": "semsim_audit.report",
    "load_dataset": "semsim_audit.data",
    "build_model": "semsim_audit.models",
    # Flower
    "AuditedStrategy": "semsim_audit.strategies",
    "AuditedFedAvg": "semsim_audit.strategies",
    "AuditedClientApp": "semsim_audit.strategies",
    "audit_mod": "semsim_audit.strategies",
    "record_batch": "semsim_audit.strategies",
    "make_client_app": "semsim_audit.strategies",
    "run_audited_simulation": "semsim_audit.strategies",
}

__all__ = [
    "ATTACKS", "AttackConfig", "AuditConfig", "AuditedClientApp", "AuditedFedAvg", "AuditedStrategy",
    "DataSpec", "Observation", "PrivacyReport", "RoundRecord", "SemSim", "audit_mod", "build_model",
    "load_dataset", "make_client_app", "record_batch", "run_attack", "run_attacks",
    "run_audited_simulation", "__version__",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from semsim_audit.attacks import ATTACKS, AttackConfig, Observation, run_attack, run_attacks
    from semsim_audit.config import AuditConfig
    from semsim_audit.core import DataSpec
    from semsim_audit.data import load_dataset
    from semsim_audit.models import build_model
    from semsim_audit.report import PrivacyReport, RoundRecord
    from semsim_audit.semsim import SemSim
    from semsim_audit.strategies import (
        AuditedClientApp,
        AuditedFedAvg,
        AuditedStrategy,
        audit_mod,
        make_client_app,
        record_batch,
        run_audited_simulation,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'semsim_audit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
