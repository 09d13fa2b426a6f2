"""Audit overhead: wall time of an audited federated run vs the same run unaudited, per executor.

The federation runs in process (``semsim_audit.strategies.local.InProcessGrid``: clients one after another,
no Ray start-up in the timings); each setting runs the same rounds from the same initial model.
"unaudited" is plain FedAvg; the audited runs attack ``--audited-clients`` clients per round
with ``--attack`` for ``--iterations`` iterations. Overhead = audited / unaudited - 1 of the
whole run, which includes waiting for the last audits at the end.

    python benchmarks/audit_overhead.py --rounds 2 --executors inline,thread,ray
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp.strategy import FedAvg

from semsim_audit.config import AuditConfig
from semsim_audit.data import load_dataset, partition
from semsim_audit.models import model_for
from semsim_audit.strategies import AuditedStrategy, make_client_app
from semsim_audit.strategies.executors import RayExecutor
from semsim_audit.strategies.local import InProcessGrid, set_task_identity


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="photos")
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--width", type=int, default=16, help="ConvNet width")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--audited-clients", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples-per-client", type=int, default=32)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--attack", default="inverting-gradients")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--executors", default="inline,thread,ray")
    parser.add_argument("--device", default="auto")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    set_task_identity()
    data = load_dataset(args.dataset)
    spec = data.spec  # type: ignore[attr-defined]
    shards = [s[:args.samples_per_client] for s in partition(data, args.clients, "iid", seed=0)]
    parts = [data.subset(s) for s in shards]  # type: ignore[attr-defined]

    def model_fn() -> torch.nn.Module:
        options = {"width": args.width} if args.model == "convnet" else {}
        return model_for(args.model, spec, **options)

    def load_partition(context: Context) -> Any:
        return parts[int(context.node_config["partition-id"])]  # type: ignore[arg-type]

    from semsim_audit.semsim import SemSim

    semsim = SemSim.load(device=args.device)
    torch.manual_seed(0)
    initial = ArrayRecord(model_fn().state_dict())
    train_config = {"lr": 0.01, "local-steps": args.local_steps, "batch-size": args.batch_size}

    def run(executor: str | None) -> tuple[float, str]:
        inner = FedAvg(fraction_evaluate=0.0, min_evaluate_nodes=0, min_available_nodes=args.clients)
        strategy: Any = inner
        if executor is not None:
            audit = AuditConfig(attack=args.attack, attack_config={"iterations": args.iterations},
                                clients=args.audited_clients, executor=executor, device=args.device)
            # Ray is started before the clock runs: a simulation has it running already.
            ray_executor = RayExecutor(num_cpus=1) if executor == "ray" else None
            if ray_executor is not None:
                ray_executor.connect()
            strategy = AuditedStrategy(inner, model_fn=model_fn, data_spec=spec, audit=audit,
                                       semsim=semsim, executor=ray_executor)
        grid = InProcessGrid(make_client_app(model_fn, load_partition), args.clients,
                             {"audit-export-originals": True})
        random.seed(0)
        started = time.perf_counter()
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=args.rounds,
                       train_config=ConfigRecord(train_config))
        seconds = time.perf_counter() - started
        if executor is None:
            return seconds, "-"
        audits = [c for r in strategy.report.rounds for c in r.clients]
        return seconds, f"{sum(c.status == 'ok' for c in audits)}/{len(audits)}"

    print(f"{args.model} (width {args.width}) on {args.dataset}, {args.clients} clients, "
          f"{args.local_steps} local steps x batch {args.batch_size}, {args.rounds} rounds; "
          f"{args.attack} x {args.iterations} iterations on {args.audited_clients} client(s)/round")
    print(f"| {'setting':<10} | {'wall s':>8} | {'s / round':>9} | {'overhead':>8} | {'audits ok':>9} |")
    print(f"|{'-' * 12}|{'-' * 10}|{'-' * 11}|{'-' * 10}|{'-' * 11}|", flush=True)
    base = None
    for name in ["unaudited", *[e.strip() for e in args.executors.split(",") if e.strip()]]:
        seconds, ok = run(None if name == "unaudited" else name)
        base = base or seconds
        overhead = "-" if name == "unaudited" else f"{100 * (seconds / base - 1):+.0f}%"
        print(f"| {name:<10} | {seconds:8.1f} | {seconds / args.rounds:9.2f} | {overhead:>8} | {ok:>9} |",
              flush=True)


if __name__ == "__main__":
    main()
