"""Several attacks per cell: the adaptive attack on pruning, the sweep's executor, scoring the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from semsim_audit.attacks import ATTACKS, AttackConfig, AttackResult, Observation
from semsim_audit.attacks.objectives import gradient_distance
from semsim_audit.attacks.programs import StackedProgram, VmapProgram, _Setup, functional_model
from semsim_audit.bench import SweepExecutor, with_other_attacks
from semsim_audit.core.images import save_png
from semsim_audit.data import load_dataset
from semsim_audit.models import model_for
from semsim_audit.report import ClientAudit, PrivacyReport, ReconstructionScore, RoundRecord
from semsim_audit.semsim import SemSim
from semsim_audit.strategies.defenses import prune_update
from semsim_audit.strategies.executors import AuditJob


@pytest.mark.parametrize("objective", ["l2", "cosine"])
def test_masked_matching_ignores_what_pruning_dropped(objective: str) -> None:
    observed = {"w": torch.tensor([[0.0, 2.0, 0.0, -1.0]])}
    # A candidate that is right wherever the client sent something, and non-zero where it pruned.
    produced = {"w": torch.tensor([[5.0, 2.0, -3.0, -1.0]])}
    assert float(gradient_distance(produced, observed, [1.0], objective)[0]) > 0.1
    assert float(gradient_distance(produced, observed, [1.0], objective, support_only=True)[0]) == (
        pytest.approx(0.0, abs=1e-6))


@pytest.fixture(scope="module")
def photos():
    return load_dataset("photos")


def _job(photos, index: int, node: int) -> AuditJob:
    model = model_for("lenet", photos.spec, uniform_init=True)
    image, label = photos[index]
    loss = torch.nn.functional.cross_entropy(model(image.unsqueeze(0)), torch.tensor([label]))
    gradients = torch.autograd.grad(loss, list(model.parameters()))
    return AuditJob(server_round=1, node_id=node, num_images=1,
                    observation=Observation.from_gradients(model, gradients, photos.spec))


def test_the_sweep_executor_runs_every_attack_on_the_audited_observations(photos, monkeypatch) -> None:
    import semsim_audit.bench as bench

    seen: dict[str, list] = {}
    real = bench.run_attacks

    def spy(name, observations, config):
        seen[name] = list(observations)
        if name == "dlg":
            raise RuntimeError("out of memory")
        return real(name, observations, config)

    monkeypatch.setattr(bench, "run_attacks", spy)
    jobs = [_job(photos, 0, 11), _job(photos, 70, 12)]
    executor = SweepExecutor({"idlg": ("idlg", AttackConfig(iterations=1, device="cpu")),
                              "dlg": ("dlg", AttackConfig(iterations=1, device="cpu"))})
    scored = []

    def score(job, result) -> ClientAudit:
        scored.append(job.node_id)
        return ClientAudit(node_id=job.node_id, attack="inverting-gradients", status="ok")

    future = executor.submit(jobs, "inverting-gradients", AttackConfig(iterations=1, device="cpu"), score)
    # The audit's own attack went through the normal path; only its results are scored on the clients.
    assert [a.node_id for a in future.result()] == [11, 12] and scored == [11, 12]
    # The other attacks saw exactly the audited observations, and each result waits under (round, node).
    assert all(o is j.observation for o, j in zip(seen["idlg"], jobs, strict=True))
    assert set(executor.results) == {(1, 11), (1, 12)}
    assert executor.results[(1, 11)]["idlg"].images.shape == (1, 3, 32, 32)
    assert isinstance(executor.results[(1, 12)]["dlg"], RuntimeError)  # kept as the reason, not raised


def test_other_attacks_are_scored_against_the_originals_the_client_exported(photos, tmp_path: Path) -> None:
    original = photos.spec.denormalize(photos[3][0].unsqueeze(0)).clamp(0, 1)
    save_png(original[0], tmp_path / "images" / "original.png")
    first = ClientAudit(node_id=7, client_key="0", attack="inverting-gradients", status="ok", num_images=1,
                        local_steps=1, batch_size=1, scores=[ReconstructionScore(
                            original_index=0, recognizable=False, true_label=photos[3][1],
                            original_image="images/original.png")])
    lost = ClientAudit(node_id=8, attack="inverting-gradients", status="failed", reason="attack diverged")
    report = PrivacyReport(rounds=[RoundRecord(round=1, accuracy=0.3, clients=[first, lost])])

    def result(images: torch.Tensor) -> AttackResult:
        return AttackResult(attack="x", images=images, labels=torch.tensor([photos[3][1]]), loss=0.0,
                            iterations=1, seconds=0.5)

    executor = SweepExecutor({})
    executor.results = {
        (1, 7): {"idlg": result(original.clone()), "dlg": result(torch.rand(1, 3, 32, 32)),
                 "gradinversion": RuntimeError("boom")},
        (1, 8): {"idlg": result(original.clone())},
    }
    combined = with_other_attacks(report, executor, tmp_path, SemSim.load(device="cpu"),
                                  label="inverting-gradients+mask")
    audits = {(a.node_id, a.attack): a for a in combined.rounds[0].clients}
    assert audits[(7, "inverting-gradients+mask")].scores == first.scores  # the audit's own, renamed
    exact = audits[(7, "idlg")]
    assert exact.status == "ok" and exact.scored_on == "server" and exact.client_key == "0"
    assert exact.scores[0].recognizable and exact.scores[0].psnr > 40  # only the PNG's 8-bit rounding
    assert exact.label_accuracy == 1.0
    assert audits[(7, "dlg")].scores[0].recognizable is False
    assert audits[(7, "gradinversion")].status == "failed" and "boom" in audits[(7, "gradinversion")].reason
    # Without the first attack's scores the client exported no originals: nothing to score against.
    assert audits[(8, "idlg")].status == "failed" and "attack diverged" in audits[(8, "idlg")].reason
    assert report.rounds[0].clients[0].attack == "inverting-gradients"  # the run's own report is untouched
    saved = json.loads((tmp_path / "all-attacks.json").read_text())
    assert len(saved["rounds"][0]["clients"]) == 6


@pytest.mark.parametrize("attack", ["idlg", "inverting-gradients"])
def test_both_attack_programs_match_only_the_kept_coordinates(photos, attack: str) -> None:
    # The engine's two forms (grouped-channel autograd and torch.func) must agree on the masked loss.
    job = _job(photos, 5, 1)
    gradient = {n: t.double().numpy() for n, t in job.observation.target.items()}
    pruned = {n: torch.from_numpy(v).float() for n, v in prune_update(gradient, 0.9).items()}
    observation = Observation.from_gradients(job.observation.model, pruned, photos.spec)
    candidates = torch.randn(1, 1, 1, *photos.spec.shape, generator=torch.Generator().manual_seed(0))
    losses = {}
    for masked in (False, True):
        config = AttackConfig(match_support=masked).resolve(ATTACKS[attack].settings)
        labels = torch.tensor([[photos[5][1]]])
        setup = _Setup([observation], config, torch.device("cpu"), labels, False, False)
        functional = functional_model(observation.model, config.model_mode)
        stacked = StackedProgram(setup, functional).evaluate(candidates, None)
        vmapped = VmapProgram(setup, functional).evaluate(candidates, None)
        assert torch.allclose(stacked.matching, vmapped.matching, rtol=1e-4)
        # float32 rounding differs between the two forms' kernels: absolute slack scaled to the gradient
        scale = float(vmapped.image_grad.abs().max())
        assert torch.allclose(stacked.image_grad, vmapped.image_grad, rtol=1e-3, atol=1e-4 * scale)
        losses[masked] = float(stacked.matching)
    assert losses[True] != losses[False]
    if attack == "idlg":  # L2: dropping the zeroed 90% of the terms can only lower the distance
        assert losses[True] < losses[False]
