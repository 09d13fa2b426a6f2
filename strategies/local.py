"""``InProcessGrid``: a Flower Grid that runs a ClientApp in this process, without Ray.

For tests, benchmarks and debugging: one Context per node (``partition-id`` in its node config,
as the Simulation Engine sets it), nodes handled one after another. Messages are deep-copied on
the way out and back, as a real transport serialises them, so a client never shares objects
with the server. As in Flower, a ClientApp that raises answers with an error reply, and a
message not answered within ``send_and_receive``'s timeout gets no reply (the client keeps
running in the background; its late reply is dropped). Creating Messages needs Flower's task
identity, which a real run sets; call :func:`set_task_identity` first when there is none.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
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
    """Runs ``app`` for ``num_nodes`` nodes in the calling thread.

    Node ``i`` holds partition ``i``; its node id is ``node_ids[i]`` (default 100 + i), so a test
    can give the same partitions other ids, as two runs of Flower's engine do.
    """

    def __init__(self, app: ClientApp, num_nodes: int, run_config: Mapping[str, Any] | None = None,
                 node_ids: Sequence[int] | None = None) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        ids = list(node_ids) if node_ids is not None else [100 + i for i in range(num_nodes)]
        if len(ids) != num_nodes or len(set(ids)) != num_nodes:
            raise ValueError(f"node_ids must be {num_nodes} distinct ids, got {ids}")
        self.app = app
        self.contexts = {
            node: Context(run_id=1, node_id=node, state=RecordDict(), run_config=dict(run_config or {}),
                          node_config={"partition-id": i, "num-partitions": num_nodes})
            for i, node in enumerate(ids)
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

    def _handle(self, message: Message) -> Message:
        try:
            return self.app(copy.deepcopy(message), self.contexts[message.metadata.dst_node_id])
        except Exception as error:  # Flower's engine turns a raising ClientApp into an error reply
            reason = f"{type(error).__name__}: {error}"
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        replies = []
        for message in messages:
            self.sent.append(message)
            answer: list[Message] = []
            worker = threading.Thread(target=lambda m=message, out=answer: out.append(self._handle(m)),
                                      daemon=True)
            worker.start()
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if not answer:  # past the timeout: no reply, as from a real grid
                continue
            self.replies.append(answer[0])
            replies.append(copy.deepcopy(answer[0]))
        return replies
