"""Run folders and pair folders made on the fly, in the layouts the annotation tool reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semsim_audit.report import ClientAudit, JsonlSink, PrivacyReport, ReconstructionScore, RoundRecord


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


def make_run_folder(root: Path, identities: int = 3, rounds: int = 2, size: int = 32, seed: int = 0) -> Path:
    """A run folder: one client attacked every round on the same ``identities`` images.

    Round 1's reconstructions are mildly noisy copies, later rounds' are unrelated noise, so every
    identity has reconstructions a person would and would not recognise.
    """
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size)
    originals = []
    for k in range(identities):
        # Distinct smooth images: gradients in different directions and colours, plus a square.
        image = np.zeros((size, size, 3))
        image[..., k % 3] = base[None, :] if k % 2 == 0 else base[:, None]
        image[..., (k + 1) % 3] = 255 - base[:, None]
        image[4 + k: 12 + k, 6:14] = rng.integers(0, 256, 3)
        originals.append(image)
    report = PrivacyReport(run_id="annotate-test", attack="inverting-gradients")
    sink = JsonlSink(root / "report.jsonl")
    sink.start(report)
    for r in range(1, rounds + 1):
        scores = []
        for i, image in enumerate(originals):
            folder = Path("images") / f"round-{r}" / "client-7"
            if r == 1:
                reconstruction = image + rng.normal(0, 12, image.shape)
            else:
                reconstruction = rng.integers(0, 256, image.shape)
            _save(root / folder / f"original-{i}.png", image)
            _save(root / folder / f"reconstruction-{i}.png", reconstruction)
            scores.append(ReconstructionScore(
                original_index=i, true_label=i % 10, semsim=0.5,
                original_image=f"{folder}/original-{i}.png",
                reconstruction_image=f"{folder}/reconstruction-{i}.png",
            ))
        record = RoundRecord(round=r, accuracy=0.5, clients=[
            ClientAudit(node_id=7, attack="inverting-gradients", status="ok", num_images=identities,
                        scores=scores),
        ]).summarise()
        report.add_round(record)
        sink.write_round(record)
    (root / "report.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
    return root


def make_pair_folder(root: Path) -> Path:
    """A folder of pairs: two originals, three reconstructions, one stray file."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for name in ("cat", "dog_2"):
        _save(root / f"{name}_ori.png", rng.integers(0, 256, (16, 16, 3)))
    _save(root / "cat_rec.png", rng.integers(0, 256, (16, 16, 3)))
    Image.fromarray(rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)).save(root / "cat_rec-dlg.jpg")
    _save(root / "dog_2_rec_a.png", rng.integers(0, 256, (16, 16, 3)))
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def make_run():
    """The run-folder factory, for tests that need more identities or rounds."""
    return make_run_folder


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    return make_run_folder(tmp_path / "run")


@pytest.fixture
def pair_folder(tmp_path: Path) -> Path:
    return make_pair_folder(tmp_path / "pairs")
