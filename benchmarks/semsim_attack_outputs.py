"""Run the engine's attacks on embedded photo crops and keep what they reconstruct (for SemSim's verdict).

    python benchmarks/semsim_attack_outputs.py --split heldout --images 24 --out outputs-heldout.safetensors

Every registered attack, at several budgets, on three victims (DLG's uniform-init sigmoid LeNet on every
original, a width-16 ConvNet with BatchNorm on half of them, a width-16 ResNet-18 on a quarter: the
larger victims cost far more per iteration), each image attacked alone from one client
update (a FedSGD gradient; a two-step FedAvg update for the ``fedavg`` attack), labels recovered by
the attack. Originals are the crops of :func:`semsim_audit.semsim.simulated.split_originals`: the
``train`` split from the first 70 % of every photograph, ``heldout`` from the rest, so outputs of the
two splits never share a pixel. Only the public attack API is used (``Observation``, ``run_attacks``),
and nothing assumes that a budget converges: :func:`semsim_audit.semsim.attack_outputs.unambiguous_pairs`
picks pairs by measured PSNR.

Each (victim, attack, budget) batch is cached in ``--cache`` as soon as it finishes, so an interrupted
run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from semsim_audit.attacks import ATTACKS, AttackConfig, Observation, run_attacks
from semsim_audit.core import DataSpec
from semsim_audit.models import model_for
from semsim_audit.semsim.attack_outputs import AttackOutputs
from semsim_audit.semsim.simulated import split_originals

__all__ = ["PLAN", "SPEC", "VICTIMS", "SPLIT_SEEDS", "generate", "victim_observation"]

# The photos dataset's normalisation (semsim_audit.data, "photos"): 10 classes, one per photograph.
SPEC = DataSpec(shape=(3, 32, 32), num_classes=10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# Originals per split come from their own seed of split_originals (the simulated annotator's identities
# use seeds 0 and 1000; these crops are others).
SPLIT_SEEDS = {"train": 70, "heldout": 2070}
VICTIMS: dict[str, Callable[[], nn.Module]] = {
    "lenet": lambda: model_for("lenet", SPEC, uniform_init=True),
    "convnet": lambda: model_for("convnet", SPEC, width=16, batch_norm=True),
    "resnet18": lambda: model_for("resnet18", SPEC, width=16),
}
# Share of the originals each victim is attacked on: the larger victims cost 10-100x LeNet's time per
# iteration on a CPU, and only LeNet's reconstructions converge within a CPU budget.
VICTIM_SHARE = {"lenet": 1.0, "convnet": 0.5, "resnet18": 0.25}
# (victim, attack, budgets). Budgets 1 and 3 give the first iterations (noise); the last budget of each is
# the largest this CPU affords. L-BFGS attacks (dlg, idlg) count torch-style iterations of up to 20
# evaluations each, at DLG's fixed step: the outputs were made before those recipes took strong-Wolfe
# steps, and the setting is pinned (SETTINGS) so that a cached batch is what its key says it is.
PLAN: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("lenet", "idlg", (1, 3, 30, 300)),
    ("lenet", "dlg", (1, 3, 300)),
    ("lenet", "inverting-gradients", (1, 3, 100, 1000, 4000)),
    ("lenet", "gradinversion", (1, 3, 1000)),
    ("lenet", "fedavg", (1, 3, 1000)),
    ("convnet", "inverting-gradients", (1, 3, 100, 1000)),
    ("convnet", "gradinversion", (1, 3, 100, 1000)),
    ("convnet", "fedavg", (1, 3, 30, 100)),
    ("convnet", "idlg", (1, 3, 30)),
    ("convnet", "dlg", (1, 3)),
    ("resnet18", "inverting-gradients", (1, 3, 20, 200)),
    ("resnet18", "gradinversion", (1, 3, 50)),
    ("resnet18", "fedavg", (1, 3)),
    ("resnet18", "idlg", (1,)),
    ("resnet18", "dlg", (1,)),
)
SETTINGS: dict[str, dict[str, str]] = {"idlg": {"line_search": "none"}, "dlg": {"line_search": "none"}}
FEDAVG_STEPS, FEDAVG_LR = 2, 0.01


def victim_observation(victim: str, attack: str, image: torch.Tensor, label: int, seed: int,
                       spec: DataSpec = SPEC) -> Observation:
    """The server's view of one client that trained ``victim`` (seeded weights) on one image."""
    torch.manual_seed(seed)
    model = VICTIMS[victim]()
    model.train()
    inputs, target = spec.normalize(image.unsqueeze(0)), torch.tensor([label])
    if attack != "fedavg":
        loss = nn.functional.cross_entropy(model(inputs), target)
        return Observation.from_gradients(model, torch.autograd.grad(loss, list(model.parameters())), spec)
    global_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=FEDAVG_LR)
    for _ in range(FEDAVG_STEPS):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), target).backward()
        optimizer.step()
    return Observation.from_update(model, global_state, model.state_dict(), spec, lr=FEDAVG_LR,
                                   local_steps=FEDAVG_STEPS, batch_size=1)


def _job_file(cache: Path, split: str, images: int, victim: str, attack: str, budget: int) -> Path:
    """Where one batch is cached: keyed by everything that decides what it attacks."""
    setting = json.dumps([split, images, SPLIT_SEEDS[split], VICTIM_SHARE, FEDAVG_STEPS, FEDAVG_LR])
    key = hashlib.sha256(setting.encode()).hexdigest()[:10]
    return cache / f"{split}-{images}-{key}" / f"{victim}-{attack}-{budget}.safetensors"


def generate(split: str, images: int, cache: Path, plan: tuple[tuple[str, str, tuple[int, ...]], ...] = PLAN,
             device: str = "auto", log: Callable[[str], None] = print) -> AttackOutputs:
    """Attack ``images`` originals of ``split`` with every (victim, attack, budget) of ``plan``."""
    originals, photos = split_originals(images, split, seed=SPLIT_SEEDS[split])  # type: ignore[arg-type]
    parts = []
    for victim, attack, budgets in plan:
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r} in the plan; registered: {', '.join(ATTACKS)}")
        for budget in budgets:
            path = _job_file(cache, split, images, victim, attack, budget)
            if path.is_file():
                parts.append(AttackOutputs.load(path))
                continue
            count = max(1, round(images * VICTIM_SHARE[victim]))
            observations = [victim_observation(victim, attack, originals[number], photos[number],
                                               seed=1000 * number + 7) for number in range(count)]
            # The trials of one run share their starting image: each job starts from its own.
            seed = int(hashlib.sha256(f"{victim}/{attack}/{budget}".encode()).hexdigest()[:6], 16)
            start = time.perf_counter()
            config = AttackConfig(iterations=budget, seed=seed, device=device, **SETTINGS.get(attack, {}))
            results = run_attacks(attack, observations, config)
            seconds = time.perf_counter() - start
            kept = [(number, result) for number, result in enumerate(results) if result.ok]
            part = AttackOutputs(
                split=split, originals=originals, photos=photos,
                outputs=torch.cat([r.images for _, r in kept]) if kept else torch.empty(0, *SPEC.shape),
                owners=torch.tensor([n for n, _ in kept], dtype=torch.long),
                attacks=[attack] * len(kept), models=[victim] * len(kept),
                iterations=torch.full((len(kept),), budget, dtype=torch.long),
                notes={"seconds": seconds, "failed": len(results) - len(kept)})
            part.save(path)
            psnr = part.psnr if kept else torch.empty(0)
            log(f"{split}: {victim} {attack} {budget} iterations: {len(kept)}/{len(results)} ok, "
                f"{seconds:.0f} s, PSNR median {psnr.median().item() if kept else float('nan'):.1f} dB, "
                f">= 35 dB: {int((psnr >= 35).sum())}")
            parts.append(part)
    return AttackOutputs.concatenate(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=sorted(SPLIT_SEEDS), required=True)
    parser.add_argument("--images", type=int, default=24, help="originals attacked (each by every job)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/semsim-attack-outputs"))
    parser.add_argument("--out", type=Path, required=True, help="write all outputs here (.safetensors)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    outputs = generate(args.split, args.images, args.cache, device=args.device)
    outputs.save(args.out)
    print(f"wrote {args.out}: {outputs.outputs.shape[0]} outputs of {args.images} originals")


if __name__ == "__main__":
    main()
