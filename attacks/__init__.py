"""Gradient inversion: what an honest-but-curious server can reconstruct from a client's update.

This package imports neither Flower nor ``semsim_audit``: an attack sees only an
:class:`Observation` (the shared payload), never the client's data.
"""

from attacks.runtime import denormalize, normalize, seed_everything, select_device
from attacks.spec import DataSpec

__all__ = ["DataSpec", "select_device", "seed_everything", "normalize", "denormalize"]
