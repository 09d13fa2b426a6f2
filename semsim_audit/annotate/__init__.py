"""Human annotation: judge reconstructions in a local web page, then export SemSim training data."""

from semsim_audit.annotate.export import export_annotations, fleiss_kappa, tally
from semsim_audit.annotate.items import Item, ItemSet, load_items
from semsim_audit.annotate.store import LabelRecord, LabelStore, read_labels

__all__ = [
    "Item", "ItemSet", "load_items", "LabelRecord", "LabelStore", "read_labels",
    "export_annotations", "fleiss_kappa", "tally",
]
