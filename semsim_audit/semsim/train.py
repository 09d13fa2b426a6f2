"""Training SemSim on annotations in the released layout, then calibrating it.

Two recipes share this trainer (``benchmarks/semsim_sample_efficiency.py`` chose the default):

* the default: a frozen, randomly initialised width-16 ResNet-18 and the ``"stats"`` projection head
  (:class:`~semsim_audit.semsim.model.SemSimNet`), of which only the head learns (``trainable="head"``):
  every image's feature statistics are computed once, then the head is trained with Adam on a logistic
  pair loss (``loss="pairs"``: each annotated (original, reconstruction) pair, recognizable ones pulled
  close, unrecognizable ones pushed apart, with a learnt offset and scale on the distance). Seconds on
  a CPU, and it beats PSNR/SSIM with about 200 annotated identities where the released recipe did not.
* the released recipe (``head="none", trainable="all", loss="triplet"``): the whole ResNet-18, SGD with
  Nesterov momentum, step decay, the triplet loss, crop + flip augmentation. Triplets: anchor = an
  original, positive = a reconstruction of it judged recognizable, negative = one judged unrecognizable;
  an identity without unrecognizable reconstructions draws its negative from ``others/`` (or, when that
  is empty, another identity's original), and one without recognizable ones uses its own original,
  independently augmented, as the positive. The pair loss uses only the judged pairs.

Training can start from a checkpoint instead of from scratch (``init``: ``"default"`` = the checkpoint
shipped in the package, or a file): its backbone is kept, and its head too when it has the same kind. With
``trainable="all"`` the first ``freeze_epochs`` epochs train only the last ResNet stage (and the head), and
``augment="strong"`` adds colour, contrast and brightness jitter to the released crop + flip. Identities
are split into training and validation; each epoch reports the validation AUC, training stops when it has
not improved for ``patience`` epochs, and with ``keep="best"`` the checkpoint written is the epoch with
the best validation AUC. The final threshold maximises balanced accuracy on validation identities; the
same pairs calibrate the borderline band around it, and the checkpoint records both with what they were
calibrated on.

Training is resumable: after every epoch the model, loss and optimiser state go to ``<out>.resume`` (a
safetensors file, never a pickle); a run started again with the same settings continues from there.
Each epoch's randomness is seeded from (seed, epoch), so a resumed run draws what the uninterrupted
run would have drawn.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from semsim_audit.core import seed_everything, select_device
from semsim_audit.semsim.annotations import Annotations, load_image, read_annotations, split_identities
from semsim_audit.semsim.calibration import (
    BORDERLINE_CONFIDENCE,
    borderline_band,
    calibrate_threshold,
    roc_auc,
)
from semsim_audit.semsim.checkpoint import (
    CheckpointMetadata,
    load_checkpoint,
    read_safetensors,
    save_checkpoint,
    write_safetensors,
)
from semsim_audit.semsim.model import HEADS, STATS_HEADS, Head, SemSimNet
from semsim_audit.semsim.scorer import DEFAULT_CHECKPOINT

__all__ = ["TrainConfig", "TrainResult", "ImagePool", "train", "resume_path", "initial_model",
           "AUGMENTATIONS", "LOSSES", "TRAINABLE"]

AUGMENTATIONS = ("none", "released", "strong")
LOSSES = ("pairs", "triplet")
TRAINABLE = ("head", "all")
INIT_DEFAULT = "scratch"
RELEASED_WIDTH = 64
RELEASED_LR = 0.05
FINE_TUNE_LR = 0.01
# The default recipe, as measured in benchmarks/semsim_sample_efficiency.py (BENCHMARKS.md).
HEAD_WIDTH = 16
HEAD_EPOCHS = 30
HEAD_BATCH = 128
HEAD_LR = 1e-3
HEAD_WEIGHT_DECAY = 1e-4
# Standardising feature statistics: a floor on the spread so constant features do not divide by zero.
STD_FLOOR = 1e-6


@dataclass
class TrainConfig:
    """Training settings. Fields left ``None`` take the default of the recipe the other fields pick:
    the head recipe when ``trainable="head"``, the released one when ``trainable="all"``."""

    head: Head = "stats"
    trainable: Literal["head", "all"] = "head"
    loss: Literal["pairs", "triplet"] | None = None  # pairs with the stats head, triplet without
    epochs: int | None = None  # HEAD_EPOCHS, or the released 100
    # None: the --init checkpoint's width, else HEAD_WIDTH with the stats head, the released 64 without.
    width: int | None = None
    batch_size: int | None = None  # HEAD_BATCH pairs, or the released 64 triplets
    # None: HEAD_LR (Adam); for the whole network the released 0.05 from scratch, FINE_TUNE_LR from a
    # checkpoint (0.05 undid the start there).
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None  # HEAD_WEIGHT_DECAY, or the released 5e-4
    # The released schedule decays at epochs 37, 62 and 87 of 100; other lengths keep the proportions.
    # None: that schedule for the whole network, a constant rate for the head.
    lr_milestones: tuple[float, ...] | None = None
    lr_decay: float = 0.1
    margin: float = 1.0
    val_fraction: float = 0.1
    seed: int = 23333
    device: str = "auto"
    annotator: Literal["human", "proxy"] = "human"
    data_description: str = ""
    storage_dtype: Literal["float32", "float16"] = "float32"
    init: str = INIT_DEFAULT
    freeze_epochs: int = 0
    augment: Literal["none", "released", "strong"] | None = None  # none for the head, released otherwise
    patience: int = 10
    keep: Literal["best", "last"] = "best"

    def __post_init__(self) -> None:
        self._check_choices()
        head_only = self.trainable == "head"
        if head_only and self.head not in STATS_HEADS:
            raise ValueError(f"trainable='head' needs one of the stats heads ({', '.join(STATS_HEADS)}): the "
                             f"released model has no head to train alone; use trainable='all'")
        if head_only and self.freeze_epochs:
            raise ValueError(f"freeze_epochs={self.freeze_epochs} needs trainable='all': with "
                             f"trainable='head' the backbone is frozen throughout")
        if head_only and self.augment not in (None, "none"):
            raise ValueError(f"augment={self.augment!r} needs trainable='all': with trainable='head' each "
                             f"image's features are computed once, unaugmented")
        if self.loss is None:
            self.loss = "pairs" if self.head in STATS_HEADS else "triplet"
        if self.epochs is None:
            self.epochs = HEAD_EPOCHS if head_only else 100
        if self.batch_size is None:
            self.batch_size = HEAD_BATCH if head_only else 64
        if self.weight_decay is None:
            self.weight_decay = HEAD_WEIGHT_DECAY if head_only else 5e-4
        if self.augment is None:
            self.augment = "none" if head_only else "released"
        if self.lr_milestones is None:
            self.lr_milestones = () if head_only else (0.37, 0.62, 0.87)
        self.lr_milestones = tuple(float(m) for m in self.lr_milestones)
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width is not None and int(self.width) < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")
        for name in ("freeze_epochs", "patience"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "margin"):
            if getattr(self, name) is not None and not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not float(self.weight_decay) >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def _check_choices(self) -> None:
        choices = {"head": HEADS, "trainable": TRAINABLE, "loss": (None, *LOSSES),
                   "augment": (None, *AUGMENTATIONS), "keep": ("best", "last"),
                   "annotator": ("human", "proxy"), "storage_dtype": ("float32", "float16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                named = ", ".join(str(a) for a in allowed if a is not None)
                raise ValueError(f"{name} must be one of {named}, got {getattr(self, name)!r}")
        if not str(self.init).strip():
            raise ValueError("init must be 'scratch', 'default' or a checkpoint path, got ''")

    def milestone_epochs(self) -> list[int]:
        """Epochs (0-based counts completed) after which the learning rate is multiplied by lr_decay."""
        return sorted({max(1, round(m * self.epochs)) for m in self.lr_milestones if 0 < m < 1})

    def learning_rate(self, epoch: int) -> float:
        """Learning rate during 0-based ``epoch``."""
        return self.base_lr * self.lr_decay ** sum(epoch >= m for m in self.milestone_epochs())

    @property
    def base_lr(self) -> float:
        """The learning rate before decay: ``lr`` when set, else the default of the recipe."""
        if self.lr is not None:
            return float(self.lr)
        if self.trainable == "head":
            return HEAD_LR
        return RELEASED_LR if self.init == "scratch" else FINE_TUNE_LR


@dataclass
class TrainResult:
    """Where the checkpoint went, its metadata, and per-epoch loss and validation AUC."""

    path: Path
    metadata: CheckpointMetadata
    history: list[dict[str, Any]] = field(default_factory=list)


class ImagePool:
    """Every image of an annotation set, loaded once as uint8 (K, 3, 32, 32); identities as indices."""

    def __init__(self, annotations: Annotations) -> None:
        self.index: dict[Path, int] = {}
        images: list[torch.Tensor] = []

        def add(path: Path) -> int:
            if path not in self.index:
                self.index[path] = len(images)
                images.append(load_image(path).mul(255).round().to(torch.uint8))
            return self.index[path]

        self.identities = [(add(ident.original), [add(p) for p in ident.recognizable],
                            [add(p) for p in ident.unrecognizable]) for ident in annotations.identities]
        self.others = [add(p) for p in annotations.others]
        self.pixels = torch.stack(images)

    def images(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.pixels[torch.as_tensor(np.asarray(indices), dtype=torch.long)].float().div(255.0)


def resume_path(out: str | Path) -> Path:
    """The resume-state file kept next to the output while training runs."""
    out = Path(out)
    return out.with_name(out.name + ".resume")


def _epoch_triplets(pool: ImagePool, members: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    rows = []
    for position in members:
        original, positives, negatives = pool.identities[position]
        for positive in positives or [original]:
            if negatives:
                negative = negatives[rng.integers(len(negatives))]
            elif pool.others:
                negative = pool.others[rng.integers(len(pool.others))]
            else:
                other = members[rng.integers(len(members))]
                other = other if other != position else members[(members.index(position) + 1) % len(members)]
                negative = pool.identities[other][0]
            rows.append((original, positive, negative))
    triplets = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    return triplets[rng.permutation(len(triplets))]


def initial_model(config: TrainConfig) -> tuple[SemSimNet, CheckpointMetadata | None]:
    """The network training starts from, and the metadata of the checkpoint it came from (None: scratch).

    From a checkpoint, the backbone is always kept; its head too when it is of the kind ``config.head``
    asks for, otherwise a new head starts from random weights.
    """
    if config.init == "scratch":
        width = config.width or (HEAD_WIDTH if config.head in STATS_HEADS else RELEASED_WIDTH)
        return SemSimNet(width=width, head=config.head), None
    path = DEFAULT_CHECKPOINT if config.init == "default" else Path(config.init)
    try:
        model, metadata = load_checkpoint(path)
    except ValueError as error:
        raise ValueError(f"init: {error}") from None
    if config.width is not None and config.width != metadata.width:
        raise ValueError(f"width {config.width} does not match the init checkpoint {path.name} (width "
                         f"{metadata.width}); leave width unset, or use init='scratch' for another width")
    if metadata.head != config.head:
        start = SemSimNet(width=metadata.width, head=config.head)
        start.backbone.load_state_dict(model.backbone.state_dict())
        model = start
    return model.train(), metadata


def _colour_jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per image: brightness, contrast, saturation and colour-cast changes, the kind people shrug off."""
    count = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, *shape, generator=generator)

    grey = images.mean(dim=1, keepdim=True)
    images = grey + (images - grey) * uniform(0.5, 1.5, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = mean + (images - mean) * uniform(0.7, 1.3, 1, 1, 1)
    return (images * uniform(0.9, 1.1, 3, 1, 1) + uniform(-0.1, 0.1, 1, 1, 1)).clamp(0, 1)


def _frozen(model: SemSimNet, frozen: bool) -> None:
    """Train only the last ResNet stage and the head (``frozen``) or everything; frozen BatchNorms keep
    their statistics."""
    for name, module in model.backbone.named_children():
        trainable = not frozen or name == "layer4"
        for parameter in module.parameters():
            parameter.requires_grad_(trainable)
        if not trainable:
            module.eval()


def _augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The released augmentation, per image: RandomCrop(32, padding=4) then RandomHorizontalFlip."""
    count, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (count, 2), generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    crops = [padded[i, :, top:top + height, left:left + width]
             for i, (top, left) in enumerate(offsets.tolist())]
    out = torch.stack(crops)
    out[flips] = out[flips].flip(-1)
    return out


def _augmented(images: torch.Tensor, generator: torch.Generator, strength: str) -> torch.Tensor:
    if strength == "none":
        return images
    images = _augment(images, generator)
    return _colour_jitter(images, generator) if strength == "strong" else images


def _validation_pairs(pool: ImagePool, members: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    pairs, labels = [], []
    for position in members:
        original, positives, negatives = pool.identities[position]
        pairs += [(original, p) for p in positives] + [(original, n) for n in negatives]
        labels += [True] * len(positives) + [False] * len(negatives)
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2), np.asarray(labels, dtype=bool)


def _epoch_pairs(pool: ImagePool, members: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Every judged (original, reconstruction, recognizable) of ``members``, shuffled: (P, 3) int64."""
    pairs, labels = _validation_pairs(pool, members)
    rows = np.concatenate([pairs, labels[:, None].astype(np.int64)], axis=1)
    return rows[rng.permutation(len(rows))]


class PairLoss(nn.Module):
    """Logistic loss on a pair's embedding distance: P(recognizable) = sigmoid(offset - scale * distance).

    Offset and scale are learnt with the network; 4 and 8 start the boundary at distance 0.5.
    """

    def __init__(self) -> None:
        super().__init__()
        self.offset_scale = nn.Parameter(torch.tensor([4.0, 8.0]))

    def forward(self, first: torch.Tensor, second: torch.Tensor, recognizable: torch.Tensor) -> torch.Tensor:
        distance = (first - second).norm(dim=1)
        logits = self.offset_scale[0] - self.offset_scale[1] * distance
        return F.binary_cross_entropy_with_logits(logits, recognizable.float())


class _Embedder:
    """Embeddings of pool images by index: from cached feature statistics when only the head trains (the
    frozen backbone sees each image once), else through the whole network, with augmentation."""

    def __init__(self, model: SemSimNet, pool: ImagePool, device: torch.device, cached: bool) -> None:
        self.model, self.pool, self.device = model, pool, device
        self.statistics = self._statistics(range(len(pool.pixels))) if cached else None

    @torch.no_grad()
    def _statistics(self, indices: Sequence[int], batch_size: int = 512) -> torch.Tensor:
        self.model.eval()
        chosen = list(indices)
        return torch.cat([self.model.statistics(self.pool.images(chosen[at:at + batch_size]).to(self.device))
                          for at in range(0, len(chosen), batch_size)])

    def __call__(self, *columns: np.ndarray, generator: torch.Generator | None = None,
                 augment: str = "none") -> tuple[torch.Tensor, ...]:
        """Embeddings of each column of indices, in one forward pass (one BatchNorm batch)."""
        sizes = [len(column) for column in columns]
        if self.statistics is not None:
            indices = torch.as_tensor(np.concatenate(columns), device=self.device)
            return self.model.embed_statistics(self.statistics[indices]).split(sizes)
        images = [self.pool.images(column) for column in columns]
        if generator is not None:  # each column drawn on its own, as the released recipe does
            images = [_augmented(group, generator, augment) for group in images]
        return self.model(torch.cat(images).to(self.device)).split(sizes)

    def set_standardisation(self, members: Sequence[int]) -> None:
        """Standardise the head's input with the mean and spread of the training identities' images."""
        indices = sorted({image for position in members
                          for image in [self.pool.identities[position][0], *self.pool.identities[position][1],
                                        *self.pool.identities[position][2]]})
        features = (self.statistics[torch.as_tensor(indices, device=self.device)]
                    if self.statistics is not None else self._statistics(indices))
        self.model.feature_mean.copy_(features.mean(0))
        self.model.feature_std.copy_(features.std(0) + STD_FLOOR)


@torch.no_grad()
def _pair_distances(model: nn.Module, embed: _Embedder, pairs: np.ndarray,
                    batch_size: int = 256) -> np.ndarray:
    model.eval()
    distances = []
    for start in range(0, len(pairs), batch_size):
        first, second = embed(pairs[start:start + batch_size, 0], pairs[start:start + batch_size, 1])
        distances.append((first - second).norm(dim=1).cpu())
    return torch.cat(distances).numpy() if distances else np.zeros(0)


def _auc_or_none(distances: np.ndarray, labels: np.ndarray) -> float | None:
    if labels.size == 0 or labels.all() or not labels.any():
        return None
    return roc_auc(-distances, labels)


def _fingerprint(config: TrainConfig, annotations: Annotations) -> str:
    settings = {k: v for k, v in asdict(config).items() if k != "device"}
    files = sorted(str(p.relative_to(annotations.root)) for ident in annotations.identities
                   for p in [ident.original, *ident.recognizable, *ident.unrecognizable])
    files += sorted(str(p.relative_to(annotations.root)) for p in annotations.others)
    blob = json.dumps({"settings": settings, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _optimised(model: SemSimNet, loss_fn: nn.Module, config: TrainConfig) -> list[nn.Parameter]:
    """The parameters the optimiser owns, in a fixed order (the resume state is keyed by position)."""
    modules: list[nn.Module] = [model.head] if config.trainable == "head" else [model]
    return [p for module in (*modules, loss_fn) for p in module.parameters()]


def _optimizer(parameters: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.trainable == "head":
        return torch.optim.Adam(parameters, lr=config.base_lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.base_lr, momentum=config.momentum, nesterov=True,
                           weight_decay=config.weight_decay)


def _save_resume(path: Path, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                 epoch: int, fingerprint: str, history: list[dict[str, Any]],
                 best: dict[str, torch.Tensor] | None = None) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"loss.{k}": v for k, v in loss_fn.state_dict().items()})
    tensors.update({f"best.{k}": v for k, v in (best or {}).items()})
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for position, parameter in enumerate(parameters):
        for key, value in optimizer.state.get(parameter, {}).items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{position}.{key}"] = value
    write_safetensors(path, tensors, {"epochs_done": epoch, "fingerprint": fingerprint, "history": history})


def _load_resume(path: Path, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                 fingerprint: str) -> tuple[int, list[dict[str, Any]], dict[str, torch.Tensor] | None]:
    tensors, metadata = read_safetensors(path, what="resume state")
    if metadata.get("fingerprint") != fingerprint:
        raise ValueError(f"resume state {path} was made with other settings or data; delete it to start over")

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

    model.load_state_dict(part("model."))
    loss_fn.load_state_dict(part("loss."))
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for name, value in part("optimizer.").items():
        position, key = name.split(".", 1)
        parameter = parameters[int(position)]
        # Scalars (Adam's step count) stay on the CPU, as the optimiser keeps them.
        optimizer.state[parameter][key] = value.to(parameter.device) if value.dim() else value
    return int(metadata["epochs_done"]), list(metadata.get("history", [])), part("best.") or None


def _best_epoch(history: list[dict[str, Any]]) -> int | None:
    """The first epoch with the highest validation AUC, or None when no epoch had one."""
    scored = [(entry["val_auc"], -entry["epoch"]) for entry in history if entry.get("val_auc") is not None]
    return -max(scored)[1] if scored else None


def train(data: str | Path, out: str | Path, config: TrainConfig | None = None, *,
          progress: bool = True) -> TrainResult:
    """Train on the annotation folder ``data``, calibrate, and write the checkpoint to ``out``."""
    config = config or TrainConfig()
    out = Path(out)
    annotations = read_annotations(data)
    pool = ImagePool(annotations)
    all_pairs, all_labels = _validation_pairs(pool, range(len(pool.identities)))
    if not all_labels.any() or all_labels.all():
        raise ValueError(f"--data {data}: needs both recognizable and unrecognizable reconstructions to "
                         f"calibrate a threshold")
    train_ids, val_ids = split_identities(annotations.identities, config.val_fraction, config.seed)
    names = {ident.name: position for position, ident in enumerate(annotations.identities)}
    train_members = [names[i.name] for i in train_ids]
    val_members = [names[i.name] for i in val_ids]
    val_pairs, val_labels = _validation_pairs(pool, val_members)

    device = select_device(config.device)
    seed_everything(config.seed)
    model, start_metadata = initial_model(config)
    model = model.to(device)
    embed = _Embedder(model, pool, device, cached=config.trainable == "head")
    if config.head in STATS_HEADS and (start_metadata is None or start_metadata.head != config.head):
        embed.set_standardisation(train_members)  # a new head: standardise for this data
    loss_fn: nn.Module = (PairLoss() if config.loss == "pairs"
                          else nn.TripletMarginLoss(margin=config.margin, p=2)).to(device)
    optimizer = _optimizer(_optimised(model, loss_fn, config), config)
    draw = _epoch_pairs if config.loss == "pairs" else _epoch_triplets
    fingerprint = _fingerprint(config, annotations)
    state_file = resume_path(out)
    start, history, best = (_load_resume(state_file, model, loss_fn, optimizer, fingerprint)
                            if state_file.is_file() else (0, [], None))

    rows_per_epoch = len(draw(pool, train_members, np.random.default_rng(0)))
    batches_per_epoch = math.ceil(rows_per_epoch / config.batch_size)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("SemSim training", total=config.epochs * batches_per_epoch,
                            completed=start * batches_per_epoch)
        for epoch in range(start, config.epochs):
            best_epoch = _best_epoch(history)
            if config.patience and best_epoch is not None and len(history) - best_epoch >= config.patience:
                bar.update(task, description=f"stopped early after epoch {len(history)}: no better "
                                             f"validation AUC for {config.patience} epochs")
                break
            rng = np.random.default_rng([config.seed, epoch])
            generator = torch.Generator().manual_seed(config.seed * 1009 + epoch)
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate(epoch)
            model.train()
            if config.trainable == "head":
                model.backbone.eval()
            else:
                _frozen(model, epoch < config.freeze_epochs)
            rows = draw(pool, train_members, rng)
            total, seen = 0.0, 0
            for begin in range(0, len(rows), config.batch_size):
                chunk = rows[begin:begin + config.batch_size]
                if config.loss == "pairs":
                    first, second = embed(chunk[:, 0], chunk[:, 1], generator=generator,
                                          augment=config.augment)
                    loss = loss_fn(first, second, torch.as_tensor(chunk[:, 2], device=device))
                else:
                    loss = loss_fn(*embed(*chunk.T, generator=generator, augment=config.augment))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(chunk)
                seen += len(chunk)
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{config.epochs} "
                                                        f"loss {total / seen:.4f}")
            val_auc = _auc_or_none(_pair_distances(model, embed, val_pairs), val_labels)
            history.append({"epoch": epoch + 1, "loss": total / max(seen, 1), "val_auc": val_auc})
            if _best_epoch(history) == epoch + 1:
                best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            _save_resume(state_file, model, loss_fn, optimizer, epoch + 1, fingerprint, history, best)

    kept = _best_epoch(history) if config.keep == "best" else None
    if kept is not None and best is not None:
        model.load_state_dict(best)

    if val_labels.any() and not val_labels.all():
        calibrated_on, pairs, labels = "validation", val_pairs, val_labels
    else:  # too few validation identities to hold both verdicts: calibrate on everything, and say so
        calibrated_on, pairs, labels = "all", all_pairs, all_labels
    distances = _pair_distances(model, embed, pairs)
    threshold, balanced = calibrate_threshold(distances, labels)
    band = borderline_band(distances, labels, threshold)
    calibrated_identities = len(val_members) if calibrated_on == "validation" else len(annotations.identities)
    calibration = {
        "set": (f"{calibrated_identities} validation identities ({config.val_fraction:.0%} held out of "
                f"training, seed {config.seed})" if calibrated_on == "validation"
                else f"all {calibrated_identities} identities (too few validation identities)"),
        "identities": calibrated_identities, "pairs": int(labels.size), "recognizable": int(labels.sum()),
        "balanced_accuracy": balanced,
        "borderline_rule": f"outside the band, at least {BORDERLINE_CONFIDENCE:.0%} of the calibration pairs "
                           f"at that distance agree with the verdict (isotonic fit)",
    }
    training = {
        "recipe": {**{k: v for k, v in asdict(config).items() if k not in ("device", "data_description")},
                   "width": model.width, "lr": config.base_lr},
        "init_sha256": start_metadata.sha256 if start_metadata is not None else None,
        "identities": {"train": len(train_members), "validation": len(val_members)},
        "calibrated_on": calibrated_on, "balanced_accuracy": balanced,
        "val_auc": history[kept - 1]["val_auc"] if kept else (history[-1]["val_auc"] if history else None),
        "best_epoch": kept, "epochs_run": len(history), "history": history,
    }
    description = (config.data_description
                   or f"{len(annotations.identities)} identities from {Path(data).name}")
    metadata = save_checkpoint(out, model.cpu(), threshold=threshold, annotator=config.annotator,
                               data=description, training=training, calibration=calibration,
                               borderline_band=band,
                               dtype=torch.float16 if config.storage_dtype == "float16" else torch.float32)
    state_file.unlink(missing_ok=True)
    return TrainResult(path=out, metadata=metadata, history=history)
