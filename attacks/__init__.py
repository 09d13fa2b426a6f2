"""Gradient inversion: what an honest-but-curious server can reconstruct from a client's update.

It imports torch and ``semsim_audit.core`` only (never Flower or SemSim): an attack sees only an
:class:`Observation` (the shared payload), never the client's data.
"""

from semsim_audit.attacks.config import AttackConfig, AttackResult, TrialStatus
from semsim_audit.attacks.labels import batch_labels, idlg_label, recover_labels
from semsim_audit.attacks.observation import Observation, batch_groups
from semsim_audit.attacks.recipes import ATTACKS, Attack, run_attack, run_attacks
from semsim_audit.core import DataSpec

__all__ = [
    "DataSpec", "Observation", "AttackConfig", "AttackResult", "TrialStatus", "Attack", "ATTACKS",
    "run_attack", "run_attacks", "batch_groups", "recover_labels", "idlg_label", "batch_labels",
]
