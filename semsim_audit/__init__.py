"""semsim-audit: privacy audits for Flower federated learning, scored with SemSim.

The public API is imported lazily so that ``import semsim_audit`` stays fast and does not pull
in Flower or torch until a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "SemSim": "semsim_audit.semsim",
    "AuditConfig": "semsim_audit.config",
    "PrivacyReport": "semsim_audit.report",
    "RoundRecord": "semsim_audit.report",
    "load_dataset": "semsim_audit.data",
    "build_model": "semsim_audit.models",
    "AuditedStrategy": "strategies",
    "AuditedFedAvg": "strategies",
    "audit_mod": "strategies",
    "record_batch": "strategies",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'semsim_audit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
