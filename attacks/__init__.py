"""Gradient inversion: what an honest-but-curious server can reconstruct from a client's update.

This package imports neither Flower nor ``semsim_audit``: an attack sees only an
:class:`Observation` (the shared payload), never the client's data.
"""

from attacks.config import AttackConfig, AttackResult, TrialStatus
from attacks.labels import batch_labels, idlg_label, recover_labels
from attacks.observation import Observation, batch_groups
from attacks.recipes import ATTACKS, Attack, run_attack, run_attacks
from attacks.runtime import denormalize, normalize, seed_everything, select_device
from attacks.spec import DataSpec

__all__ = [
    "DataSpec", "Observation", "AttackConfig", "AttackResult", "TrialStatus", "Attack", "ATTACKS",
    "run_attack", "run_attacks", "batch_groups", "recover_labels", "idlg_label", "batch_labels",
    "select_device", "seed_everything", "normalize", "denormalize",
]
