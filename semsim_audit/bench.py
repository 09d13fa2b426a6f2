"""The privacy-utility sweep: defense and attack specs, the cell grid, resumable state, aggregation, views.

A sweep runs one cell per defense x strength x seed with everything else fixed, and compares the
cells on final accuracy and leakage. A federated cell is one audited Flower training: the audit
attacks with the cell's first attack, and :class:`SweepExecutor` runs its other attacks on the same
observations. An attack-only cell (:func:`attack_cell`) attacks single-image gradients of the
untrained model, the setting of the DLG paper. Either way the strongest attack decides: a cell's
leakage is the highest among its attacks, and the attack that reached it is named. Rows show
means with 95% intervals over seeds beside the Wilson interval of the pooled reconstructions.

This module is the sweep's logic and its files; the defenses and their run-config keys are those
of :mod:`semsim_audit.strategies.defenses`, and the ``semsim-audit bench`` command passes in the
function that runs one cell.

Output folder::

    sweep.json                   the fixed settings (a resumed sweep must match them)
    cells/<cell id>/             the cell's run folder (report.jsonl, ...), all-attacks.json (every
                                 attack's audits) and result.json, written last and atomically:
                                 present = the cell finished
    results.csv, results.json    one row per defense and strength: means, intervals, attacks
    results.md                   the frontier table in Markdown
    tradeoff.png, report.html    leakage against accuracy, with the Pareto front
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from rich.table import Table
from scipy.stats import t as student_t

from semsim_audit.attacks import ATTACKS, AttackConfig, Observation, run_attacks
from semsim_audit.core import seed_everything
from semsim_audit.models import model_for
from semsim_audit.report import (
    ClientAudit,
    PrivacyReport,
    RoundRecord,
    format_value,
    leakage_rate,
    mean,
    pooled_scores,
    wilson_interval,
)
from semsim_audit.scoring import score_client
from semsim_audit.strategies.defenses import DEFENSES, Strength, defend_update
from semsim_audit.strategies.executors import InlineExecutor
from semsim_audit.views.files import saved_image
from semsim_audit.views.html import STYLE, data_uri
from semsim_audit.views.notebook import page_fragment

__all__ = [
    "DEFENSES", "DefenseSpec", "Cell", "CellResult", "Row", "METRICS", "AttackSpec", "Preset",
    "PRESETS", "DEFAULT_DEFENSES", "DEFAULT_ATTACKS", "ADAPTIVE_ATTACKS", "FEDERATION",
    "parse_defense", "parse_defense_option", "parse_attack", "cell_attacks", "cell_grid",
    "result_from_report", "attack_statistics", "SweepState", "SweepExecutor", "with_other_attacks",
    "attack_cell", "run_sweep", "aggregate", "seed_interval", "pareto_front", "front_rivals",
    "results_table", "attacks_table", "markdown_table", "write_csv", "write_json", "plot_tradeoff",
    "plot_leakage",
    "render_html", "write_outputs",
]

METRICS = ("accuracy", "leakage_rate", "mean_semsim", "mean_psnr", "mean_ssim")


@dataclass(frozen=True)
class DefenseSpec:
    """One ``--defense`` argument: a defense and the strengths to sweep."""

    name: str
    strengths: tuple[Strength, ...]


def parse_defense(spec: str) -> DefenseSpec:
    """Parse ``"none"``, ``"noise:0.001,0.01"``, ``"quantize:sign,4"``...; ValueError names the problem."""
    name, _, values = spec.strip().partition(":")
    name = name.strip()
    if name not in DEFENSES:
        raise ValueError(f"--defense {spec!r}: unknown defense {name!r}; known: {', '.join(DEFENSES)}")
    kind = DEFENSES[name]
    if kind.parse is None:
        if values.strip():
            raise ValueError(f"--defense {spec!r}: {name!r} takes no strengths")
        return DefenseSpec(name, (None,))
    texts = [v.strip() for v in values.split(",")] if values.strip() else []
    if not texts or any(not t for t in texts):
        raise ValueError(f"--defense {spec!r}: give strengths as {name}:v1,v2,... ({kind.meaning})")
    strengths: list[Strength] = []
    for text in texts:
        try:
            value = kind.parse(text)
        except ValueError as error:
            raise ValueError(f"--defense {spec!r}: {error} ({kind.meaning})") from None
        if value not in strengths:
            strengths.append(value)
    return DefenseSpec(name, tuple(strengths))


def parse_defense_option(text: str) -> tuple[str, Strength]:
    """Parse ``"noise.clip=1.0"`` into the run-config item ``("defense.noise.clip", 1.0)``."""
    name, sep, value = text.partition("=")
    defense, dot, option = name.strip().partition(".")
    kind = DEFENSES.get(defense)
    if not sep or not dot or kind is None or option not in kind.options:
        known = [f"{d}.{o}" for d, k in DEFENSES.items() for o in k.options]
        raise ValueError(f"--defense-option {text!r}: expected NAME=VALUE, NAME one of {', '.join(known)}")
    try:
        return f"defense.{defense}.{option}", kind.options[option](value.strip())
    except ValueError as error:
        raise ValueError(f"--defense-option {text!r}: {error}") from None


# The sweep's defaults, chosen so that on the embedded data, within minutes on a CPU, the undefended
# model both learns and leaks: FedSGD with one image per client and round (the update is that
# image's gradient) on the DLG LeNet. The CLI's option defaults and the example app's run config
# equal these (a test checks).
FEDERATION: dict[str, Any] = {
    "dataset": "photos", "model": "lenet", "uniform_init": True, "clients": 16, "rounds": 40, "lr": 0.1,
    "local_steps": 1, "batch_size": 1, "audited": 4, "every": 20, "seeds": 2, "iterations": 200,
}
# Three strengths per defense: a weak one that still leaks, then stronger ones that cost accuracy.
DEFAULT_DEFENSES: tuple[str, ...] = ("none", "noise:0.001,0.01,0.3", "prune:0.5,0.9,0.99")
# Inverting Gradients (cosine, cheap per step) and iDLG (L2 by L-BFGS, up to 25 evaluations an iteration).
DEFAULT_ATTACKS: tuple[str, ...] = ("inverting-gradients", "idlg:30")
# The known adaptive attack of a defense: a pruned update's zeros say what was dropped, not what the
# gradient was, so the attacker matches only the coordinates the client sent.
ADAPTIVE_ATTACKS: dict[str, tuple[str, ...]] = {"prune": ("inverting-gradients+mask",)}
_MASK = "+mask"


@dataclass(frozen=True)
class AttackSpec:
    """One ``--attack`` argument: ``NAME[+mask][:ITERATIONS]``, an attack of the registry."""

    attack: str
    iterations: int | None = None  # None: the sweep's --iterations
    mask: bool = False  # match only the coordinates the (pruned) update kept

    @property
    def label(self) -> str:
        return self.attack + (_MASK if self.mask else "")

    def config(self, iterations: int, restarts: int, **settings: Any) -> AttackConfig:
        """The attack's settings: its own iteration count, else ``iterations``."""
        extra = {"match_support": True} if self.mask else {}
        return AttackConfig(iterations=self.iterations or iterations, restarts=restarts, **extra, **settings)


def parse_attack(spec: str) -> AttackSpec:
    """Parse ``"idlg"``, ``"idlg:30"``, ``"inverting-gradients+mask:200"``; ValueError names the problem."""
    name, _, count = spec.strip().partition(":")
    name = name.strip()
    mask = name.endswith(_MASK)
    name = name.removesuffix(_MASK)
    if name not in ATTACKS:
        raise ValueError(f"--attack {spec!r}: unknown attack {name!r}; known: {', '.join(ATTACKS)} "
                         f"(add {_MASK} to match only the coordinates a pruned update kept)")
    iterations = None
    if count.strip():
        if not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"--attack {spec!r}: iterations must be a positive integer, "
                             f"got {count.strip()!r}")
        iterations = int(count)
    return AttackSpec(name, iterations, mask)


def cell_attacks(defense: str, specs: Sequence[AttackSpec], adaptive: bool = True) -> list[AttackSpec]:
    """The attacks of a cell: ``specs``, then the defense's known adaptive attacks not among them."""
    extra = [parse_attack(text) for text in ADAPTIVE_ATTACKS.get(defense, ())] if adaptive else []
    attacks: list[AttackSpec] = []
    for spec in [*specs, *extra]:
        if spec.label not in {a.label for a in attacks}:  # the first spec of a label wins
            attacks.append(spec)
    return attacks


@dataclass(frozen=True)
class Preset:
    """A named sweep: its defenses, attacks and option values; options given on the command line win."""

    description: str
    defenses: tuple[str, ...]
    attacks: tuple[str, ...]
    options: Mapping[str, Any]


_DLG_DEFENSES = ("none", "gaussian:1e-4,1e-3,1e-2,1e-1", "laplacian:1e-4,1e-3,1e-2,1e-1",
                 "prune:0.01,0.1,0.2,0.3,0.5,0.7")
# The DLG paper's section 5: single images, the sigmoid LeNet with uniform weights, noise variance
# 1e-4..1e-1 and pruning 1%..70% on the gradient, DLG with 300 L-BFGS iterations.
PRESETS: dict[str, Preset] = {
    "dlg-defenses": Preset(
        "DLG's defense experiment (Zhu et al., NeurIPS 2019, sec. 5) at the paper's budget (GPU-sized)",
        _DLG_DEFENSES, ("dlg:300", "idlg:300"),
        {"attack_only": True, "images": 10, "seeds": 3, "dataset": "photos", "model": "lenet",
         "uniform_init": True, "iterations": 2000, "restarts": 1}),
    "dlg-defenses-cpu": Preset(
        "DLG's defense experiment at a CPU budget: fewer images, 50 L-BFGS iterations",
        _DLG_DEFENSES, ("dlg:50", "idlg:50"),
        {"attack_only": True, "images": 3, "seeds": 2, "dataset": "photos", "model": "lenet",
         "uniform_init": True, "iterations": 200, "restarts": 1}),
}


def _strength_text(value: Strength) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Cell:
    """One audited training run of the sweep."""

    defense: str
    strength: Strength
    seed: int

    @property
    def label(self) -> str:
        return self.defense if self.strength is None else f"{self.defense} {_strength_text(self.strength)}"

    @property
    def cell_id(self) -> str:
        """A file-system-safe, unique folder name."""
        text = self.defense if self.strength is None else f"{self.defense}-{_strength_text(self.strength)}"
        return re.sub(r"[^A-Za-z0-9.+-]", "_", text) + f"-seed{self.seed}"

    def run_config(self, options: Mapping[str, Strength] | None = None) -> dict[str, Any]:
        """The run config the cell's clients (and server) get: strength, its options, the seed."""
        config: dict[str, Any] = {"defense.seed": self.seed}
        kind = DEFENSES[self.defense]
        if kind.key is not None:
            config[kind.key] = self.strength
            prefix = f"defense.{self.defense}."
            config.update({k: v for k, v in (options or {}).items() if k.startswith(prefix)})
        return config


def cell_grid(specs: Sequence[DefenseSpec], seeds: Sequence[int]) -> list[Cell]:
    """Every (defense, strength, seed), defenses in the given order, duplicates dropped."""
    if not specs:
        raise ValueError("--defense: give at least one defense")
    if not seeds:
        raise ValueError("--seeds: give at least one seed")
    cells: list[Cell] = []
    for spec in specs:
        for strength in spec.strengths:
            for seed in seeds:
                cell = Cell(spec.name, strength, int(seed))
                if cell not in cells:
                    cells.append(cell)
    return cells


@dataclass
class CellResult:
    """What one cell measured, or why it failed.

    The leakage numbers are those of the cell's strongest attack (``attack``): the highest leakage
    rate over its audited rounds, ties to the closer mean SemSim. ``attacks`` holds every attack's
    numbers (:func:`attack_statistics`), each with its per-round Wilson intervals.
    """

    defense: str
    strength: Strength
    seed: int
    status: Literal["ok", "failed"]
    reason: str | None = None
    accuracy: float | None = None
    leakage_rate: float | None = None
    mean_semsim: float | None = None
    mean_psnr: float | None = None
    mean_ssim: float | None = None
    reconstructions: int = 0
    rounds: int = 0
    seconds: float = 0.0
    attack: str | None = None
    recognizable: int = 0
    leakage_low: float | None = None  # 95% Wilson interval over the strongest attack's reconstructions
    leakage_high: float | None = None
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def cell(self) -> Cell:
        return Cell(self.defense, self.strength, self.seed)

    def _repr_html_(self) -> str:
        """Jupyter's view: the sweep's table and trade-off plot for this cell."""
        rows = aggregate([self])
        with tempfile.TemporaryDirectory() as folder:
            plot = plot_tradeoff(rows, Path(folder) / "tradeoff.png")
            return page_fragment(render_html(rows, [self], asdict(self), plot))


def _wilson(recognizable: int, judged: int) -> tuple[float | None, float | None]:
    interval = wilson_interval(recognizable, judged)
    return interval if interval is not None else (None, None)


def _leakage_numbers(scores: Sequence[Any]) -> dict[str, Any]:
    judged = [s for s in scores if s.recognizable is not None]
    hits = sum(bool(s.recognizable) for s in judged)
    low, high = _wilson(hits, len(judged))
    return {"leakage_rate": leakage_rate(judged), "judged": len(judged), "recognizable": hits,
            "leakage_low": low, "leakage_high": high}


def attack_statistics(report: PrivacyReport) -> dict[str, dict[str, Any]]:
    """Per attack (``ClientAudit.attack``): leakage pooled over its audited rounds with the Wilson
    interval, mean SemSim / PSNR / SSIM, failed audits, and each round's leakage and interval."""
    audits: dict[str, list[tuple[int, ClientAudit]]] = {}
    for record in report.rounds:
        for audit in record.clients:
            audits.setdefault(audit.attack, []).append((record.round, audit))
    statistics = {}
    for attack, entries in audits.items():
        scores = pooled_scores(audit for _, audit in entries)
        rounds = [{"round": number, **_leakage_numbers(pooled_scores(a for r, a in entries if r == number))}
                  for number in sorted({r for r, _ in entries})]
        statistics[attack] = {
            **_leakage_numbers(scores),
            "mean_semsim": mean(s.semsim for s in scores), "mean_psnr": mean(s.psnr for s in scores),
            "mean_ssim": mean(s.ssim for s in scores),
            "audits": len(entries), "failed": sum(audit.status != "ok" for _, audit in entries),
            "rounds": rounds,
        }
    return statistics


def _strength_order(numbers: Mapping[str, Any]) -> tuple[bool, float, float]:
    """Sort key of an attack's numbers: a measured leakage first, then higher, then closer (SemSim)."""
    rate, semsim = numbers.get("leakage_rate"), numbers.get("mean_semsim")
    return (rate is not None, rate or 0.0, -semsim if semsim is not None else -math.inf)


def result_from_report(cell: Cell, report: PrivacyReport, seconds: float) -> CellResult:
    """Final accuracy (last round that has one) and the strongest attack's leakage over its audited rounds."""
    accuracies = [r.accuracy for r in report.rounds if r.accuracy is not None]
    statistics = attack_statistics(report)
    strongest = max(statistics, key=lambda name: _strength_order(statistics[name])) if statistics else None
    numbers = statistics.get(strongest, {}) if strongest else {}
    return CellResult(
        cell.defense, cell.strength, cell.seed, "ok",
        accuracy=accuracies[-1] if accuracies else None,
        leakage_rate=numbers.get("leakage_rate"), mean_semsim=numbers.get("mean_semsim"),
        mean_psnr=numbers.get("mean_psnr"), mean_ssim=numbers.get("mean_ssim"),
        reconstructions=numbers.get("judged", 0), rounds=len(report.rounds), seconds=seconds,
        attack=strongest, recognizable=numbers.get("recognizable", 0),
        leakage_low=numbers.get("leakage_low"), leakage_high=numbers.get("leakage_high"),
        attacks=statistics,
    )


def _write_json_atomic(path: Path, payload: Any) -> None:
    """Write then rename: a sweep killed mid-write never leaves a half file that reads as finished."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, allow_nan=False, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class SweepState:
    """The sweep's output folder: its fixed settings and the finished cells."""

    def __init__(self, out_dir: str | Path, settings: Mapping[str, Any]) -> None:
        self.out_dir = Path(out_dir)
        self.settings = json.loads(json.dumps(dict(settings), default=str))

    def open(self) -> None:
        """Create the folder, or check that the sweep in it was made with the same settings."""
        path = self.out_dir / "sweep.json"
        if path.exists():
            saved = json.loads(path.read_text(encoding="utf-8"))
            keys = set(saved) | set(self.settings)
            changed = sorted(k for k in keys if saved.get(k) != self.settings.get(k))
            if changed:
                raise ValueError(f"--out {self.out_dir}: holds a sweep with other settings "
                                 f"({', '.join(changed)}); resume with the same ones or use another folder")
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(path, self.settings)

    def cell_dir(self, cell: Cell) -> Path:
        return self.out_dir / "cells" / cell.cell_id

    def load(self, cell: Cell) -> CellResult | None:
        """The cell's saved result, or None when it has not finished (or its file is not ours)."""
        path = self.cell_dir(cell) / "result.json"
        if not path.is_file():
            return None
        try:
            return CellResult(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            return None

    def save(self, result: CellResult) -> None:
        folder = self.cell_dir(result.cell)
        folder.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(folder / "result.json", asdict(result))


class SweepExecutor(InlineExecutor):
    """The audit's executor in a federated cell: the audit's own attack, then the cell's other attacks.

    The other attacks get the very observations the audit attacked (the server's view of each
    audited update); their results wait here, keyed by (round, node), until
    :func:`with_other_attacks` scores them against the originals that client exported with its
    scores of the first attack. An attack that raises is kept as the reason its audits failed.
    """

    def __init__(self, others: Mapping[str, tuple[str, AttackConfig]]) -> None:
        super().__init__(batch=True)
        self.others = dict(others)  # label -> (registry name, settings)
        self.results: dict[tuple[int, int], dict[str, Any]] = {}

    def submit(self, jobs: Sequence[Any], attack: str, config: Any, score: Any,
               *args: Any, **kwargs: Any) -> Any:
        future = super().submit(jobs, attack, config, score, *args, **kwargs)
        observations = [job.observation for job in jobs]
        for label, (name, settings) in self.others.items():
            try:
                results: list[Any] = run_attacks(name, observations, settings)
            except Exception as error:  # noqa: BLE001 - one attack failing must not stop the audit
                results = [error] * len(jobs)
            for job, result in zip(jobs, results, strict=True):
                self.results.setdefault((job.server_round, job.node_id), {})[label] = result
        return future


def _png(path: Path) -> torch.Tensor:
    """A PNG written by ``save_png`` as a (C, H, W) image in [0, 1]."""
    with Image.open(path) as image:
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    return pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1)


def _exported_originals(run_dir: Path, audit: ClientAudit) -> torch.Tensor | None:
    """The originals the client exported with its scores (saved as PNG in the run folder), in score order."""
    paths = [saved_image(run_dir, score.original_image) for score in audit.scores]
    if audit.status != "ok" or not paths or any(path is None for path in paths):
        return None
    return torch.stack([_png(path) for path in paths if path is not None])


def with_other_attacks(report: PrivacyReport, executor: SweepExecutor, run_dir: str | Path,
                       semsim: Any, label: str | None = None) -> PrivacyReport:
    """A copy of ``report`` with, beside each audit, one ClientAudit per other attack of the executor.

    They are scored like the audit's own, by the same SemSim, on this side: against the originals
    the client exported (opt-in, as the simulation's clients do) with its first scores, read back
    from the run folder's 8-bit PNGs, which moves a score by far less than any threshold. ``label``
    renames the audit's own attack (``idlg+mask`` runs as ``idlg`` with ``match_support``). The copy
    is also written to ``run_dir/all-attacks.json``.
    """
    combined = report.model_copy(deep=True)
    for record in combined.rounds:
        added = []
        for audit in record.clients:
            audit.attack = label or audit.attack
            results = executor.results.get((record.round, audit.node_id), {})
            originals = _exported_originals(Path(run_dir), audit) if results else None
            labels = [score.true_label for score in audit.scores]
            true_labels = torch.tensor(labels) if labels and None not in labels else None
            for other_label, result in results.items():
                common = dict(node_id=audit.node_id, client_key=audit.client_key, attack=other_label,
                              num_images=audit.num_images, local_steps=audit.local_steps,
                              batch_size=audit.batch_size)
                if isinstance(result, Exception):
                    reason = f"attack raised {type(result).__name__}: {result}"
                    added.append(ClientAudit(status="failed", reason=reason, **common))
                elif originals is None:
                    added.append(ClientAudit(status="failed", **common, reason=(
                        "not scored: the client's originals come back with its scores of the first attack "
                        f"({audit.attack}), and that audit {audit.status}: {audit.reason or 'no images'}")))
                else:
                    other = score_client(node_id=audit.node_id, attack=other_label, result=result,
                                         originals=originals, true_labels=true_labels, semsim=semsim,
                                         server_round=record.round, local_steps=audit.local_steps,
                                         batch_size=audit.batch_size)
                    added.append(other.model_copy(update={"client_key": audit.client_key}))
        record.clients.extend(added)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    _write_json_atomic(Path(run_dir) / "all-attacks.json", combined.model_dump(mode="json"))
    return combined


def attack_cell(cell: Cell, folder: str | Path, *, dataset: Any, model: str,
                model_options: Mapping[str, Any], images: int, attacks: Sequence[AttackSpec],
                iterations: int, restarts: int, device: str, semsim: Any, labels_known: bool = False,
                options: Mapping[str, Strength] | None = None, save_images: bool = False) -> PrivacyReport:
    """Leakage only: attack single-image gradients of the untrained model behind the cell's defense.

    The seed fixes the model (``model_for`` after seeding) and the ``images`` drawn from ``dataset``,
    so every defense of a seed faces the same gradients; the defense is :func:`defend_update`, the
    transforms of the Flower mods. Each attack runs on all images in one batched optimisation and is
    scored here against the originals. The report has one round with one audit per image and attack.
    """
    if images < 1 or images > len(dataset):
        raise ValueError(f"images must lie in [1, {len(dataset)}], got {images}")
    folder = Path(folder)
    spec = dataset.spec
    seed_everything(cell.seed)
    victim = model_for(model, spec, **dict(model_options))
    names = [name for name, _ in victim.named_parameters()]
    run_config = cell.run_config(options)
    indices = [int(i) for i in np.random.default_rng(cell.seed).choice(len(dataset), images, replace=False)]
    observations, originals, labels = [], [], []
    for index in indices:
        image, label = dataset[index]
        loss = torch.nn.functional.cross_entropy(victim(image.unsqueeze(0)), torch.tensor([int(label)]))
        gradient = torch.autograd.grad(loss, list(victim.parameters()))
        update = {n: g.detach().double().numpy() for n, g in zip(names, gradient, strict=True)}
        defended = defend_update(update, run_config, np.random.default_rng([cell.seed, index]))
        observations.append(Observation.from_gradients(
            victim, {n: torch.from_numpy(v).float() for n, v in defended.items()}, spec, num_samples=1,
            labels=[int(label)] if labels_known else None))
        originals.append(spec.denormalize(image.unsqueeze(0)).clamp(0.0, 1.0))
        labels.append(torch.tensor([int(label)]))
    audits = []
    for attack in attacks:
        settings = attack.config(iterations, restarts, seed=cell.seed, device=device)
        try:
            results: list[Any] = run_attacks(attack.attack, observations, settings)
        except ValueError as error:
            results = [error] * len(observations)
        for index, result, original, label in zip(indices, results, originals, labels, strict=True):
            if isinstance(result, Exception):
                audits.append(ClientAudit(node_id=index, attack=attack.label, status="failed",
                                          reason=f"attack raised {type(result).__name__}: {result}"))
                continue
            audits.append(score_client(node_id=index, attack=attack.label, result=result, originals=original,
                                       true_labels=label, semsim=semsim, server_round=1, local_steps=1,
                                       batch_size=1, run_dir=folder / attack.label if save_images else None))
    report = PrivacyReport(
        attack=", ".join(a.label for a in attacks),
        threat_model="labels_known" if labels_known else "labels_recovered",
        semsim=dict(getattr(semsim, "info", {}) or {}),
        config={"cell": "attack-only", "model": model, **dict(model_options), "images": indices,
                "iterations": iterations, "restarts": restarts, "run_config": run_config},
        rounds=[RoundRecord(round=1, clients=audits)])
    folder.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(folder / "all-attacks.json", report.model_dump(mode="json"))
    return report


def run_sweep(cells: Sequence[Cell], state: SweepState,
              run_cell: Callable[[Cell, Path], PrivacyReport],
              on_done: Callable[[CellResult, bool], None] | None = None) -> list[CellResult]:
    """Run every cell not finished yet; a cell that raises is recorded as failed and the sweep goes on.

    ``on_done(result, skipped)`` is called after each cell (``skipped``: finished by an earlier run).
    Failed cells are tried again by the next run; finished ones never are.
    """
    state.open()
    results = []
    for cell in cells:
        saved = state.load(cell)
        if saved is not None and saved.status == "ok":
            results.append(saved)
            if on_done:
                on_done(saved, True)
            continue
        folder = state.cell_dir(cell)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            report = run_cell(cell, folder)
            result = result_from_report(cell, report, time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - one bad cell must not end the sweep
            last = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
            where = f" (at {Path(last.filename).name}:{last.lineno})" if last else ""
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:300] + where
            result = CellResult(cell.defense, cell.strength, cell.seed, "failed", reason=reason,
                                seconds=time.perf_counter() - started)
        state.save(result)
        results.append(result)
        if on_done:
            on_done(result, False)
    return results


@dataclass
class Row:
    """One defense and strength over its finished seeds: the strongest attack's numbers.

    ``attack`` is the attack with the highest mean leakage over the seeds (ties: the closer mean
    SemSim), and the leakage metrics are its own. ``interval`` holds each metric's 95% Student-t
    interval over seeds (None below two seeds); ``wilson`` is the 95% Wilson interval of that
    attack's reconstructions pooled over the seeds (``recognizable`` of ``judged``). ``pareto``: no
    other row has a mean accuracy >= and a mean leakage <=, one strictly; ``rivals``: the better
    rows (in one of the two) whose intervals overlap this front row's on both axes, so the data
    cannot tell the two apart.
    """

    defense: str
    strength: Strength
    seeds: int
    failed: int
    mean: dict[str, float | None]
    std: dict[str, float | None]
    pareto: bool = False
    interval: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    attack: str | None = None
    attacks: dict[str, float | None] = field(default_factory=dict)
    judged: int = 0
    recognizable: int = 0
    wilson: tuple[float, float] | None = None
    rivals: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return Cell(self.defense, self.strength, 0).label


def _std(values: list[float]) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return 0.0
    centre = sum(values) / len(values)
    return math.sqrt(sum((v - centre) ** 2 for v in values) / (len(values) - 1))


_RATES = ("accuracy", "leakage_rate", "mean_ssim")  # proportions: intervals are clipped to [0, 1]


def seed_interval(values: Sequence[float], clip: bool = False) -> tuple[float, float] | None:
    """95% Student-t interval of the mean of ``values`` (one per seed); None below two values."""
    if len(values) < 2:
        return None
    centre, spread = sum(values) / len(values), _std(list(values)) or 0.0
    half = float(student_t.ppf(0.975, len(values) - 1)) * spread / math.sqrt(len(values))
    low, high = centre - half, centre + half
    return (max(0.0, low), min(1.0, high)) if clip else (low, high)


def _numbers(result: CellResult, attack: str | None) -> dict[str, Any]:
    """One seed's numbers for ``attack`` (the cell's own strongest when it has no per-attack record)."""
    if attack is not None and attack in result.attacks:
        return {"accuracy": result.accuracy, **result.attacks[attack]}
    return {"accuracy": result.accuracy, **{m: getattr(result, m) for m in METRICS[1:]},
            "judged": result.reconstructions, "recognizable": result.recognizable}


def _strongest_over_seeds(results: Sequence[CellResult]) -> str | None:
    names = list(dict.fromkeys(name for r in results for name in r.attacks))
    if not names:
        return None

    def averaged(name: str) -> dict[str, Any]:
        seeds = [r.attacks[name] for r in results if name in r.attacks]
        return {"leakage_rate": mean(s.get("leakage_rate") for s in seeds),
                "mean_semsim": mean(s.get("mean_semsim") for s in seeds)}

    return max(names, key=lambda name: _strength_order(averaged(name)))


def aggregate(results: Sequence[CellResult]) -> list[Row]:
    """Group the cells by defense and strength (first-seen order): the strongest attack over seeds,
    mean, sample std and 95% interval of every metric; then the Pareto front and its rivals."""
    groups: dict[tuple[str, Strength], list[CellResult]] = {}
    for result in results:
        groups.setdefault((result.defense, result.strength), []).append(result)
    rows = []
    for (defense, strength), members in groups.items():
        ok = [r for r in members if r.status == "ok"]
        attack = _strongest_over_seeds(ok)
        seeds = [_numbers(r, attack) for r in ok]
        means: dict[str, float | None] = {}
        stds: dict[str, float | None] = {}
        intervals: dict[str, tuple[float, float] | None] = {}
        for metric in METRICS:
            values = [v for n in seeds if (v := n.get(metric)) is not None and math.isfinite(v)]
            means[metric] = mean(values)
            stds[metric] = _std(values)
            intervals[metric] = seed_interval(values, clip=metric in _RATES)
        judged = sum(int(n.get("judged") or 0) for n in seeds)
        recognizable = sum(int(n.get("recognizable") or 0) for n in seeds)
        per_attack = {name: mean(r.attacks[name].get("leakage_rate") for r in ok if name in r.attacks)
                      for name in dict.fromkeys(name for r in ok for name in r.attacks)}
        rows.append(Row(defense, strength, len(ok), len(members) - len(ok), means, stds,
                        interval=intervals, attack=attack, attacks=per_attack, judged=judged,
                        recognizable=recognizable, wilson=wilson_interval(recognizable, judged)))
    for row, on_front, rivals in zip(rows, pareto_front(rows), front_rivals(rows), strict=True):
        row.pareto, row.rivals = on_front, rivals
    return rows


def pareto_front(rows: Sequence[Row]) -> list[bool]:
    """For each row: True when no other row has accuracy >= and leakage <=, one of them strictly."""
    points = [(r.mean["accuracy"], r.mean["leakage_rate"]) for r in rows]
    front = []
    for accuracy, leakage in points:
        if accuracy is None or leakage is None:
            front.append(False)
            continue
        dominated = any(a is not None and k is not None and a >= accuracy and k <= leakage
                        and (a > accuracy or k < leakage) for a, k in points)
        front.append(not dominated)
    return front


def _leakage_range(row: Row) -> tuple[float, float]:
    """The leakage interval over seeds widened to the Wilson interval of the pooled reconstructions
    (seeds that agree do not make a handful of reconstructions certain); needs a mean leakage."""
    leakage = row.mean["leakage_rate"]
    assert leakage is not None
    low, high = row.interval.get("leakage_rate") or (leakage, leakage)
    if row.wilson is not None:
        low, high = min(low, row.wilson[0]), max(high, row.wilson[1])
    return low, high


def _bounds(row: Row) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The row's (accuracy, leakage) ranges: the interval over seeds and :func:`_leakage_range`."""
    accuracy = row.mean["accuracy"]
    if accuracy is None or row.mean["leakage_rate"] is None:
        return None
    return row.interval.get("accuracy") or (accuracy, accuracy), _leakage_range(row)


def front_rivals(rows: Sequence[Row]) -> list[list[str]]:
    """For each row on the Pareto front: the labels of the rows better than it in mean accuracy or
    mean leakage whose ranges (:func:`_bounds`) overlap its own on both axes; [] off the front."""
    front = pareto_front(rows)
    rivals: list[list[str]] = []
    for row, on_front in zip(rows, front, strict=True):
        mine = _bounds(row)
        found = []
        if on_front and mine is not None:
            for other in rows:
                theirs = _bounds(other)
                if other is row or theirs is None:
                    continue
                better = (other.mean["accuracy"] > row.mean["accuracy"]  # type: ignore[operator]
                          or other.mean["leakage_rate"] < row.mean["leakage_rate"])  # type: ignore[operator]
                overlap = all(a[0] <= b[1] and b[0] <= a[1] for a, b in zip(mine, theirs, strict=True))
                if better and overlap:
                    found.append(other.label)
        rivals.append(found)
    return rivals


def _pair(low: float | None, high: float | None) -> tuple[float, float] | None:
    return None if low is None or high is None else (low, high)


def _interval_text(interval: tuple[float, float] | None, spec: str) -> str:
    return "" if interval is None else f" [{interval[0]:{spec}}, {interval[1]:{spec}}]"


def _with_interval(row: Row, metric: str, spec: str) -> str:
    """The mean, then its 95% interval over seeds when there are two seeds or more."""
    return format_value(row.mean[metric], spec) + _interval_text(row.interval.get(metric), spec)


def _recognizable(row: Row) -> str:
    return "n/a" if not row.judged else f"{row.recognizable}/{row.judged}" + _interval_text(row.wilson, ".2f")


def _pareto(row: Row, names: int = 3) -> str:
    if not row.pareto:
        return ""
    if not row.rivals:
        return "*"
    more = f" +{len(row.rivals) - names}" if len(row.rivals) > names else ""
    return "* ≈ " + ", ".join(row.rivals[:names]) + more


# (header, text of a row); the console table, the Markdown table, the HTML page and the CSV say the same.
_COLUMNS: tuple[tuple[str, Callable[[Row], str]], ...] = (
    ("defense", lambda r: r.label),
    ("seeds", lambda r: str(r.seeds) + (f" ({r.failed} failed)" if r.failed else "")),
    ("accuracy", lambda r: _with_interval(r, "accuracy", ".2f")),
    ("leakage", lambda r: _with_interval(r, "leakage_rate", ".2f")),
    ("recognized", _recognizable),
    ("attack", lambda r: r.attack or "n/a"),
    ("SemSim", lambda r: format_value(r.mean["mean_semsim"], ".3f")),
    ("PSNR dB", lambda r: format_value(r.mean["mean_psnr"], ".1f")),
    ("Pareto", _pareto),
)
CAPTION = ("accuracy, leakage: mean over seeds [95% Student-t interval over seeds]. leakage: share of the "
           "reconstructions SemSim calls recognizable, for the strongest attack (attack: the highest mean "
           "leakage over seeds), pooled over the audited rounds. recognized: that attack's recognizable "
           "reconstructions of all judged, all seeds [95% Wilson interval]. Pareto: * on the front of mean "
           "accuracy against mean leakage; * ≈ X: on it, but its intervals (the leakage one widened to "
           "Wilson's) overlap those of X, better on one axis: the data do not separate the two.")


def results_table(rows: Sequence[Row], title: str = "Privacy-utility sweep") -> Table:
    """The sweep as a rich table: means with 95% intervals, the strongest attack, the Pareto front."""
    table = Table(title=title, caption=CAPTION, caption_justify="left")
    for index, (header, _) in enumerate(_COLUMNS):
        table.add_column(header, justify="left" if index in (0, 5, 8) else "right")
    for row in rows:
        table.add_row(*(text(row) for _, text in _COLUMNS), style="bold" if row.pareto else None)
    return table


def _attack_names(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(name for row in rows for name in row.attacks))


def attacks_table(rows: Sequence[Row], title: str = "Leakage by attack (mean over seeds)") -> Table:
    """Each attack's mean leakage per defense and strength; the strongest one in bold."""
    names = _attack_names(rows)
    table = Table(title=title)
    table.add_column("defense")
    for name in names:
        table.add_column(name, justify="right")
    for row in rows:
        cells = []
        for name in names:
            text = format_value(row.attacks.get(name), ".2f") if name in row.attacks else "-"
            cells.append(f"[bold]{text}[/]" if name == row.attack else text)
        table.add_row(row.label, *cells)
    return table


def markdown_table(rows: Sequence[Row]) -> str:
    """The frontier table and the leakage-by-attack table in Markdown (for BENCHMARKS.md)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    text = [line([h for h, _ in _COLUMNS]), line(["---"] * len(_COLUMNS))]
    text += [line([render(row) for _, render in _COLUMNS]) for row in rows]
    names = _attack_names(rows)
    if names:
        text += ["", line(["defense", *names]), line(["---"] * (len(names) + 1))]
        def leak(row: Row, name: str) -> str:
            if name not in row.attacks:
                return "-"
            text = format_value(row.attacks.get(name), ".2f")
            return f"**{text}**" if name == row.attack else text

        text += [line([row.label, *(leak(row, n) for n in names)]) for row in rows]
    return "\n".join(text) + "\n"


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    """One line per defense and strength: mean, std and 95% interval of every metric, the strongest
    attack with its pooled Wilson interval, the front and its rivals, and each attack's mean leakage."""
    path = Path(path)
    names = _attack_names(rows)
    header = ["defense", "strength", "seeds", "failed", "pareto", "rivals", "attack", "judged",
              "recognizable", "wilson_low", "wilson_high"]
    header += [f"{m}_{part}" for m in METRICS for part in ("mean", "std", "low", "high")]
    header += [f"leakage_{name}" for name in names]

    def cell(value: Any) -> Any:
        return "" if value is None else value

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            wilson = row.wilson or (None, None)
            values: list[Any] = [row.defense, cell(row.strength), row.seeds, row.failed, int(row.pareto),
                                 "; ".join(row.rivals), cell(row.attack), row.judged, row.recognizable,
                                 cell(wilson[0]), cell(wilson[1])]
            for metric in METRICS:
                low, high = row.interval.get(metric) or (None, None)
                values += [cell(row.mean[metric]), cell(row.std[metric]), cell(low), cell(high)]
            values += [cell(row.attacks.get(name)) for name in names]
            writer.writerow(values)
    return path


def write_json(rows: Sequence[Row], results: Sequence[CellResult], settings: Mapping[str, Any],
               path: str | Path) -> Path:
    """The settings, every cell's result and the aggregated rows."""
    path = Path(path)
    payload = {"settings": dict(settings), "rows": [asdict(r) for r in rows],
               "cells": [asdict(r) for r in results]}
    path.write_text(json.dumps(payload, indent=2, allow_nan=False, default=str), encoding="utf-8")
    return path


def plot_tradeoff(rows: Sequence[Row], path: str | Path) -> Path | None:
    """Leakage against accuracy: 95% intervals as error bars, the Pareto front as a line, front points
    whose position the intervals do not establish drawn hollow."""
    points = [(r, b) for r in rows if (b := _bounds(r)) is not None]
    if not points:
        return None
    figure = Figure(figsize=(7.5, 5.2))
    axes = figure.subplots()
    colours = colormaps["tab10"]
    for index, defense in enumerate(dict.fromkeys(r.defense for r, _ in points)):
        colour = colours(index % 10)
        group = [(r, b) for r, b in points if r.defense == defense]
        xs = [r.mean["leakage_rate"] for r, _ in group]
        ys = [r.mean["accuracy"] for r, _ in group]
        xerr = [[max(0.0, x - b[1][0]) for x, (_, b) in zip(xs, group, strict=True)],
                [max(0.0, b[1][1] - x) for x, (_, b) in zip(xs, group, strict=True)]]
        yerr = [[max(0.0, y - b[0][0]) for y, (_, b) in zip(ys, group, strict=True)],
                [max(0.0, b[0][1] - y) for y, (_, b) in zip(ys, group, strict=True)]]
        axes.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor=colour, alpha=0.5, capsize=3)
        for (row, _), x, y in zip(group, xs, ys, strict=True):
            hollow = row.pareto and bool(row.rivals)
            axes.plot([x], [y], "o", color=colour, markerfacecolor="white" if hollow else colour,
                      markersize=7)
            axes.annotate(row.label + (" ≈" if hollow else ""), (x, y), fontsize=7, xytext=(4, 4),
                          textcoords="offset points")
        axes.plot([], [], "o", color=colour, label=defense)
    front = sorted((r for r, _ in points if r.pareto), key=lambda r: r.mean["leakage_rate"])
    if front:
        axes.plot([r.mean["leakage_rate"] for r in front], [r.mean["accuracy"] for r in front],
                  "k--", linewidth=1, label="Pareto front (hollow: not established)")
    axes.set_xlim(-0.05, 1.05)  # a rate: the whole range, so sweeps compare by eye
    axes.set_xlabel("leakage rate of the strongest attack (share of reconstructions recognizable; "
                    "lower = more private)", fontsize=8)
    axes.set_ylabel("final accuracy (higher = more useful)")
    axes.set_title("Privacy-utility frontier (bars: 95% intervals)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path


# What the number after a defense's name is (as in the command's --defense help).
_STRENGTH_NAMES = {"noise": "sigma (noise std / update norm)", "gaussian": "noise variance per entry",
                   "laplacian": "noise variance per entry", "prune": "share of each layer zeroed",
                   "clip": "L2 bound", "quantize": "bits", "dp-fixed": "noise multiplier",
                   "localdp": "epsilon"}


def plot_leakage(rows: Sequence[Row], path: str | Path) -> Path | None:
    """Leakage against strength, one panel per defense, the undefended leakage as a dashed line: the
    view of a sweep without accuracy (attack-only cells), as in the DLG paper's defense figure."""
    measured = [r for r in rows if r.mean["leakage_rate"] is not None]
    undefended = next((r for r in measured if r.defense == "none"), None)
    defenses = list(dict.fromkeys(r.defense for r in measured
                                  if r.defense != "none" and isinstance(r.strength, int | float)))
    if not defenses:
        return None
    figure = Figure(figsize=(4.2 * len(defenses), 3.8))
    panels = figure.subplots(1, len(defenses), squeeze=False)[0]
    for axes, defense in zip(panels, defenses, strict=True):
        group = sorted((r for r in measured if r.defense == defense), key=lambda r: float(r.strength))
        xs = [float(r.strength) for r in group]
        ys = [r.mean["leakage_rate"] for r in group]
        ranges = [_leakage_range(r) for r in group]
        axes.errorbar(xs, ys, yerr=[[max(0.0, y - lo) for y, (lo, _) in zip(ys, ranges, strict=True)],
                                    [max(0.0, hi - y) for y, (_, hi) in zip(ys, ranges, strict=True)]],
                      fmt="o-", capsize=3)
        if undefended is not None:
            axes.axhline(undefended.mean["leakage_rate"], color="grey", linestyle="--", label="no defense")
            axes.legend(fontsize=8)
        if min(xs) > 0 and max(xs) / min(xs) >= 100:
            axes.set_xscale("log")
        axes.set_ylim(-0.05, 1.05)
        axes.set_xlabel(f"{defense}: {_STRENGTH_NAMES.get(defense, 'strength')}", fontsize=8)
        axes.set_ylabel("leakage rate, strongest attack")
        axes.set_title(defense)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path


def render_html(rows: Sequence[Row], results: Sequence[CellResult], settings: Mapping[str, Any],
                plot: str | Path | None = None) -> str:
    """The sweep as one self-contained page in the run report's style."""
    def esc(value: object) -> str:
        return html.escape(str(value), quote=True)

    head = "".join(f"<th>{esc(h)}</th>" for h, _ in _COLUMNS)
    body = "".join("<tr>" + "".join(f"<td{' class=text' if i in (0, 5, 8) else ''}>{esc(text(r))}</td>"
                                    for i, (_, text) in enumerate(_COLUMNS)) + "</tr>" for r in rows)
    names = _attack_names(rows)
    by_attack = ("<h2>Leakage by attack</h2><p>Mean over seeds; the strongest in bold.</p><table><thead><tr>"
                 + "".join(f"<th>{esc(h)}</th>" for h in ["defense", *names]) + "</tr></thead><tbody>"
                 + "".join("<tr><td class='text'>" + esc(r.label) + "</td>" + "".join(
                     "<td>" + ("<b>" if n == r.attack else "")
                     + (esc(format_value(r.attacks.get(n), ".2f")) if n in r.attacks else "-")
                     + ("</b>" if n == r.attack else "") + "</td>" for n in names) + "</tr>" for r in rows)
                 + "</tbody></table>") if names else ""
    per_round = "".join(
        f"<tr><td class='text'>{esc(row.label)}</td><td>{result.seed}</td><td>{entry['round']}</td>"
        f"<td>{esc(format_value(entry['leakage_rate'], '.2f'))}"
        f"{esc(_interval_text(_pair(entry['leakage_low'], entry['leakage_high']), '.2f'))}</td>"
        f"<td>{entry['recognizable']}/{entry['judged']}</td></tr>"
        for row in rows for result in results
        if (result.defense, result.strength) == (row.defense, row.strength) and result.status == "ok"
        for entry in result.attacks.get(row.attack or "", {}).get("rounds", []))
    rounds_html = ("<h2>Leakage per audited round</h2><p>The row's strongest attack, each seed and "
                   "audited round: leakage rate [95% Wilson interval] and recognizable of judged.</p>"
                   "<table><thead><tr>"
                   + "".join(f"<th>{h}</th>" for h in ("defense", "seed", "round", "leakage", "recognized"))
                   + f"</tr></thead><tbody>{per_round}</tbody></table>") if per_round else ""
    failed = [r for r in results if r.status == "failed"]
    failures = ("<h2>Failed cells</h2><ul>"
                + "".join(f"<li>{esc(r.cell.label)} seed {r.seed}: {esc(r.reason)}</li>" for r in failed)
                + "</ul>") if failed else ""
    heading = "Leakage against accuracy" if plot and Path(plot).stem == "tradeoff" else (
        "Leakage against strength")
    plot_html = f"<h2>{heading}</h2><img class='plot' alt='{heading}' src='{data_uri(plot)}'>" if plot else ""
    meanings = "".join(f"<tr><th class='text'>{esc(n)}</th><td>{esc(k.meaning)}</td></tr>"
                       for n, k in DEFENSES.items())
    attack_meanings = "".join(f"<tr><th class='text'>{esc(n)}</th><td>{esc(a.description)}</td></tr>"
                              for n, a in ATTACKS.items())
    attack_meanings += (f"<tr><th class='text'>NAME{_MASK}</th><td>the attack matching only the coordinates "
                        "the update carries (non-zero): the adaptive attack on pruning</td></tr>")
    config = esc(json.dumps(dict(settings), indent=2, sort_keys=True, default=str))
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>semsim-audit defense sweep</title><style>{STYLE}</style></head><body>\n"
            "<h1>Defense sweep: privacy against utility</h1>"
            f"<p>{esc(CAPTION)}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"{by_attack}{rounds_html}{failures}{plot_html}"
            f"<h2>Defenses</h2><table class='glossary'><tbody>{meanings}</tbody></table>"
            f"<h2>Attacks</h2><table class='glossary'><tbody>{attack_meanings}</tbody></table>"
            f"<h2>Settings</h2><pre>{config}</pre>\n</body></html>\n")


def write_outputs(rows: Sequence[Row], results: Sequence[CellResult], settings: Mapping[str, Any],
                  out_dir: str | Path) -> dict[str, Path]:
    """results.csv, results.json, results.md, tradeoff.png (when there is something to plot), report.html."""
    out_dir = Path(out_dir)
    files = {"csv": write_csv(rows, out_dir / "results.csv"),
             "json": write_json(rows, results, settings, out_dir / "results.json")}
    markdown = out_dir / "results.md"
    markdown.write_text(markdown_table(rows), encoding="utf-8")
    files["markdown"] = markdown
    plot = plot_tradeoff(rows, out_dir / "tradeoff.png") or plot_leakage(rows, out_dir / "leakage.png")
    if plot is not None:
        files["plot"] = plot
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(rows, results, settings, plot), encoding="utf-8")
    files["html"] = html_path
    return files
