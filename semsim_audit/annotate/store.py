"""The labels file: an append-only JSONL journal of every answer, safe for several annotators at once.

One line per event: ``{"annotator", "item", "answer", "time"}`` where ``answer`` is
``recognizable``, ``not_recognizable``, ``skip`` or ``undo``. Nothing is ever rewritten:

- an annotator's answer to an item replaces that annotator's earlier answer to the same item;
- an ``undo`` line withdraws the annotator's most recent answer still in effect (it names that item,
  so the journal reads on its own); the item then falls back to the answer before it, if any. An
  ``undo`` naming any other item (only possible by editing the file by hand) changes nothing.

Every line is appended under an exclusive ``fcntl`` lock with one ``write`` call and an ``fsync``,
so several servers (one per annotator) can share a file and a killed process leaves at most a
truncated last line, which readers ignore.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

__all__ = [
    "Answer", "ANSWERS", "LabelRecord", "LabelStore", "effective_answers", "read_labels",
    "validate_annotator", "LABELS_FILE", "SESSION_FILE", "claim_out_dir", "session_source",
]

Answer = Literal["recognizable", "not_recognizable", "skip"]
ANSWERS: tuple[str, ...] = get_args(Answer)
_EVENTS = (*ANSWERS, "undo")
LABELS_FILE = "labels.jsonl"
SESSION_FILE = "session.json"
_ANNOTATOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def validate_annotator(name: str) -> str:
    """Return ``name`` if it is a usable annotator name, else raise ValueError naming the rule."""
    if not isinstance(name, str) or not _ANNOTATOR.match(name):
        raise ValueError(
            f"annotator {name!r} is not valid: use 1-64 letters, digits, '.', '_', '-' or '@', "
            "starting with a letter or digit"
        )
    return name


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class LabelRecord:
    """One line of the labels file."""

    annotator: str
    item: str
    answer: str
    time: str

    def to_line(self) -> bytes:
        payload = {"annotator": self.annotator, "item": self.item, "answer": self.answer, "time": self.time}
        return (json.dumps(payload, ensure_ascii=True) + "\n").encode("utf-8")


def _parse(path: Path, number: int, line: str) -> LabelRecord:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        raise ValueError(f"{path}:{number}: not valid JSON") from None
    if not isinstance(entry, dict):
        raise ValueError(f"{path}:{number}: expected a JSON object")
    fields = {}
    for field in ("annotator", "item", "answer", "time"):
        value = entry.get(field)
        if not isinstance(value, str):
            raise ValueError(f"{path}:{number}: field {field!r} missing or not a string")
        fields[field] = value
    if fields["answer"] not in _EVENTS:
        raise ValueError(f"{path}:{number}: answer {fields['answer']!r} is not one of {', '.join(_EVENTS)}")
    return LabelRecord(**fields)


def read_labels(path: str | Path) -> list[LabelRecord]:
    """Every record of a labels file, in order; a missing file has none.

    A truncated last line (a writer killed mid-line) is ignored; any other bad line raises
    ValueError naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    with path.open("rb") as handle:
        # A shared lock so we never read a line another process is half-way through appending.
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        try:
            raw = handle.read()
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return list(_iter_lines(path, raw.decode("utf-8", errors="replace")))


def _replay(records: Iterable[LabelRecord]) -> dict[str, list[LabelRecord]]:
    """Each annotator's answers still in effect, oldest first (undo pops the newest)."""
    stacks: dict[str, list[LabelRecord]] = {}
    for record in records:
        stack = stacks.setdefault(record.annotator, [])
        if record.answer == "undo":
            if stack and stack[-1].item == record.item:
                stack.pop()
            # An undo that does not match is a no-op: only the store writes undo lines, under the
            # lock, so a mismatch means a hand-edited file and ignoring it keeps every answer.
        else:
            stack.append(record)
    return stacks


def effective_answers(records: Iterable[LabelRecord]) -> dict[str, dict[str, str]]:
    """``{annotator: {item: answer}}`` after applying replacements and undos."""
    result: dict[str, dict[str, str]] = {}
    for annotator, stack in _replay(records).items():
        answers: dict[str, str] = {}
        for record in stack:
            answers[record.item] = record.answer
        if answers:
            result[annotator] = answers
    return result


class LabelStore:
    """Appends answers of one annotator to a shared labels file and answers questions about them."""

    def __init__(self, path: str | Path, annotator: str) -> None:
        self.path = Path(path)
        self.annotator = validate_annotator(annotator)

    def _append(self, record: LabelRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.write(fd, record.to_line())
                os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def records(self) -> list[LabelRecord]:
        """Every record in the file, all annotators."""
        return read_labels(self.path)

    def answers(self) -> dict[str, str]:
        """This annotator's answers in effect: ``{item: answer}``."""
        return effective_answers(self.records()).get(self.annotator, {})

    def answer(self, item: str, answer: str) -> LabelRecord:
        """Record ``answer`` for ``item``; raises ValueError for an unknown answer."""
        if answer not in ANSWERS:
            raise ValueError(f"answer {answer!r} is not one of {', '.join(ANSWERS)}")
        record = LabelRecord(self.annotator, item, answer, _utc_now())
        self._append(record)
        return record

    def undo(self) -> LabelRecord | None:
        """Withdraw this annotator's most recent answer in effect; None when there is none."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # Decide and append under one lock, so two tabs undoing at once withdraw two answers,
            # not the same one twice.
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with open(fd, "rb", closefd=False) as handle:
                    handle.seek(0)
                    text = handle.read().decode("utf-8", errors="replace")
                stack = _replay(_iter_lines(self.path, text)).get(self.annotator, [])
                if not stack:
                    return None
                record = LabelRecord(self.annotator, stack[-1].item, "undo", _utc_now())
                os.write(fd, record.to_line())
                os.fsync(fd)
                return record
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _iter_lines(path: Path, text: str) -> Iterator[LabelRecord]:
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield _parse(path, number, line)
        except ValueError:
            if number == len(lines):
                return  # the unfinished last line of a killed writer
            raise


def claim_out_dir(out: str | Path, source: str | Path, kind: str, total: int) -> Path:
    """Tie an annotation folder to its SOURCE (``session.json``); refuse one begun on another SOURCE.

    Labels name items by id only, so answers about one source must never land beside another's.
    Returns the labels file path.
    """
    out, source = Path(out), Path(source).resolve()
    session = out / SESSION_FILE
    if session.exists():
        recorded = session_source(out)
        if recorded != source:
            raise ValueError(f"--out {out} holds answers about {recorded}, not {source}; "
                             "use another --out for this source")
    else:
        out.mkdir(parents=True, exist_ok=True)
        partial = session.with_name(session.name + ".partial")
        partial.write_text(json.dumps({"source": str(source), "kind": kind, "items": total,
                                       "created": _utc_now()}, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, session)
    return out / LABELS_FILE


def session_source(out: str | Path) -> Path:
    """The SOURCE an annotation folder was begun on, from its ``session.json``."""
    session = Path(out) / SESSION_FILE
    try:
        recorded = json.loads(session.read_text(encoding="utf-8"))["source"]
    except FileNotFoundError:
        raise ValueError(f"{out} is not an annotation folder (no {SESSION_FILE})") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{session} is damaged (expected JSON with a 'source' field)") from None
    return Path(recorded)
