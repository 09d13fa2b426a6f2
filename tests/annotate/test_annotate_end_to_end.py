"""The loop the tool closes: audit run -> annotate -> export -> `semsim train` -> a loadable SemSim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from semsim_audit.annotate.app import create_app
from semsim_audit.annotate.items import load_items
from semsim_audit.annotate.store import LabelStore, claim_out_dir
from semsim_audit.cli.main import app
from semsim_audit.semsim.annotations import load_image, read_annotations

pytestmark = pytest.mark.slow


def test_annotate_export_train_and_load(make_run, tmp_path: Path) -> None:
    from semsim_audit import SemSim

    run = make_run(tmp_path / "run", identities=6, rounds=2)
    items = load_items(run)
    out = tmp_path / "answers"
    labels = claim_out_dir(out, items.source, items.kind, len(items))
    # Two annotators, each through the HTTP API as the page would use it.
    for annotator, dissent in (("alice", None), ("bob", "round-2.client-7.reconstruction-5")):
        client = TestClient(create_app(items, LabelStore(labels, annotator)), base_url="http://127.0.0.1")
        while (pending := client.get("/api/progress").json()["next"]) is not None:
            verdict = "recognizable" if pending.startswith("round-1.") else "not_recognizable"
            if pending == dissent:
                verdict = "recognizable"
            assert client.post("/api/answers", json={"item": pending, "answer": verdict}).status_code == 201

    runner = CliRunner()
    export = tmp_path / "export"
    exported = runner.invoke(app, ["annotate", "export", str(out), "--to", str(export)])
    assert exported.exit_code == 0, exported.output
    summary = json.loads((export / "agreement.json").read_text())
    assert summary["counts"] == {"recognizable": 6, "not_recognizable": 5, "tie": 1, "unlabeled": 0}
    assert 0.6 < summary["fleiss_kappa"] < 1.0

    # The SemSim side reads the export as the released layout: one identity per original.
    annotations = read_annotations(export)
    assert len(annotations.identities) == 6
    assert sum(len(i.unrecognizable) for i in annotations.identities) == 5
    assert len(annotations.configurations) == 11

    checkpoint = tmp_path / "semsim-human.safetensors"
    trained = runner.invoke(app, ["semsim", "train", "--data", str(export), "--out", str(checkpoint),
                                  "--epochs", "1", "--width", "4", "--batch", "8", "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    sem = SemSim.load(checkpoint)
    assert sem.info["annotator"] == "human"
    item = items.get("round-1.client-7.reconstruction-0")
    original, reconstruction = load_image(item.original)[None], load_image(item.reconstruction)[None]
    distance = sem.distance(original, reconstruction)
    assert distance.shape == (1,) and torch.isfinite(distance).all()
