"""Rebuild the SemSim checkpoints shipped in the package.

    python -m semsim_audit.semsim.default_checkpoint --attack-outputs outputs-train.safetensors

The default (``checkpoints/semsim-proxy-v4.safetensors``) is ``semsim-audit semsim train --head
stats-early`` (a projection head on feature statistics of the stem and first two stages of a frozen,
randomly initialised ResNet-18, statistics that also see layout and sharpness; pair loss) trained on the
union of three annotation sets, none of them human:

* proxy annotations (:mod:`semsim_audit.semsim.proxy`) of crops from the training band of every
  photograph, plus the LFW subset;
* the simulated annotator's training split (:mod:`semsim_audit.semsim.simulated`);
* the unambiguous pairs (:func:`semsim_audit.semsim.attack_outputs.unambiguous_pairs`) of real attack
  outputs on training-band crops, read from ``--attack-outputs``. This layer cannot run attacks; the file
  comes from ``benchmarks/semsim_attack_outputs.py --split train`` (``benchmarks/semsim_verdict.py
  --rebuild-checkpoint`` runs both steps in one command).

The threshold and the borderline band are calibrated on validation identities of that mix. Nothing of
the evaluation band of any photograph is used. ``--recipe proxy-v1`` rebuilds the first default
(``checkpoints/semsim-proxy.safetensors``: the released recipe on proxy annotations of whole photographs);
``--recipe proxy-v2`` the second (``checkpoints/semsim-proxy-v2.safetensors``: the plain stats head, 1,200
simulated identities); ``--recipe proxy-v3`` the third (``checkpoints/semsim-proxy-v3.safetensors``: the
layout head on all four stages).
Deterministic inputs and seeds; the annotation folder goes to a temporary directory, or ``--workdir``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from semsim_audit.semsim.attack_outputs import AttackOutputs, unambiguous_pairs, write_pairs_layout
from semsim_audit.semsim.model import Head
from semsim_audit.semsim.proxy import proxy_originals, write_proxy_annotations
from semsim_audit.semsim.scorer import (
    DEFAULT_CHECKPOINT,
    PROXY_V1_CHECKPOINT,
    PROXY_V2_CHECKPOINT,
    PROXY_V3_CHECKPOINT,
)
from semsim_audit.semsim.simulated import simulate_annotations, write_released_layout
from semsim_audit.semsim.train import TrainConfig, TrainResult, train

__all__ = ["build_default_checkpoint", "build_proxy_v1_checkpoint", "main", "DEFAULTS", "PROXY_V3_DEFAULTS",
           "PROXY_V2_DEFAULTS", "PROXY_V1_DEFAULTS"]

# The shipped default (v4): crops per photograph (training band) for the proxy set, simulated identities,
# seed, head. v4 reads the stem and the first two stages only (v3 all four, the same mix otherwise);
# benchmarks/semsim_verdict.py measures both (BENCHMARKS.md).
DEFAULTS: dict[str, Any] = {"crops_per_photo": 60, "simulated_identities": 6000, "seed": 23333,
                            "head": "stats-early"}
# The previous default, v3: the layout head and 6,000 simulated identities (v2: the plain stats head and
# 1,200), which fixed v2's errors on blur and pixelation.
PROXY_V3_DEFAULTS: dict[str, Any] = {**DEFAULTS, "head": "stats-layout"}
# The default before that, v2 (the same mix with fewer simulated identities, the plain stats head).
PROXY_V2_DEFAULTS: dict[str, Any] = {"crops_per_photo": 60, "simulated_identities": 1200, "seed": 23333,
                                     "head": "stats"}
# The first default, v1: width 16 and 3 epochs of the released recipe keep CPU training near 20 minutes.
PROXY_V1_DEFAULTS = {"epochs": 3, "width": 16, "crops_per_photo": 80, "seed": 23333}


def write_training_mix(folder: Path, attack_outputs: AttackOutputs, *, crops_per_photo: int,
                       simulated_identities: int, seed: int) -> str:
    """Write the three annotation sets into one released-layout folder; return its description."""
    if attack_outputs.split != "train":
        raise ValueError(f"attack outputs of the {attack_outputs.split!r} split: the checkpoint trains on "
                         f"the 'train' split only")
    originals = proxy_originals(crops_per_photo, seed=seed, region="train")
    write_proxy_annotations(folder, originals, seed=seed + 1, prefix="p")
    simulated = simulate_annotations(simulated_identities, split="train", seed=0)
    write_released_layout(simulated, folder, [f"s{i}" for i in range(simulated.num_identities)])
    pairs = unambiguous_pairs(attack_outputs, seed=seed)
    write_pairs_layout(pairs, folder, prefix="a")
    positives = int(pairs.recognizable.sum())
    return (f"proxy mix (no human annotations): proxy annotations (semsim_audit.semsim.proxy, seed {seed}) "
            f"of {len(originals)} identities = {crops_per_photo} crops of the training band of each of the "
            f"10 scikit-image photos + 200 LFW images; simulated annotator (semsim_audit.semsim.simulated, "
            f"train split, seed 0) with {simulated_identities} identities; {len(pairs)} unambiguous pairs "
            f"({positives} recognizable) of real attack outputs on {attack_outputs.originals.shape[0]} "
            f"training-band crops (semsim_audit.semsim.attack_outputs)")


def build_default_checkpoint(out: Path, attack_outputs: AttackOutputs, *,
                             crops_per_photo: int = DEFAULTS["crops_per_photo"],
                             simulated_identities: int = DEFAULTS["simulated_identities"],
                             seed: int = DEFAULTS["seed"], head: Head = DEFAULTS["head"],
                             device: str = "auto", workdir: Path | None = None,
                             progress: bool = True) -> TrainResult:
    """Write the training mix, train the head recipe on it, calibrate, and save the checkpoint to ``out``."""
    with tempfile.TemporaryDirectory(prefix="semsim-mix-") as scratch:
        folder = workdir or Path(scratch)
        description = write_training_mix(folder, attack_outputs, crops_per_photo=crops_per_photo,
                                         simulated_identities=simulated_identities, seed=seed)
        config = TrainConfig(seed=seed, device=device, annotator="proxy", head=head,
                             data_description=description)
        return train(folder, out, config, progress=progress)


def build_proxy_v1_checkpoint(out: Path, *, epochs: int, width: int, crops_per_photo: int, seed: int,
                              device: str = "auto", workdir: Path | None = None,
                              progress: bool = True) -> TrainResult:
    """The previous default: proxy annotations of whole photographs, the released recipe from scratch."""
    originals = proxy_originals(crops_per_photo, seed=seed)
    description = (f"proxy annotations (semsim_audit.semsim.proxy, seed {seed}): {len(originals)} identities "
                   f"= {crops_per_photo} crops of each of the 10 scikit-image photos + 200 LFW images; "
                   f"positives = content-keeping artefacts, negatives = content-destroying changes")
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
    parser.add_argument("--recipe", choices=("default", "proxy-v3", "proxy-v2", "proxy-v1"),
                        default="default")
    parser.add_argument("--attack-outputs", type=Path, default=None,
                        help="training-split attack outputs "
                             "(benchmarks/semsim_attack_outputs.py --split train)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"default: {DEFAULT_CHECKPOINT.name} (or {PROXY_V3_CHECKPOINT.name}, "
                             f"{PROXY_V2_CHECKPOINT.name}, {PROXY_V1_CHECKPOINT.name} for proxy-v3, "
                             f"proxy-v2, proxy-v1) in the package")
    parser.add_argument("--crops-per-photo", type=int, default=None)
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--epochs", type=int, default=PROXY_V1_DEFAULTS["epochs"], help="proxy-v1 only")
    parser.add_argument("--width", type=int, default=PROXY_V1_DEFAULTS["width"], help="proxy-v1 only")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the annotation folder here")
    args = parser.parse_args(argv)
    if args.recipe == "proxy-v1":
        result = build_proxy_v1_checkpoint(
            args.out or PROXY_V1_CHECKPOINT, epochs=args.epochs, width=args.width,
            crops_per_photo=args.crops_per_photo or PROXY_V1_DEFAULTS["crops_per_photo"], seed=args.seed,
            device=args.device, workdir=args.workdir)
    else:
        if args.attack_outputs is None:
            parser.error("--attack-outputs is required for the default recipe: make the file with "
                         "`python benchmarks/semsim_attack_outputs.py --split train --out FILE`, or run "
                         "`python benchmarks/semsim_verdict.py --rebuild-checkpoint` (both steps)")
        recipe, shipped = {"proxy-v3": (PROXY_V3_DEFAULTS, PROXY_V3_CHECKPOINT),
                           "proxy-v2": (PROXY_V2_DEFAULTS, PROXY_V2_CHECKPOINT)}.get(
                               args.recipe, (DEFAULTS, DEFAULT_CHECKPOINT))
        try:
            outputs = AttackOutputs.load(args.attack_outputs)
            result = build_default_checkpoint(
                args.out or shipped, outputs,
                crops_per_photo=args.crops_per_photo or recipe["crops_per_photo"],
                simulated_identities=recipe["simulated_identities"], seed=args.seed, head=recipe["head"],
                device=args.device, workdir=args.workdir)
        except ValueError as error:
            parser.error(str(error))
    meta = result.metadata
    band = f"{meta.borderline_band[0]:.4f}-{meta.borderline_band[1]:.4f}" if meta.borderline_band else "none"
    print(f"wrote {result.path}: width {meta.width}, head {meta.head}, threshold {meta.threshold:.4f}, "
          f"borderline band {band}, validation AUC {meta.training.get('val_auc')}, balanced accuracy "
          f"{meta.calibration.get('balanced_accuracy')} on {meta.calibration.get('set')}, "
          f"sha256 {meta.sha256}")

if __name__ == "__main__":
    main()
