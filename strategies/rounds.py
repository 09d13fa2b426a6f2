"""Round bookkeeping of an audit: what was sent to whom, which audits still run, which rounds are done.

A round is finished when it has been evaluated (its central evaluation ran, the next round
started, or the run ended), its attacks have come back and its reconstructions have been scored on
the clients (``waiting`` says whether any is still out). Finished rounds leave in round order,
each exactly once, through the ``on_finished`` callback; attacks finish on executor threads, so
every method takes the lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord

from semsim_audit.report import ClientAudit, RoundRecord

__all__ = ["Sent", "RoundState", "RoundBook"]


@dataclass
class Sent:
    """What the server sent an audited client: the global arrays and the train config."""

    arrays: ArrayRecord
    config: dict[str, Any]


@dataclass
class RoundState:
    server_round: int
    sent: dict[int, Sent] = field(default_factory=dict)
    audits: list[ClientAudit] = field(default_factory=list)  # decided before any attack ran (skipped)
    future: Future[list[ClientAudit]] | None = None
    errors: list[str] = field(default_factory=list)  # the audit machinery's failures this round
    accuracy: float | None = None
    loss: float | None = None
    central: bool = False  # accuracy/loss came from evaluate_fn: it wins over the clients'
    evaluated: bool = False

    @property
    def attacked(self) -> bool:
        return self.future is None or self.future.done()

    def record(self, attack: str, timeout_reason: str | None = None) -> RoundRecord:
        """The round as a report record; audits still running or lost fail with the reason."""
        clients = list(self.audits)
        if self.future is not None:
            if self.future.done() and self.future.exception() is None:
                clients.extend(self.future.result())
            else:
                reason = timeout_reason or f"executor error: {self.future.exception()!r}"
                skipped = {audit.node_id for audit in self.audits}
                clients.extend(ClientAudit(node_id=node, attack=attack, status="failed", reason=reason)
                               for node in self.sent if node not in skipped)
        clients.sort(key=lambda c: c.node_id)
        return RoundRecord(round=self.server_round, accuracy=self.accuracy, loss=self.loss,
                           clients=clients, errors=list(self.errors)).summarise()


class RoundBook:
    """The rounds in flight of one audited run; finished ones go to ``on_finished`` in round order."""

    def __init__(self, attack: str, on_finished: Callable[[RoundRecord], None],
                 waiting: Callable[[int], bool] = lambda server_round: False) -> None:
        self.attack = attack
        self._on_finished = on_finished
        self._waiting = waiting
        self._rounds: dict[int, RoundState] = {}
        self._written = 0  # highest round handed on
        self._lock = threading.RLock()

    def _ready(self, state: RoundState) -> bool:
        return state.evaluated and state.attacked and not self._waiting(state.server_round)

    def __getitem__(self, server_round: int) -> RoundState:
        with self._lock:
            if server_round not in self._rounds:
                self._rounds[server_round] = RoundState(server_round)
            return self._rounds[server_round]

    def evaluated_before(self, server_round: int) -> None:
        """Every round before ``server_round`` has been trained and evaluated: the next one started."""
        with self._lock:
            for state in self._rounds.values():
                if state.server_round < server_round:
                    state.evaluated = True

    def add_error(self, server_round: int, message: str) -> None:
        """Keep a failure of the audit machinery (not of one client's audit) on the round."""
        with self._lock:
            if server_round > self._written:  # a round already handed on keeps its record as written
                self[server_round].errors.append(message)

    def set_metrics(self, server_round: int, accuracy: float | None, loss: float | None, *,
                    central: bool) -> None:
        """Keep a round's accuracy and loss; a central evaluation is not overwritten by the clients'."""
        with self._lock:
            state = self[server_round]
            if central or not state.central:
                state.accuracy, state.loss, state.central = accuracy, loss, central or state.central

    def flush(self, timeout_reason: str | None = None) -> None:
        """Hand on the finished rounds in order; with ``timeout_reason``, every round, finished or not."""
        with self._lock:
            for server_round in sorted(r for r in self._rounds if r > self._written):
                state = self._rounds[server_round]
                ready = self._ready(state)
                if not ready and timeout_reason is None:
                    break
                self._on_finished(state.record(self.attack, None if state.attacked else timeout_reason))
                self._written = server_round
                del self._rounds[server_round]

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every submitted attack; whether they all came back."""
        deadline = time.monotonic() + timeout
        with self._lock:
            futures = [state.future for state in self._rounds.values() if state.future is not None]
        for future in futures:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                return False
            except Exception:  # reported per client by RoundState.record
                pass
        return True

    def close(self, timeout: float) -> None:
        """End of the run: wait up to ``timeout`` s for the attacks, then hand on every round."""
        with self._lock:
            for state in self._rounds.values():
                state.evaluated = True
        self.wait(timeout)
        self.flush(timeout_reason=f"audit did not finish within the {timeout:g} s timeout")
