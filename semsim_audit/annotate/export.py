"""Turn collected answers into the released SemSim training layout, with agreement statistics.

Each item's label is the majority of the annotators' answers in effect ("skip" is no vote). Items
with a tie, or fewer votes than ``min_votes``, are left out of the training layout and listed as such.
Each identity (one original) becomes one numbered folder, as in the released annotations::

    train_with_ori/<k>/    <k>[_<class>]_ori.png + the reconstructions judged recognizable (<item>.png)
    train_with_ori/-<k>/   the reconstructions of the same original judged not recognizable

For run folders, ``configurations.csv`` (``path,configuration``; the layout the SemSim evaluation reads)
says which configuration made each exported reconstruction: ``<attack>/round-<R>``, since each round
attacks a different model state.

``agreement.json`` beside ``train_with_ori/`` maps every item to its folder and holds its votes, the
fraction of votes agreeing with its majority, the pairwise agreement, and Fleiss' kappa over all items.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from semsim_audit.annotate.items import ItemSet
from semsim_audit.annotate.store import LabelRecord, effective_answers
from semsim_audit.report import mean

__all__ = [
    "fleiss_kappa", "pairwise_agreement", "tally", "export_annotations", "AGREEMENT_FILE",
    "CONFIGURATIONS_FILE",
]

AGREEMENT_FILE = "agreement.json"
CONFIGURATIONS_FILE = "configurations.csv"
_CATEGORIES = ("recognizable", "not_recognizable")


def pairwise_agreement(counts: Sequence[int]) -> float | None:
    """The fraction of rater pairs that agree on one item (Fleiss' P_i); None below two ratings."""
    total = sum(counts)
    if total < 2:
        return None
    return (sum(c * c for c in counts) - total) / (total * (total - 1))


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa of an items x categories table of rating counts.

    Items may have different numbers of raters: items with fewer than two ratings carry no agreement
    information and are left out; category proportions come from the remaining items. Returns None
    when fewer than two items remain or when every rating falls in one category (kappa undefined).
    """
    rows = [list(row) for row in table]
    if any(len(row) != len(rows[0]) or any(c < 0 for c in row) for row in rows):
        raise ValueError("table must be a rectangle of non-negative counts")
    rated = [row for row in rows if sum(row) >= 2]
    if len(rated) < 2:
        return None
    observed = sum(pairwise_agreement(row) for row in rated) / len(rated)  # type: ignore[misc]
    total = sum(sum(row) for row in rated)
    proportions = [sum(row[j] for row in rated) / total for j in range(len(rated[0]))]
    expected = sum(p * p for p in proportions)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def tally(items: ItemSet, records: Iterable[LabelRecord], min_votes: int = 1) -> list[dict[str, Any]]:
    """Per item: votes per answer, raters, majority label and agreement, in the items' order."""
    if min_votes < 1:
        raise ValueError(f"min_votes must be at least 1, got {min_votes}")
    per_annotator = effective_answers(records)
    rows = []
    for item in items:
        answers = [given[item.id] for given in per_annotator.values() if item.id in given]
        votes = {category: answers.count(category) for category in _CATEGORIES}
        total = sum(votes.values())
        if total < min_votes:
            label = "unlabeled"
        elif votes["recognizable"] == votes["not_recognizable"]:
            label = "tie"
        else:
            label = max(_CATEGORIES, key=lambda category: votes[category])
        rows.append({
            "item": item.id,
            "identity": item.identity,
            **votes,
            "skip": answers.count("skip"),
            "raters": len(answers),
            "label": label,
            "agreement": max(votes.values()) / total if total else None,
            "pairwise_agreement": pairwise_agreement(list(votes.values())),
            "meta": item.meta,
        })
    return rows


def _write_png(source: Path, target: Path) -> None:
    if source.suffix.lower() == ".png":
        shutil.copyfile(source, target)
    else:
        with Image.open(source) as image:
            image.save(target, format="PNG")


def export_annotations(items: ItemSet, records: Iterable[LabelRecord], out: str | Path,
                       min_votes: int = 1, force: bool = False) -> dict[str, Any]:
    """Write ``out/train_with_ori/`` and ``out/agreement.json``; return the agreement summary.

    The folder is built aside and moved into place, so an interrupted export leaves no partial
    layout. An existing export in ``out`` is refused unless ``force`` is set.
    """
    out = Path(out)
    records = list(records)
    layout, agreement_path = out / "train_with_ori", out / AGREEMENT_FILE
    if (layout.exists() or agreement_path.exists()) and not force:
        raise ValueError(f"out {out} already holds an export (train_with_ori/ or {AGREEMENT_FILE}); "
                         "replace it with --force (force=True)")
    rows = tally(items, records, min_votes=min_votes)
    by_id = {item.id: item for item in items}
    identities: dict[str, int] = {}
    for row in rows:
        if row["label"] in _CATEGORIES:
            identities.setdefault(row["identity"], len(identities))

    if not identities:
        counts = {label: sum(row["label"] == label for row in rows) for label in ("tie", "unlabeled")}
        raise ValueError(f"no item has a majority answer ({counts['tie']} ties, {counts['unlabeled']} "
                         f"with fewer than {min_votes} vote(s)): nothing to export")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".train_with_ori.", dir=out))
    try:
        written_originals: set[int] = set()
        for row in rows:
            if row["label"] not in _CATEGORIES:
                row["export_id"], row["file"] = None, None
                continue
            item = by_id[row["item"]]
            number = identities[item.identity]
            positive = staging / str(number)
            positive.mkdir(exist_ok=True)
            if number not in written_originals:
                # The anchor of every triplet: the original lives in the positive folder.
                suffix = f"_{item.label}" if item.label is not None else ""
                _write_png(item.original, positive / f"{number}{suffix}_ori.png")
                written_originals.add(number)
            folder = positive if row["label"] == "recognizable" else staging / f"-{number}"
            folder.mkdir(exist_ok=True)
            # A reconstruction whose name ended in "_ori" would pass for a second original.
            name = f"{item.id}_rec.png" if item.id.endswith("_ori") else f"{item.id}.png"
            _write_png(item.reconstruction, folder / name)
            row["export_id"], row["file"] = number, f"train_with_ori/{folder.name}/{name}"
        if layout.exists():
            shutil.rmtree(layout)
        os.replace(staging, layout)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    annotators = sorted({record.annotator for record in records})
    known = set(by_id)
    counts = {label: sum(row["label"] == label for row in rows)
              for label in (*_CATEGORIES, "tie", "unlabeled")}
    summary = {
        "source": str(items.source),
        "kind": items.kind,
        "annotators": annotators,
        "min_votes": min_votes,
        "items": len(rows),
        "identities": len(identities),
        "counts": counts,
        "fleiss_kappa": fleiss_kappa([[row[c] for c in _CATEGORIES] for row in rows]),
        "kappa_items": sum(row["recognizable"] + row["not_recognizable"] >= 2 for row in rows),
        "mean_agreement": mean(row["agreement"] for row in rows),
        "unknown_items": sorted({r.item for r in records} - known),
        "per_item": rows,
    }
    _write_configurations(out / CONFIGURATIONS_FILE, rows)
    _write_atomically(agreement_path, json.dumps(summary, indent=2) + "\n")
    return summary


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _write_configurations(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per exported reconstruction that says which attack and round made it."""
    exported = [row for row in rows if row["file"] is not None and "attack" in row["meta"]]
    if not exported:
        path.unlink(missing_ok=True)  # a stale table from an earlier export would mislabel this one
        return
    table = io.StringIO(newline="")
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["path", "configuration"])
    for row in exported:
        writer.writerow([row["file"], f"{row['meta']['attack']}/round-{row['meta']['round']}"])
    _write_atomically(path, table.getvalue())
