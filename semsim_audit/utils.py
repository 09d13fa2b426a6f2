"""The one device-selection, seeding and normalisation helpers (defined in ``attacks.runtime``)."""

from attacks.runtime import denormalize, normalize, seed_everything, select_device

__all__ = ["select_device", "seed_everything", "normalize", "denormalize"]
