"""What the attacker knows about the data without seeing any of it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semsim_audit.core.runtime import denormalize, normalize

__all__ = ["DataSpec"]


@dataclass(frozen=True)
class DataSpec:
    """Public description of a dataset: image shape (C, H, W), class count, normalisation."""

    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"DataSpec.shape must be (C, H, W) with positive sizes, got {self.shape!r}")
        if int(self.num_classes) < 2:
            raise ValueError(f"DataSpec.num_classes must be >= 2, got {self.num_classes!r}")
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if len(mean) != shape[0] or len(std) != shape[0]:
            raise ValueError(
                f"DataSpec.mean and .std need one value per channel ({shape[0]}), "
                f"got {len(mean)} and {len(std)}"
            )
        if min(std) <= 0:
            raise ValueError(f"DataSpec.std must be positive, got {std!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def channels(self) -> int:
        return self.shape[0]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> model input space."""
        return normalize(images, self.mean, self.std)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Model input space -> [0, 1] pixels (not clamped)."""
        return denormalize(images, self.mean, self.std)

    def to_dict(self) -> dict[str, object]:
        return {"shape": list(self.shape), "num_classes": self.num_classes,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DataSpec:
        return cls(shape=tuple(data["shape"]), num_classes=data["num_classes"],  # type: ignore[arg-type]
                   mean=tuple(data["mean"]), std=tuple(data["std"]))  # type: ignore[arg-type]
