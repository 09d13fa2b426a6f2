"""Rebuild the default SemSim checkpoint shipped in the package, from proxy annotations.

    python -m semsim_audit.semsim.default_checkpoint \
        --out semsim_audit/semsim/checkpoints/semsim-proxy.safetensors

Deterministic inputs (bundled photos, LFW subset, fixed seeds); writes the proxy annotation folder
(released layout) to a temporary directory, or ``--workdir`` to keep it, then trains and calibrates
with :func:`semsim_audit.semsim.train.train` and ``annotator="proxy"``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from semsim_audit.semsim.proxy import proxy_originals, write_proxy_annotations
from semsim_audit.semsim.scorer import DEFAULT_CHECKPOINT
from semsim_audit.semsim.train import TrainConfig, TrainResult, train

__all__ = ["build_default_checkpoint", "main"]

# Settings of the shipped checkpoint: width 16 and 3 epochs keep CPU training near 20 minutes on a
# shared 2-core machine, and the file small (~2.8 MB).
DEFAULTS = {"epochs": 3, "width": 16, "crops_per_photo": 80, "seed": 23333}


def build_default_checkpoint(out: Path, *, epochs: int, width: int, crops_per_photo: int, seed: int,
                             device: str = "auto", workdir: Path | None = None,
                             progress: bool = True) -> TrainResult:
    """Write proxy annotations, train on them, and save the checkpoint to ``out``."""
    originals = proxy_originals(crops_per_photo, seed=seed)
    description = (f"proxy annotations (semsim_audit.semsim.proxy, seed {seed}): {len(originals)} identities "
                   f"= {crops_per_photo} crops of each of the 10 scikit-image photos + 200 LFW images; "
                   f"positives = content-keeping artefacts, negatives = content-destroying changes")
    # The shipped checkpoint is the starting point of fine-tuning, so it is trained from scratch itself,
    # with the released recipe (whole network, triplet loss), not the head-only default of `semsim train`.
    config = TrainConfig(epochs=epochs, width=width, seed=seed, device=device, annotator="proxy",
                         head="none", trainable="all", loss="triplet", init="scratch", keep="last",
                         patience=0, data_description=description)
    with tempfile.TemporaryDirectory(prefix="semsim-proxy-") as scratch:
        folder = workdir or Path(scratch)
        write_proxy_annotations(folder, originals, seed=seed + 1)
        return train(folder, out, config, progress=progress)


def main(argv: list[str] | None = None) -> None:
    """Command line of this module (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--width", type=int, default=DEFAULTS["width"])
    parser.add_argument("--crops-per-photo", type=int, default=DEFAULTS["crops_per_photo"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the proxy annotation folder here")
    args = parser.parse_args(argv)
    result = build_default_checkpoint(args.out, epochs=args.epochs, width=args.width,
                                      crops_per_photo=args.crops_per_photo, seed=args.seed,
                                      device=args.device, workdir=args.workdir)
    meta = result.metadata
    print(f"wrote {result.path}: width {meta.width}, threshold {meta.threshold:.4f}, "
          f"validation AUC {meta.training.get('val_auc')}, balanced accuracy "
          f"{meta.training.get('balanced_accuracy'):.4f}, sha256 {meta.sha256}")


if __name__ == "__main__":
    main()
