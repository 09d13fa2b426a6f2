"""The lowest layer: what every other part shares and nothing of ours is imported by.

Device selection, seeding, image normalisation, resizing and PNG writing, and :class:`DataSpec`
(the public description of a dataset). Each has exactly one definition here.
"""

from semsim_audit.core.images import resize, save_png
from semsim_audit.core.runtime import denormalize, normalize, seed_everything, select_device
from semsim_audit.core.spec import DataSpec

__all__ = ["DataSpec", "select_device", "seed_everything", "normalize", "denormalize", "resize", "save_png"]
