"""A small, hand-made run folder (journal + saved images) for the view and CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from semsim_audit.report import ClientAudit, JsonlSink, PrivacyReport, ReconstructionScore, RoundRecord


def _save_png(path: Path, rng: np.random.Generator, channels: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(32, 32, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)


def _audit(run_dir: Path, round_number: int, node_id: int, rng: np.random.Generator, images: int,
           channels: int) -> ClientAudit:
    scores = []
    for index in range(images):
        folder = Path("images") / f"round-{round_number}" / f"client-{node_id}"
        original, reconstruction = folder / f"original-{index}.png", folder / f"reconstruction-{index}.png"
        _save_png(run_dir / original, rng, channels)
        _save_png(run_dir / reconstruction, rng, channels)
        semsim = float(rng.uniform(0.2, 1.4))
        scores.append(ReconstructionScore(
            original_index=index, semsim=semsim, recognizable=semsim < 0.8,
            borderline=BAND[0] <= semsim <= BAND[1], psnr=float(rng.uniform(9, 25)),
            ssim=float(rng.uniform(0, 0.8)), true_label=index, recovered_label=index,
            original_image=original.as_posix(), reconstruction_image=reconstruction.as_posix()))
    return ClientAudit(node_id=node_id, attack="inverting-gradients", status="ok", seconds=1.5,
                       num_images=images, local_steps=1, batch_size=images, label_accuracy=1.0,
                       scores=scores)


# The judge of the sample run: its threshold, borderline band and calibration record (SemSim.info).
BAND = (0.7, 0.95)
SEMSIM_INFO = {"annotator": "proxy", "threshold": 0.8, "borderline_band": list(BAND),
               "calibration": {"set": "123 validation identities (10% held out of training, seed 7)",
                               "balanced_accuracy": 0.876}}


def make_run(run_dir: Path, rounds: int = 3, channels: int = 3) -> PrivacyReport:
    """Write report.jsonl and the images of a 3-round run: two audited clients a round, one failure."""
    rng = np.random.default_rng(0)
    report = PrivacyReport(run_id="sample", semsim=SEMSIM_INFO,
                           config={"dataset": "photos", "rounds": rounds})
    journal = JsonlSink(run_dir / "report.jsonl")
    journal.start(report)
    for round_number in range(1, rounds + 1):
        clients = [_audit(run_dir, round_number, 11, rng, 2, channels)]
        if round_number == 2:
            clients.append(ClientAudit(node_id=22, attack="inverting-gradients", status="failed",
                                       reason="attack diverged (NaN loss)"))
        else:
            clients.append(_audit(run_dir, round_number, 22, rng, 1, channels))
        record = RoundRecord(round=round_number, accuracy=0.1 * round_number, loss=2.3 - 0.2 * round_number,
                             clients=clients).summarise()
        report.add_round(record)
        journal.write_round(record)
    journal.close(report)
    return report
