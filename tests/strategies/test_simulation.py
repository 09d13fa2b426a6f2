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
import torch
from flwr.app import Context, Message

from semsim_audit.config import AuditConfig
from semsim_audit.core import DataSpec
from semsim_audit.models import model_for
from semsim_audit.report import read_jsonl
from semsim_audit.strategies import run_audited_simulation


class ProbeMod:
    """Writes the run config the client sees to a file named in it (Ray actors share the disk)."""

    def __call__(self, msg: Message, context: Context, call_next: Any) -> Message:
        probe = Path(str(context.run_config["probe-dir"])) / f"node-{context.node_id}.txt"
        probe.write_text(f"{context.run_config.get('audit-export-originals')}|"
                         f"{context.run_config.get('defense.test')}")
        return call_next(msg, context)


class UserModel:
    """A user's own model_fn (picklable: Ray ships it to the clients)."""

    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec

    def __call__(self) -> torch.nn.Module:
        return model_for("lenet", self.spec)


class UserDataset(torch.utils.data.Dataset):
    """Any map-style dataset of (image, label); its spec comes as data_spec=."""

    def __init__(self, photos: Any, count: int) -> None:
        self.items = [photos[i] for i in range(count)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


@pytest.mark.slow
def test_audited_simulation_with_flower_simulation_engine(tmp_path: Path, photos: Any) -> None:
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
    report = run_audited_simulation(dataset=UserDataset(photos, 16), data_spec=photos.spec,
                                    test_dataset=UserDataset(photos, 8), model=UserModel(photos.spec),
                                    num_clients=2, rounds=2, samples_per_client=4, lr=0.1,
                                    audit=audit, sinks=[Collect()], client_mods=[ProbeMod()],
                                    run_config={"probe-dir": str(tmp_path), "defense.test": 7})
    assert [r.round for r in report.rounds] == [1, 2]
    assert lines == ["start", "round 1", "round 2", "close"]
    for record in report.rounds:
        assert record.accuracy is not None and record.loss is not None  # central evaluation
        assert [c.status for c in record.clients] == ["ok"], record.clients
        assert record.clients[0].scores and record.clients[0].label_accuracy is not None
        assert record.clients[0].scored_on == "client"
    assert report.config["executor"] == "ray" and report.config["evaluated_on"] == "test split"
    journal = read_jsonl(tmp_path / "run" / "report.jsonl")
    assert [r.round for r in journal.rounds] == [1, 2]
    assert (tmp_path / "run" / "report.json").is_file()
    score = report.rounds[0].clients[0].scores[0]
    # run_audited_simulation's clients opt in to exporting the originals for the report's pictures.
    assert (tmp_path / "run" / score.reconstruction_image).is_file()
    assert (tmp_path / "run" / score.original_image).is_file()
    # run_config reached the clients' context (the export switch and the user's entries)
    probes = sorted(p.read_text() for p in tmp_path.glob("node-*.txt"))
    assert probes == ["True|7", "True|7"]


SPEC32 = DataSpec(shape=(3, 32, 32), num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3)


class Tiny(torch.utils.data.Dataset):
    """Four blank 8x8 images; ``spec`` only when given."""

    def __init__(self, spec: DataSpec | None = None) -> None:
        if spec is not None:
            self.spec = spec

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> Any:
        return torch.zeros(3, 8, 8), 0


TINY_SPEC = DataSpec(shape=(3, 8, 8), num_classes=2, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dataset": Tiny()}, "has no `spec`"),
    ({"dataset": Tiny(), "data_spec": SPEC32}, r"image is \(3, 8, 8\)"),
    ({"dataset": 42}, "map-style dataset"),
    ({"dataset": Tiny(TINY_SPEC), "model": lambda: "not a model"}, "must return a torch.nn.Module"),
    ({"dataset": Tiny(TINY_SPEC), "model": lambda: torch.nn.Linear(1, 1), "model_options": {"width": 2}},
     "model_options go with a model name"),
    ({"data_spec": SPEC32}, "go with a dataset object"),
])
def test_bad_dataset_or_model_fails_before_ray_starts(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_audited_simulation(audit=AuditConfig(), **kwargs)


CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from audit_apps import Setup
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
