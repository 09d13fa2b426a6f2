"""ServerApp: FedAvg wrapped in a privacy audit (``AuditedFedAvg``); the report lands in a run folder."""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from auditquickstart.task import dataset, evaluate, make_model
from semsim_audit import AuditConfig
from semsim_audit.report import LogSink
from semsim_audit.strategies import AuditedFedAvg
from semsim_audit.views import new_run_dir

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedAvg for ``num-server-rounds`` rounds, attacking ``audit-clients`` clients a round."""
    config = context.run_config
    model_name = str(config["model"])
    run_dir = new_run_dir(Path(str(config["out-dir"])).expanduser().resolve())
    # The audit-* keys (and lr, local-steps, batch-size) of the run config; the run folder is this run's.
    audit = AuditConfig.from_run_config(config, out_dir=run_dir)
    # Logs go to `flwr log` / `flwr run --stream`, so one plain line per round, not a live table.
    strategy = AuditedFedAvg(model_fn=lambda: make_model(model_name), data_spec=dataset().spec, audit=audit,
                             sinks=[LogSink()], fraction_train=1.0, fraction_evaluate=0.0)

    def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = make_model(model_name)
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, dataset(train=False))
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    strategy.start(grid=grid, initial_arrays=ArrayRecord(make_model(model_name).state_dict()),
                   num_rounds=int(config["num-server-rounds"]),
                   train_config=ConfigRecord({"lr": float(config["lr"]),
                                              "local-steps": int(config["local-steps"]),
                                              "batch-size": int(config["batch-size"])}),
                   evaluate_fn=central_evaluation)
    print(f"[audit] report: {run_dir / 'report.html'}")
