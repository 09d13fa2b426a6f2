"""``InProcessGrid``: a Flower Grid that runs a ClientApp in this process, without Ray.

For tests, benchmarks and debugging: one Context per node (``partition-id`` in its node config,
as the Simulation Engine sets it), nodes handled one after another. Messages are deep-copied on
the way out and back, as a real transport serialises them, so a client never shares objects
with the server. Creating Messages needs Flower's task identity, which a real run sets; call
:func:`set_task_identity` first when there is none.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InProcessGrid", "set_task_identity"]


def set_task_identity(run_id: int | None = 1, node_id: int | None = 1,
                      task_id: int | None = 1) -> tuple[int | None, int | None, int | None]:
    """Give this process a Flower task identity; returns the previous one: pass it back to restore."""
    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, task_id  # type: ignore[assignment]
    return previous


class InProcessGrid(Grid):
    """Runs ``app`` for ``num_nodes`` nodes (ids 100, 101, ...) in the calling thread."""

    def __init__(self, app: ClientApp, num_nodes: int, run_config: Mapping[str, Any] | None = None) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        self.app = app
        self.contexts = {
            100 + i: Context(run_id=1, node_id=100 + i,
                             node_config={"partition-id": i, "num-partitions": num_nodes},
                             state=RecordDict(), run_config=dict(run_config or {}))
            for i in range(num_nodes)
        }
        self.sent: list[Message] = []
        self.replies: list[Message] = []  # what the clients sent, before the server touched it
        self._run: Any = None

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InProcessGrid delivers with send_and_receive only")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InProcessGrid delivers with send_and_receive only")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            reply = self.app(copy.deepcopy(message), self.contexts[message.metadata.dst_node_id])
            self.replies.append(reply)
            replies.append(copy.deepcopy(reply))
        return replies
