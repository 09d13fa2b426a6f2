"""Real attack outputs, and the (original, output) pairs among them whose verdict is not in doubt.

An :class:`AttackOutputs` holds what gradient-inversion attacks reconstructed from known originals
(the attacks are run elsewhere: ``benchmarks/semsim_attack_outputs.py``; this layer cannot import
them). :func:`unambiguous_pairs` keeps only pairs a person would judge the same way every time, picked
by measured PSNR, not by the budget an attack was given:

* recognizable: converged outputs (PSNR >= ``converged_db`` against their own original), and
  content-keeping transforms of them (a shift, a horizontal flip, a colour cast, a mild blur);
* not recognizable: outputs of an attack's first few iterations that are still noise (PSNR below
  ``noise_db``), and any output scored against an original from another photograph (for a converged
  output, it and each of its transforms: clean images of other content, the pairs pixel metrics find
  hardest).

Outputs in between (partly converged) are left out: people would disagree about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semsim_audit import metrics
from semsim_audit.core import save_png
from semsim_audit.semsim.artefacts import adjust_brightness, blur, scale_channels, shift
from semsim_audit.semsim.checkpoint import read_safetensors, write_safetensors

__all__ = ["AttackOutputs", "LabelledPairs", "unambiguous_pairs", "write_pairs_layout",
           "CONVERGED_DB", "NOISE_DB", "EARLY_ITERATIONS", "TRANSFORMS"]

# A converged reconstruction: at 35 dB the pixel error is invisible at 32x32.
CONVERGED_DB = 35.0
# An output of the first iterations counts as noise only if it also measures like noise.
NOISE_DB = 12.0
EARLY_ITERATIONS = 3
TRANSFORMS = ("shift", "flip", "colour", "blur")
_FORMAT = "semsim-audit/attack-outputs"


@dataclass
class AttackOutputs:
    """Reconstructions attacks made of known originals, and what made each (attack, model, budget)."""

    split: str
    originals: torch.Tensor  # (I, 3, 32, 32) in [0, 1]
    photos: list[int]  # photograph each original was cropped from; pairs never mix crops of one photo
    outputs: torch.Tensor  # (R, 3, 32, 32) in [0, 1]
    owners: torch.Tensor  # (R,) index of the original each output reconstructs
    attacks: list[str]
    models: list[str]
    iterations: torch.Tensor  # (R,) the budget the attack was given
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        counts = {self.outputs.shape[0], len(self.attacks), len(self.models), self.owners.numel(),
                  self.iterations.numel()}
        if len(counts) != 1:
            raise ValueError("outputs, owners, attacks, models and iterations must have one entry per output")
        if len(self.photos) != self.originals.shape[0]:
            raise ValueError("photos must have one entry per original")

    @property
    def psnr(self) -> torch.Tensor:
        """PSNR in dB of every output against its own original."""
        return metrics.psnr(self.originals[self.owners], self.outputs)

    @classmethod
    def concatenate(cls, parts: list[AttackOutputs]) -> AttackOutputs:
        """Outputs of several runs on the same originals, as one set."""
        first = parts[0]
        for part in parts[1:]:
            if part.split != first.split or not torch.equal(part.originals, first.originals):
                raise ValueError("only outputs of the same originals can be concatenated")
        return cls(split=first.split, originals=first.originals, photos=list(first.photos),
                   outputs=torch.cat([p.outputs for p in parts]), owners=torch.cat([p.owners for p in parts]),
                   attacks=[a for p in parts for a in p.attacks], models=[m for p in parts for m in p.models],
                   iterations=torch.cat([p.iterations for p in parts]), notes=dict(first.notes))

    def save(self, path: str | Path) -> Path:
        """One safetensors file (never a pickle): images as tensors, the rest as JSON metadata."""
        # Copies: safetensors refuses tensors that share memory (an output may be a view of an original).
        tensors = {"originals": self.originals.float().clone(), "outputs": self.outputs.float().clone(),
                   "owners": self.owners.long().clone(), "iterations": self.iterations.long().clone()}
        metadata = {"format": _FORMAT, "split": self.split, "photos": self.photos, "attacks": self.attacks,
                    "models": self.models, "notes": self.notes}
        return write_safetensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | Path) -> AttackOutputs:
        tensors, metadata = read_safetensors(path, what="attack outputs")
        if metadata.get("format") != _FORMAT:
            raise ValueError(f"{path} is not an attack-outputs file (format {metadata.get('format')!r})")
        return cls(split=metadata["split"], originals=tensors["originals"], photos=list(metadata["photos"]),
                   outputs=tensors["outputs"], owners=tensors["owners"], attacks=list(metadata["attacks"]),
                   models=list(metadata["models"]), iterations=tensors["iterations"],
                   notes=dict(metadata.get("notes", {})))


@dataclass
class LabelledPairs:
    """(original, reconstruction, recognizable) triples with what each pair is and whose original it holds."""

    originals: torch.Tensor
    reconstructions: torch.Tensor
    recognizable: torch.Tensor  # (N,) bool
    kinds: list[str]  # converged, converged+<transform>, converged vs other, early, other-original
    identities: torch.Tensor  # (N,) index of the original in the pair (into AttackOutputs.originals)
    sources: list[str]  # "<model>/<attack>/<iterations>" of the output in the pair
    outputs: torch.Tensor  # (N,) index of the attack output the reconstruction comes from

    def __len__(self) -> int:
        return int(self.recognizable.numel())

    def select(self, keep: torch.Tensor | np.ndarray) -> LabelledPairs:
        """The pairs where ``keep`` (bool, one per pair) is true."""
        mask = torch.as_tensor(np.asarray(keep), dtype=torch.bool)
        chosen = mask.nonzero().flatten().tolist()
        return LabelledPairs(self.originals[mask], self.reconstructions[mask], self.recognizable[mask],
                             [self.kinds[i] for i in chosen], self.identities[mask],
                             [self.sources[i] for i in chosen], self.outputs[mask])


def _transform(image: torch.Tensor, name: str, rng: np.random.Generator) -> torch.Tensor:
    """One content-keeping change of a (3, 32, 32) image, parameters drawn from ``rng``."""
    if name == "shift":
        dy, dx = (int(rng.choice([-1, 1]) * rng.integers(2, 4)) for _ in range(2))
        return shift(image, dy, dx, margin=3)
    if name == "flip":
        return image.flip(-1)
    if name == "colour":
        cast = scale_channels(image, rng.uniform(0.8, 1.2, size=3))
        return adjust_brightness(cast, rng.uniform(-0.1, 0.1)).clamp(0, 1)
    if name == "blur":
        return blur(image, rng.uniform(0.5, 1.0))
    raise ValueError(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}")


def unambiguous_pairs(outputs: AttackOutputs, *, converged_db: float = CONVERGED_DB,
                      noise_db: float = NOISE_DB, early_iterations: int = EARLY_ITERATIONS,
                      seed: int = 0) -> LabelledPairs:
    """The pairs of ``outputs`` whose label is not in doubt (module docstring); seeded, deterministic."""
    rng = np.random.default_rng(seed)
    psnr = outputs.psnr
    photos = np.asarray(outputs.photos)
    originals, reconstructions, labels, kinds, identities, sources, numbers = [], [], [], [], [], [], []

    def add(original: int, image: torch.Tensor, label: bool, kind: str, source: str) -> None:
        originals.append(outputs.originals[original])
        reconstructions.append(image.clamp(0, 1))
        labels.append(label)
        kinds.append(kind)
        identities.append(original)
        sources.append(source)
        numbers.append(number)

    for number in range(outputs.outputs.shape[0]):
        owner = int(outputs.owners[number])
        image = outputs.outputs[number]
        source = f"{outputs.models[number]}/{outputs.attacks[number]}/{int(outputs.iterations[number])}"
        value = float(psnr[number])
        others = np.flatnonzero(photos != photos[owner])
        if value >= converged_db:
            add(owner, image, True, "converged", source)
            versions = [image]
            for name in TRANSFORMS:
                versions.append(_transform(image, name, rng))
                add(owner, versions[-1], True, f"converged+{name}", source)
            # The same clean images judged against another photograph's crop: not recognizable as it.
            for version in versions if others.size else []:
                add(int(rng.choice(others)), version, False, "converged vs other", source)
            continue
        if int(outputs.iterations[number]) <= early_iterations and value < noise_db:
            add(owner, image, False, "early", source)
        if others.size:
            add(int(rng.choice(others)), image, False, "other-original", source)
    if not labels:
        raise ValueError("no unambiguous pair among these outputs")
    return LabelledPairs(torch.stack(originals), torch.stack(reconstructions), torch.tensor(labels),
                         kinds, torch.tensor(identities, dtype=torch.long), sources,
                         torch.tensor(numbers, dtype=torch.long))


def write_pairs_layout(pairs: LabelledPairs, root: str | Path, prefix: str) -> Path:
    """Write ``pairs`` in the released layout under ``root``: identity ``<prefix><original index>``."""
    base = Path(root) / "train_with_ori"
    written: set[int] = set()
    for number in range(len(pairs)):
        identity = int(pairs.identities[number])
        name = f"{prefix}{identity}"
        if identity not in written:
            (base / name).mkdir(parents=True, exist_ok=True)
            save_png(pairs.originals[number], base / name / f"{name}_ori.png")
            written.add(identity)
        folder = base / (name if bool(pairs.recognizable[number]) else f"-{name}")
        folder.mkdir(parents=True, exist_ok=True)
        save_png(pairs.reconstructions[number], folder / f"{name}_{number}_{pairs.kinds[number]}.png")
    return Path(root)
