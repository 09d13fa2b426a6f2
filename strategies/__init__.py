"""Flower integration: the audited strategy wrapper, the client audit mod, executors, simulation.

This is the only package that imports ``flwr``.
"""

from semsim_audit.strategies import executors
from semsim_audit.strategies.audited import AuditedFedAvg, AuditedStrategy
from semsim_audit.strategies.client import AuditedClientApp, make_client_app
from semsim_audit.strategies.mods import audit_mod, record_batch
from semsim_audit.strategies.simulation import run_audited_simulation

__all__ = [
    "AuditedStrategy", "AuditedFedAvg", "AuditedClientApp", "audit_mod", "record_batch", "make_client_app",
    "executors", "run_audited_simulation",
]
