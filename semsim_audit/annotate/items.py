"""What there is to annotate: (original, reconstruction) pairs read from a run folder or a folder of pairs.

Two kinds of SOURCE are understood:

- A run folder of ours (``report.json`` or ``report.jsonl`` beside ``images/``): every
  ``ReconstructionScore`` with both ``original_image`` and ``reconstruction_image`` set is one item.
  The item id is the reconstruction's path inside ``images/`` without the extension, with ``/``
  turned into ``.`` (``round-1.client-7.reconstruction-0``). Originals with identical pixels (the same
  client image attacked in several rounds) form one identity, so the export puts all their
  reconstructions under one ``<id>`` folder.
- A folder of pairs: ``<name>_ori.<ext>`` is an original and every ``<name>_rec<anything>.<ext>`` beside
  it is one of its reconstructions (``cat_ori.png``, ``cat_rec.png``, ``cat_rec-dlg.png``). The item id is
  the reconstruction's file stem, the identity is ``<name>``. ``<ext>`` is png, jpg or jpeg.

Item ids are restricted to ``[A-Za-z0-9._-]`` (no ``..``), so an id can never name a path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from semsim_audit.report import PrivacyReport, read_jsonl

__all__ = ["Item", "ItemSet", "load_items", "validate_item_id", "IMAGE_TYPES", "ITEM_ID_PATTERN"]

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
ITEM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
_ITEM_ID = re.compile(ITEM_ID_PATTERN)


def validate_item_id(item_id: str) -> str:
    """Return ``item_id`` if it is a safe id (no path separators, no ``..``), else raise ValueError."""
    if not isinstance(item_id, str) or not _ITEM_ID.match(item_id) or ".." in item_id:
        raise ValueError(
            f"item id {item_id!r} is not valid: use 1-200 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return item_id


@dataclass(frozen=True)
class Item:
    """One pair to judge: the original and one reconstruction of it."""

    id: str
    original: Path
    reconstruction: Path
    identity: str
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class ItemSet:
    """The items of one SOURCE, in a stable order, looked up by id."""

    source: Path
    kind: str
    items: list[Item]

    def __post_init__(self) -> None:
        self._by_id = {item.id: item for item in self.items}

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def get(self, item_id: str) -> Item | None:
        """The item with this id, or None (also for ids that are not valid)."""
        return self._by_id.get(item_id)

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]


def _inside(root: Path, relative: str, what: str) -> Path:
    """Resolve a path a report gives relative to its run folder; refuse one that leaves the folder."""
    candidate = Path(relative)
    if candidate.is_absolute():
        raise ValueError(f"{what} {relative!r} must be relative to the run folder")
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"{what} {relative!r} points outside the run folder {root}")
    if not resolved.is_file():
        raise ValueError(f"{what} {relative!r} does not exist in {root}")
    if resolved.suffix.lower() not in IMAGE_TYPES:
        raise ValueError(f"{what} {relative!r} is not a png or jpeg image")
    return resolved


def _pixel_digest(path: Path) -> str:
    """A digest of the decoded pixels, so re-encoded copies of one image share an identity."""
    try:
        with Image.open(path) as image:
            image.load()
            header = f"{image.mode}:{image.size}".encode()
            return hashlib.sha256(header + image.tobytes()).hexdigest()[:16]
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def _read_report(root: Path) -> PrivacyReport:
    json_path, jsonl_path = root / "report.json", root / "report.jsonl"
    if json_path.is_file():
        try:
            return PrivacyReport.model_validate_json(json_path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise ValueError(f"{json_path} is not a privacy report: {error}") from None
    return read_jsonl(jsonl_path)


def _run_folder_items(root: Path) -> list[Item]:
    report = _read_report(root)
    images_root = (root / "images").resolve()
    items: dict[str, Item] = {}
    digests: dict[Path, str] = {}
    for record in report.rounds:
        for client in record.clients:
            for score in client.scores:
                if score.original_image is None or score.reconstruction_image is None:
                    continue
                original = _inside(root, score.original_image, "original_image")
                reconstruction = _inside(root, score.reconstruction_image, "reconstruction_image")
                base = images_root if reconstruction.is_relative_to(images_root) else root
                item_id = ".".join(reconstruction.relative_to(base).with_suffix("").parts)
                try:
                    validate_item_id(item_id)
                except ValueError as error:
                    raise ValueError(f"reconstruction_image {reconstruction.name}: {error}") from None
                if item_id in items:
                    continue  # two scores naming one saved pair: one item
                if original not in digests:
                    digests[original] = _pixel_digest(original)
                items[item_id] = Item(
                    id=item_id, original=original, reconstruction=reconstruction,
                    identity=digests[original], label=score.true_label,
                    meta={"round": record.round, "client": client.node_id, "attack": client.attack,
                          "original_index": score.original_index},
                )
    return sorted(items.values(), key=lambda item: (item.meta["round"], item.meta["client"],
                                                    item.meta["original_index"], item.id))


def _pair_name(stem: str, originals: dict[str, Path]) -> str | None:
    """The original a reconstruction stem belongs to: the longest ``<name>`` with ``<name>_rec...``."""
    starts = [m.start() for m in re.finditer("_rec", stem)]
    for start in reversed(starts):
        if stem[:start] in originals:
            return stem[:start]
    return None


def _pair_folder_items(root: Path) -> list[Item]:
    files = sorted((p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_TYPES),
                   key=lambda p: (p.stem, p.suffix))
    originals = {p.stem[: -len("_ori")]: p for p in files if p.stem.endswith("_ori")}
    items: list[Item] = []
    seen: set[str] = set()
    for path in files:
        if path.stem.endswith("_ori") or "_rec" not in path.stem:
            continue
        name = _pair_name(path.stem, originals)
        if name is None:
            raise ValueError(f"reconstruction {path.name} has no <name>_ori image beside it")
        item_id = validate_item_id(path.stem)
        if item_id in seen:
            raise ValueError(f"two reconstructions share the id {item_id!r} (same name, different extension)")
        seen.add(item_id)
        items.append(Item(id=item_id, original=originals[name].resolve(), reconstruction=path.resolve(),
                          identity=name, meta={"file": path.name}))
    return items


def load_items(source: str | Path) -> ItemSet:
    """Read the items of a run folder or a folder of pairs; ValueError when there is nothing to judge."""
    root = Path(source).resolve()
    if not root.is_dir():
        raise ValueError(f"source {source} is not a folder")
    if (root / "report.json").is_file() or (root / "report.jsonl").is_file():
        kind, items = "run", _run_folder_items(root)
        if not items:
            raise ValueError(f"source {source}: the report names no saved image pairs "
                             "(run the audit with images saved)")
    else:
        kind, items = "pairs", _pair_folder_items(root)
        if not items:
            raise ValueError(f"source {source}: no report.json/report.jsonl and no <name>_ori.png + "
                             "<name>_rec*.png pairs")
    return ItemSet(source=root, kind=kind, items=items)
