"""End to end: Flower's Simulation Engine (Ray) with the audit, and a killed run's journal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message

from semsim_audit.config import AuditConfig
from semsim_audit.report import read_jsonl
from semsim_audit.strategies import run_audited_simulation


class ProbeMod:
    """Writes the run config the client sees to a file named in it (Ray actors share the disk)."""

    def __call__(self, msg: Message, context: Context, call_next: Any) -> Message:
        probe = Path(str(context.run_config["probe-dir"])) / f"node-{context.node_id}.txt"
        probe.write_text(f"{context.run_config.get('audit-export-originals')}|"
                         f"{context.run_config.get('defense.test')}")
        return call_next(msg, context)


@pytest.mark.slow
def test_audited_simulation_with_flower_simulation_engine(tmp_path: Path) -> None:
    lines: list[str] = []

    class Collect:
        def start(self, report: Any) -> None:
            lines.append("start")

        def write_round(self, record: Any) -> None:
            lines.append(f"round {record.round}")

        def close(self, report: Any) -> None:
            lines.append("close")

    audit = AuditConfig(attack="idlg", attack_config={"iterations": 5}, clients=1, executor="ray",
                        out_dir=tmp_path / "run", save_images=True)
    report = run_audited_simulation(model="lenet", num_clients=2, rounds=2, samples_per_client=4, lr=0.1,
                                    audit=audit, sinks=[Collect()], client_mods=[ProbeMod()],
                                    run_config={"probe-dir": str(tmp_path), "defense.test": 7})
    assert [r.round for r in report.rounds] == [1, 2]
    assert lines == ["start", "round 1", "round 2", "close"]
    for record in report.rounds:
        assert record.accuracy is not None and record.loss is not None  # central evaluation
        assert [c.status for c in record.clients] == ["ok"], record.clients
        assert record.clients[0].scores and record.clients[0].label_accuracy is not None
    assert report.config["executor"] == "ray"
    journal = read_jsonl(tmp_path / "run" / "report.jsonl")
    assert [r.round for r in journal.rounds] == [1, 2]
    assert (tmp_path / "run" / "report.json").is_file()
    image = report.rounds[0].clients[0].scores[0].reconstruction_image
    assert (tmp_path / "run" / image).is_file()
    # run_config reached the clients' context (the export switch and the user's entries)
    probes = sorted(p.read_text() for p in tmp_path.glob("node-*.txt"))
    assert probes == ["True|7", "True|7"]


CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from conftest import Setup
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from semsim_audit.config import AuditConfig
from semsim_audit.data import load_dataset
from semsim_audit.strategies import AuditedStrategy, make_client_app
from semsim_audit.strategies.local import InProcessGrid, set_task_identity
from flwr.serverapp.strategy import FedAvg

set_task_identity()
setup = Setup(load_dataset("photos"))
audit = AuditConfig(attack="idlg", attack_config={"iterations": 2}, clients=1, out_dir=sys.argv[2])
strategy = AuditedStrategy(FedAvg(fraction_evaluate=0.0, min_evaluate_nodes=0), model_fn=setup.model_fn,
                           data_spec=setup.spec, audit=audit)

def evaluate(server_round, arrays):
    if server_round == 3:
        time.sleep(600)  # killed here: rounds 1 and 2 are finished, round 3 is not
    return MetricRecord({"accuracy": 0.5})

app = make_client_app(setup.model_fn, setup.load_partition)
grid = InProcessGrid(app, 2, {"audit-export-originals": True})
strategy.start(grid=grid, initial_arrays=ArrayRecord(setup.model_fn().state_dict()), num_rounds=5,
               train_config=ConfigRecord({"lr": 0.1}), evaluate_fn=evaluate)
"""


@pytest.mark.slow
def test_run_killed_after_round_two_leaves_two_readable_rounds(tmp_path: Path) -> None:
    journal = tmp_path / "report.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(Path(__file__).parent), str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child.poll() is None:
            if journal.exists() and journal.read_text().count('"type": "round"') >= 2:
                break
            time.sleep(0.2)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    report = read_jsonl(journal)
    assert [r.round for r in report.rounds] == [1, 2]
    assert all(r.clients and r.clients[0].status == "ok" for r in report.rounds)
    assert not (tmp_path / "report.json").exists()  # the run never reached its end
