"""Getting reconstructions scored on the clients that own the originals.

After an audited client's update is attacked, its reconstructions wait here (:class:`Pending`)
until that client has scored them. A client whose ClientApp registers the scoring handler
(``AuditedClientApp``; its audit record says so) is asked at once, in a ``query.semsim_audit``
message. Any other client is asked on the next train or evaluate message it is sent, and
``audit_mod`` answers in the reply: Flower routes a message by its registered type before any mod
runs, so a query such a ClientApp never registered would not reach the mod. Whatever cannot be
scored fails with the reason and the fix; nothing here stops the run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from semsim_audit.core import DataSpec
from semsim_audit.report import ClientAudit
from semsim_audit.scoring import save_pair_images
from semsim_audit.strategies.protocol import (
    ANSWER_PREFIX,
    REQUEST_PREFIX,
    SCORING_MESSAGE_TYPE,
    ScoreRequest,
    decode_answer,
    encode_request,
)

__all__ = ["Pending", "ScoringDesk", "NO_HANDLER_FIX"]

_log = logging.getLogger("semsim_audit")

NO_HANDLER_FIX = ("build the ClientApp with semsim_audit.strategies.AuditedClientApp (it registers the "
                  "scoring handler), or evaluate on every round")


@dataclass
class Pending:
    """One attacked client's reconstructions, waiting to be scored on that client."""

    server_round: int
    node_id: int
    reconstructions: torch.Tensor  # (N, C, H, W) in [0, 1]
    recovered_labels: torch.Tensor | None
    audit: ClientAudit  # completed in place when the answer comes
    scoring_handler: bool
    riding: str | None = None  # the message carrying the request ("query", "evaluate 3", ...)


class ScoringDesk:
    """The reconstructions still to be scored, and the two ways of getting them to their clients.

    ``judge`` is the server's SemSim as (sha256, checkpoint bytes or None for the shipped one);
    with ``image_dir`` set, each scored pair's reconstruction (and original, when the client
    exported it) is saved there in the run-folder layout.
    """

    def __init__(self, *, spec: DataSpec, judge: tuple[str, bytes | None], timeout: float,
                 image_dir: Path | None = None) -> None:
        self.spec = spec
        self.judge = judge
        self.timeout = timeout
        self.image_dir = image_dir
        self._pending: dict[tuple[int, int], Pending] = {}
        self._lock = threading.Lock()
        self._told: set[int] = set()

    def add(self, pending: Pending) -> None:
        """Queue an attacked client's reconstructions (called on executor threads)."""
        with self._lock:
            self._pending[(pending.server_round, pending.node_id)] = pending
        if not pending.scoring_handler and pending.node_id not in self._told:
            self._told.add(pending.node_id)
            _log.warning("node %s: its ClientApp has no scoring handler, so its reconstructions are scored "
                         "when it next trains or evaluates; to score them at once, %s", pending.node_id,
                         NO_HANDLER_FIX)

    def waiting(self, server_round: int) -> bool:
        """Whether any reconstruction of ``server_round`` is still to be scored."""
        with self._lock:
            return any(key[0] == server_round for key in self._pending)

    def _take(self, wanted: Callable[[Pending], bool], riding: str) -> list[Pending]:
        with self._lock:
            chosen = [p for p in self._pending.values() if wanted(p)]
            for pending in chosen:
                pending.riding = riding
        return chosen

    def _request(self, pending: Pending) -> Any:
        sha256, checkpoint = self.judge
        return encode_request(ScoreRequest(
            audit_id=pending.server_round, reconstructions=pending.reconstructions,
            recovered_labels=pending.recovered_labels, spec=self.spec, judge_sha256=sha256, judge=checkpoint))

    def _requests(self, pendings: Iterable[Pending]) -> dict[str, Any] | None:
        try:
            return {f"{REQUEST_PREFIX}{p.server_round}": self._request(p) for p in pendings}
        except Exception as error:
            for pending in pendings:
                self._resolve(pending, reason=f"not scored: the scoring request could not be built: "
                                              f"{error!r}")
            return None

    # ------------------------------------------------------------------ a query, where the ClientApp answers
    def query(self, grid: Grid) -> None:
        """Ask every client with the scoring handler to score what waits for it; apply the answers."""
        todo = self._take(lambda p: p.scoring_handler and p.riding is None, "query")
        by_node: dict[int, list[Pending]] = {}
        for pending in todo:
            by_node.setdefault(pending.node_id, []).append(pending)
        messages = []
        for node, pendings in by_node.items():
            requests = self._requests(pendings)
            if requests is not None:
                messages.append(Message(content=RecordDict(requests), dst_node_id=node,
                                        message_type=SCORING_MESSAGE_TYPE))
        if not messages:
            return
        try:
            replies = list(grid.send_and_receive(messages, timeout=self.timeout))
        except Exception as error:
            for message in messages:
                for pending in by_node[message.metadata.dst_node_id]:
                    self._resolve(pending, reason=f"not scored: the scoring request could not be sent: "
                                                  f"{error!r}")
            return
        answered = {reply.metadata.src_node_id: reply for reply in replies}
        for message in messages:
            node = message.metadata.dst_node_id
            reply = answered.get(node)
            for pending in by_node[node]:
                if reply is None:
                    self._resolve(pending, reason=f"not scored: no answer to the scoring request within "
                                                  f"{self.timeout:g} s (audit-scoring-timeout)")
                elif reply.has_error():
                    self._resolve(pending, reason=f"not scored: the client answered the scoring request with "
                                                  f"an error: {reply.error.reason}")
                else:
                    self._answered(pending, reply.content.get(f"{ANSWER_PREFIX}{pending.server_round}"),
                                   "the scoring message")

    # ------------------------------------------------------------------ riding on train and evaluate messages
    def attach(self, messages: list[Message], phase: str) -> list[Message]:
        """Add the waiting requests of clients without the scoring handler to their ``phase`` messages."""
        nodes = {m.metadata.dst_node_id for m in messages if m.has_content()}
        riders = self._take(lambda p: not p.scoring_handler and p.riding is None and p.node_id in nodes,
                            phase)
        by_node: dict[int, list[Pending]] = {}
        for pending in riders:
            by_node.setdefault(pending.node_id, []).append(pending)
        for message in messages:
            pendings = by_node.pop(message.metadata.dst_node_id, None)
            if not pendings or not message.has_content():
                continue
            requests = self._requests(pendings)
            if requests is not None:
                # Strategies share one RecordDict between their messages: the requests go into a copy.
                message.content = RecordDict({**dict(message.content.items()), **requests})
        return messages

    def collect(self, records: Mapping[int, Mapping[str, Any]], replied: set[int], phase: str) -> None:
        """Apply the answers found in the ``phase`` replies (their ``audit.*`` records, by node).

        A node that sent no usable reply gets its requests again on its next message.
        """
        with self._lock:
            riders = [p for p in self._pending.values() if p.riding == phase]
        for pending in riders:
            if pending.node_id not in replied:
                pending.riding = None
                continue
            raw = records.get(pending.node_id, {}).get(f"{ANSWER_PREFIX}{pending.server_round}")
            self._answered(pending, raw, f"the {phase.split()[0]} message")

    # ------------------------------------------------------------------ the end
    def abandon(self) -> None:
        """End of the run: everything still waiting fails with the reason and the fix."""
        with self._lock:
            left = list(self._pending.values())
        for pending in left:
            if pending.scoring_handler:
                reason = "not scored: the run ended before the client answered"
            else:
                reason = ("not scored: this client's ClientApp has no scoring handler and the node got no "
                          f"train or evaluate message after its update was attacked; fix: {NO_HANDLER_FIX}")
            self._resolve(pending, reason=reason)

    # ------------------------------------------------------------------ answers
    def _answered(self, pending: Pending, raw: Any, carrier: str) -> None:
        if raw is None:
            self._resolve(pending, reason=f"not scored: the client's reply to {carrier} that carried the "
                                          "scoring request has no scores (is audit_mod the first of the "
                                          "ClientApp's mods?)")
            return
        try:
            answer = decode_answer(raw, int(pending.reconstructions.shape[0]))
            if answer.audit_id != pending.server_round:
                raise ValueError(f"it answers round {answer.audit_id}, not {pending.server_round}")
        except ValueError as error:
            self._resolve(pending, reason=f"not scored: malformed scoring answer from the client: {error}")
            return
        if answer.status != "ok":
            self._resolve(pending, reason=f"not scored: {answer.reason}")
            return
        audit = pending.audit
        audit.scores = answer.scores or []
        audit.label_accuracy = answer.label_accuracy
        audit.scored_on = "client"
        if self.image_dir is not None:
            try:
                save_pair_images(self.image_dir, pending.server_round, pending.node_id, audit.scores,
                                 pending.reconstructions, answer.originals)
            except Exception as error:  # pictures are a view: the scores stand without them
                audit.note = f"{audit.note}; " if audit.note else ""
                audit.note += f"images not saved: {error!r}"
        self._resolve(pending)

    def _resolve(self, pending: Pending, reason: str | None = None) -> None:
        # The audit is complete before the round stops waiting for it (flush runs on other threads).
        if reason is not None:
            pending.audit.status, pending.audit.reason = "failed", reason
            pending.audit.scores = []
        with self._lock:
            self._pending.pop((pending.server_round, pending.node_id), None)
