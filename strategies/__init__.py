"""Flower integration: the audited strategy wrapper, the client audit mod, executors, simulation.

This is the only package that imports ``flwr``.
"""

from strategies import executors
from strategies.audited import AuditedFedAvg, AuditedStrategy
from strategies.client import make_client_app
from strategies.mods import audit_mod, record_batch
from strategies.simulation import run_audited_simulation

__all__ = [
    "AuditedStrategy", "AuditedFedAvg", "audit_mod", "record_batch", "make_client_app", "executors",
    "run_audited_simulation",
]
