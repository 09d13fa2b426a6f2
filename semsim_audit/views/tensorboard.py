"""TensorBoard: a report sink that logs every finished round as scalars and image grids.

Needs the ``tensorboard`` extra; ``torch.utils.tensorboard`` is imported when a sink is made, so
the rest of the package runs without it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from matplotlib.image import imread

from semsim_audit.report import PrivacyReport, RoundRecord
from semsim_audit.views.files import figure_png, image_grid_figure

__all__ = ["SCALARS", "IMAGE_TAG", "TensorBoardSink", "summary_writer_class"]

# TensorBoard tag -> RoundRecord field, logged at step = round number when known.
SCALARS: dict[str, str] = {
    "utility/accuracy": "accuracy",
    "utility/loss": "loss",
    "leakage/rate": "leakage_rate",
    "leakage/rate_low": "leakage_low",
    "leakage/rate_high": "leakage_high",
    "leakage/borderline": "borderline",
    "similarity/mean_semsim": "mean_semsim",
    "similarity/mean_psnr": "mean_psnr",
    "similarity/mean_ssim": "mean_ssim",
    "similarity/mean_lpips": "mean_lpips",
    "audit/attack_seconds": "attack_seconds",
}

# One grid per audited client: ``reconstructions/client-<node id>``.
IMAGE_TAG = "reconstructions/client-{node_id}"


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``; ImportError naming the extra when it is missing."""
    try:  # an optional extra: imported only by who asks for TensorBoard
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        message = 'TensorBoard logging needs tensorboard: pip install "semsim-audit[tensorboard]"'
        raise ImportError(message) from None
    return SummaryWriter


class TensorBoardSink:
    """A :class:`semsim_audit.report.ReportSink` that writes TensorBoard event files into ``log_dir``.

    Every finished round (step = round number): accuracy, loss, leakage rate with its 95% interval
    (also drawn as one margin chart), borderline count, mean SemSim / PSNR / SSIM / LPIPS and attack
    seconds; and, for each audited client whose images are saved in the run folder, the grid of
    originals above reconstructions of ``grid.png``.

    Parameters
    ----------
    log_dir : str or Path
        Where the event files go (``tensorboard --logdir`` it, or a folder above it).
    run_dir : str or Path, optional
        The run folder the report's image paths are relative to; by default the report's own
        (:attr:`semsim_audit.report.PrivacyReport.run_dir`, e.g. ``AuditConfig.out_dir``).

    Raises ImportError when the ``tensorboard`` extra is not installed, on construction: before a run.
    """

    def __init__(self, log_dir: str | Path, *, run_dir: str | Path | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._writer_class = summary_writer_class()
        self._writer: Any = None
        self._report: PrivacyReport | None = None

    def start(self, report: PrivacyReport) -> None:
        self._report = report
        self._writer = self._writer_class(log_dir=str(self.log_dir))
        threshold = report.semsim.get("threshold")
        judged = f" (recognizable at SemSim <= {threshold:.3f})" if isinstance(threshold, int | float) else ""
        self._writer.add_text("run", f"run {report.run_id}: attack {report.attack}, threat model "
                              f"{report.threat_model}, SemSim {report.checkpoint_kind} checkpoint{judged}")
        self._writer.add_custom_scalars_marginchart(
            ["leakage/rate", "leakage/rate_low", "leakage/rate_high"], category="leakage",
            title="leakage rate (95% interval)")
        self._writer.flush()

    def write_round(self, record: RoundRecord) -> None:
        if self._writer is None:
            raise RuntimeError("TensorBoardSink.write_round before start")
        for tag, name in SCALARS.items():
            value = getattr(record, name)
            if value is not None:
                self._writer.add_scalar(tag, float(value), record.round)
        run_dir = self.run_dir or (self._report.run_dir if self._report is not None else None)
        if run_dir is not None:
            for audit in record.clients:
                figure = image_grid_figure(run_dir, record.round, audit)
                if figure is not None:
                    pixels = imread(io.BytesIO(figure_png(figure)))[..., :3]  # RGBA -> RGB, in [0, 1]
                    self._writer.add_image(IMAGE_TAG.format(node_id=audit.node_id), pixels, record.round,
                                           dataformats="HWC")
        self._writer.flush()

    def close(self, report: PrivacyReport) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
