"""SemSim: a learned, human-aligned distance between an original image and its reconstruction.

Model: the released architecture, a CIFAR-style ResNet-18 (3x3 stride-1 stem, no max-pool) built from
torchvision's ResNet parts, classification head removed; the embedding is the global-average-pooled
feature (8 x width = 512-d at the released width 64). Callers pass [0, 1] images of any size with 1 or
3 channels: the model replicates grey to 3 channels, resizes to 32x32 and normalises with CIFAR-100
statistics itself.

Embedding normalisation (one choice, used everywhere): embeddings are L2-normalised both in training
(the triplet loss, as released) and in scoring, and SemSim(x, x_hat) is the L2 distance between the
two unit vectors, in [0, 2]. The released evaluation measured unnormalised features instead; we do not,
because a distance between unit vectors has the same scale for every checkpoint and width, so a
calibrated threshold carries over and scores from different checkpoints are comparable.

Lower = more similar = more leakage. ``recognizable`` is ``distance <= threshold``, the threshold that
maximised balanced accuracy on validation identities when the checkpoint was trained; a distance inside
the checkpoint's borderline band around it is a call the validation labels disagree about.
"""

from semsim_audit.semsim.checkpoint import CheckpointMetadata, load_checkpoint, save_checkpoint
from semsim_audit.semsim.model import SemSimNet
from semsim_audit.semsim.scorer import (
    DEFAULT_CHECKPOINT,
    PROXY_V1_CHECKPOINT,
    PROXY_V2_CHECKPOINT,
    PROXY_V3_CHECKPOINT,
    SemSim,
)

__all__ = ["SemSim", "SemSimNet", "CheckpointMetadata", "load_checkpoint", "save_checkpoint",
           "DEFAULT_CHECKPOINT", "PROXY_V1_CHECKPOINT", "PROXY_V2_CHECKPOINT", "PROXY_V3_CHECKPOINT"]
