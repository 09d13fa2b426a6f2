"""ClientApp: plain local training in an ``AuditedClientApp``, so the audit is scored here, on the client."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from auditquickstart.task import client_shard, make_model, train
from semsim_audit.strategies import AuditedClientApp

# Flower's ClientApp with audit_mod first and the scoring handler registered: the server's
# reconstructions come back here and are scored against this client's images, which never leave it.
app = AuditedClientApp()


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    """Train the received global model on this client's photos and send the weights back."""
    model = make_model(str(context.run_config["model"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    config = msg.content["config"]
    shard = client_shard(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]))
    loss = train(model, shard, lr=float(config["lr"]), local_steps=int(config["local-steps"]),
                 batch_size=int(config["batch-size"]),
                 seed=int(config["server-round"]) * 1000 + int(context.node_config["partition-id"]))
    examples = min(len(shard), int(config["local-steps"]) * int(config["batch-size"]))
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train_loss": loss, "num-examples": examples})})
    return Message(content=content, reply_to=msg)
