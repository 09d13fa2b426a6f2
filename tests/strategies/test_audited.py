"""AuditedStrategy in process (no Ray): every step, and the invariants of DESIGN.md."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    Strategy,
)

from semsim_audit.attacks import Observation, run_attacks
from semsim_audit.config import AuditConfig
from semsim_audit.report import read_jsonl
from semsim_audit.strategies import AuditedFedAvg, AuditedStrategy, make_client_app
from semsim_audit.strategies.executors import InlineExecutor, ThreadExecutor
from semsim_audit.strategies.local import InProcessGrid as LocalGrid
from semsim_audit.strategies.mods import CAPTURE_KEY, RECORD_KEY

EXPORT = {"audit-export-originals": True}


def _audit(**fields: Any) -> AuditConfig:
    fields.setdefault("attack", "idlg")
    fields.setdefault("attack_config", {"iterations": 2})
    fields.setdefault("clients", 2)
    return AuditConfig(**fields)


def _fedavg() -> FedAvg:
    return FedAvg(fraction_evaluate=0.0, min_evaluate_nodes=0)


def _audited(setup, semsim, inner: Strategy | None = None, **kwargs: Any) -> AuditedStrategy:
    audit = kwargs.pop("audit", None) or _audit()
    return AuditedStrategy(inner or _fedavg(), model_fn=setup.model_fn, data_spec=setup.spec, audit=audit,
                           semsim=semsim, **kwargs)


def _run(strategy: Strategy, setup, *, rounds: int = 2, mods: tuple = (), run_config: dict | None = None,
         train_config: dict | None = None, evaluate_fn=None) -> tuple[Any, LocalGrid]:
    random.seed(0)  # FedAvg samples with the global `random`: same order in every run
    grid = LocalGrid(make_client_app(setup.model_fn, setup.load_partition, mods=mods), 2,
                     EXPORT if run_config is None else run_config)
    torch.manual_seed(0)
    initial = ArrayRecord(setup.model_fn().state_dict())
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds,
                            train_config=ConfigRecord(train_config or {"lr": 0.1}), evaluate_fn=evaluate_fn)
    return result, grid


def _arrays_bytes(record: ArrayRecord) -> dict[str, bytes]:
    return {key: np.ascontiguousarray(value.numpy()).tobytes() for key, value in record.items()}


class SpyAttack:
    """Records what the attack code is given, then runs the real attack."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[list[Any]] = []
        self.fail = fail

    def __call__(self, name: str, observations: list[Any], config: Any) -> list[Any]:
        self.calls.append(list(observations))
        if self.fail == "raise":
            raise RuntimeError("boom")
        results = run_attacks(name, observations, config)
        if self.fail == "nan":
            for result in results:
                result.images = torch.full_like(result.images, float("nan"))
        return results


class SpyStrategy(FedAvg):
    """FedAvg that keeps the replies it was asked to aggregate."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fraction_evaluate=0.0, min_evaluate_nodes=0, **kwargs)
        self.seen: list[Message] = []

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        self.seen.extend(replies)
        return super().aggregate_train(server_round, replies)


# ------------------------------------------------------------------ configure_train


def test_configure_train_marks_only_the_audited_client_on_a_copy(setup, small_semsim) -> None:
    strategy = _audited(setup, small_semsim, audit=_audit(clients=1))
    grid = LocalGrid(make_client_app(setup.model_fn, setup.load_partition), 2, EXPORT)
    config = ConfigRecord({"lr": 0.1})
    messages = list(strategy.configure_train(1, ArrayRecord(setup.model_fn().state_dict()), config, grid))
    marked = [m for m in messages if m.content["config"].get(CAPTURE_KEY)]
    assert len(marked) == 1 and len(messages) == 2
    unmarked = next(m for m in messages if m is not marked[0])
    # FedAvg shares one RecordDict between its messages: the flag went into a copy.
    assert marked[0].content is not unmarked.content
    assert CAPTURE_KEY not in unmarked.content["config"] and CAPTURE_KEY not in config
    assert marked[0].content["arrays"] is unmarked.content["arrays"]


def test_client_choice_is_seeded_and_node_ids_can_be_named(setup, small_semsim) -> None:
    def chosen(audit: AuditConfig) -> list[list[int]]:
        strategy = _audited(setup, small_semsim, audit=audit)
        grid = LocalGrid(make_client_app(setup.model_fn, setup.load_partition), 2, EXPORT)
        picks = []
        for server_round in (1, 2, 3):
            messages = strategy.configure_train(server_round, ArrayRecord(setup.model_fn().state_dict()),
                                                ConfigRecord({"lr": 0.1}), grid)
            picks.append(sorted(m.metadata.dst_node_id for m in messages
                                if m.content["config"].get(CAPTURE_KEY)))
        return picks

    assert chosen(_audit(clients=1, seed=4)) == chosen(_audit(clients=1, seed=4))
    assert chosen(_audit(clients=[101])) == [[101], [101], [101]]


# ------------------------------------------------------------------ a full audited run


def test_audited_run_reports_every_round_next_to_accuracy(setup, small_semsim, tmp_path: Path) -> None:
    audit = _audit(out_dir=tmp_path, save_images=True)
    strategy = _audited(setup, small_semsim, audit=audit)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        return MetricRecord({"accuracy": 0.25 * server_round, "loss": 1.0})

    _run(strategy, setup, evaluate_fn=evaluate)
    report = strategy.report
    assert [r.round for r in report.rounds] == [1, 2]
    assert [r.accuracy for r in report.rounds] == [0.25, 0.5]
    for record in report.rounds:
        assert record.status == "ok" and len(record.clients) == 2
        assert record.leakage_rate is not None and record.mean_semsim is not None
        for client in record.clients:
            assert client.status == "ok" and client.local_steps == 1 and client.batch_size == 1
            assert client.label_accuracy is not None
            for score in client.scores:
                assert (tmp_path / score.original_image).is_file()
                assert (tmp_path / score.reconstruction_image).is_file()
    journal = read_jsonl(tmp_path / "report.jsonl")
    assert [r.round for r in journal.rounds] == [1, 2]
    assert json.loads((tmp_path / "report.json").read_text())["rounds"][1]["round"] == 2
    assert report.semsim["annotator"] == "proxy"


def test_each_round_is_on_disk_before_the_next_round_starts(setup, small_semsim, tmp_path: Path) -> None:
    strategy = _audited(setup, small_semsim, audit=_audit(out_dir=tmp_path))
    journal = tmp_path / "report.jsonl"
    rounds_on_disk: dict[int, int] = {}
    configure = strategy.strategy.configure_train

    def spy(server_round: int, *args: Any) -> Any:
        lines = journal.read_text().splitlines() if journal.exists() else []
        rounds_on_disk[server_round] = sum('"type": "round"' in line for line in lines)
        return configure(server_round, *args)

    strategy.strategy.configure_train = spy  # type: ignore[method-assign]
    _run(strategy, setup, rounds=3)
    assert rounds_on_disk == {1: 0, 2: 1, 3: 2}


def test_unaudited_rounds_keep_their_accuracy(setup, small_semsim) -> None:
    strategy = _audited(setup, small_semsim, audit=_audit(every=2))
    _run(strategy, setup, rounds=3,
         evaluate_fn=lambda r, arrays: MetricRecord({"accuracy": 0.1 * r}))
    statuses = [(r.round, r.status, len(r.clients)) for r in strategy.report.rounds]
    assert statuses == [(1, "ok", 2), (2, "not audited", 0), (3, "ok", 2)]
    assert strategy.report.rounds[1].accuracy == pytest.approx(0.2)


def test_federated_evaluation_accuracy_is_used_without_evaluate_fn(setup, small_semsim) -> None:
    strategy = _audited(setup, small_semsim, inner=FedAvg())
    _run(strategy, setup, rounds=1)
    assert strategy.report.rounds[0].accuracy is not None and strategy.report.rounds[0].loss is not None


def test_audited_fedavg_is_the_wrapper_around_fedavg(setup, small_semsim) -> None:
    strategy = AuditedFedAvg(model_fn=setup.model_fn, data_spec=setup.spec, audit=_audit(),
                             semsim=small_semsim, fraction_train=0.5)
    assert isinstance(strategy.strategy, FedAvg) and strategy.strategy.fraction_train == 0.5


def test_missing_semsim_checkpoint_fails_at_start_naming_the_field(setup, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="semsim_checkpoint"):
        AuditedStrategy(_fedavg(), model_fn=setup.model_fn, data_spec=setup.spec,
                        audit=_audit(semsim_checkpoint=str(tmp_path / "absent.safetensors")))


def test_model_that_does_not_fit_the_spec_fails_at_start(setup, small_semsim) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        AuditedStrategy(_fedavg(), model_fn=lambda: torch.nn.Sequential(torch.nn.Flatten(),
                                                                         torch.nn.Linear(3 * 32 * 32, 3)),
                        data_spec=setup.spec, audit=_audit(), semsim=small_semsim)


# ------------------------------------------------------------------ invariants


@pytest.mark.parametrize("inner", ["fedavg", "fedadam"])
def test_audit_does_not_change_aggregation(setup, small_semsim, inner: str) -> None:
    def make() -> Strategy:
        if inner == "fedavg":
            return _fedavg()
        return FedAdam(fraction_evaluate=0.0, min_evaluate_nodes=0, eta=0.05)

    plain, _ = _run(make(), setup, rounds=2)
    audited, _ = _run(_audited(setup, small_semsim, inner=make()), setup, rounds=2)
    assert _arrays_bytes(audited.arrays) == _arrays_bytes(plain.arrays)
    assert audited.train_metrics_clientapp == plain.train_metrics_clientapp


def test_originals_never_reach_the_inner_strategy_or_the_attack(setup, small_semsim) -> None:
    inner, attack = SpyStrategy(), SpyAttack()
    strategy = _audited(setup, small_semsim, inner=inner, executor=InlineExecutor(attack_fn=attack))
    _, grid = _run(strategy, setup, rounds=1)
    # The clients did send their originals...
    assert sum(RECORD_KEY in reply.content for reply in grid.replies if reply.has_content()) == 2
    # ...but the inner strategy saw replies without any audit record,
    assert inner.seen and all(not any(k.startswith("audit.") for k in r.content) for r in inner.seen)
    # and the attack got observations only: no tensor shaped like an image batch, no labels.
    image_shape = tuple(setup.spec.shape)
    assert attack.calls
    for observation in (o for call in attack.calls for o in call):
        assert isinstance(observation, Observation) and observation.labels is None
        tensors = [*observation.target.values(), *observation.model.state_dict().values()]
        assert all(tuple(t.shape[-3:]) != image_shape for t in tensors)


def test_labels_known_threat_model_gives_the_attack_the_labels(setup, small_semsim) -> None:
    attack = SpyAttack()
    strategy = _audited(setup, small_semsim, audit=_audit(threat_model="labels_known"),
                        executor=InlineExecutor(attack_fn=attack))
    _run(strategy, setup, rounds=1)
    assert all(o.labels is not None for call in attack.calls for o in call)


@pytest.mark.parametrize(("failure", "reason"), [("raise", "RuntimeError: boom"), ("nan", "not finite")])
def test_failing_attack_is_reported_and_training_goes_on(setup, small_semsim, failure: str,
                                                         reason: str) -> None:
    strategy = _audited(setup, small_semsim, executor=InlineExecutor(attack_fn=SpyAttack(failure)))
    result, _ = _run(strategy, setup)
    assert len(result.train_metrics_clientapp) == 2  # both rounds trained
    for record in strategy.report.rounds:
        assert record.status == "failed"
        assert all(c.status == "failed" and reason in c.reason for c in record.clients)


def _corrupt(kind: str):
    """A client mod that damages the update the client sends."""

    def mod(msg: Message, context: Context, call_next: Any) -> Message:
        reply = call_next(msg, context)
        if reply.has_error() or context.node_config["partition-id"] != 0:
            return reply
        arrays = reply.content["arrays"]
        if kind == "nan":
            name = next(iter(arrays))
            values = arrays[name].numpy().copy()
            values.flat[0] = np.nan
            arrays[name] = Array(values)
        elif kind == "shape":
            name = next(iter(arrays))
            arrays[name] = Array(np.zeros(3, dtype=np.float32))
        elif kind == "missing":
            del arrays[next(iter(arrays))]
        return reply

    return mod


@pytest.mark.parametrize(("kind", "reason"), [("nan", "NaN or inf"), ("shape", "has shape"),
                                              ("missing", "lack")])
def test_malformed_reply_is_skipped_with_a_reason(setup, small_semsim, kind: str, reason: str) -> None:
    strategy = _audited(setup, small_semsim)
    # FedAvg itself refuses inconsistent arrays; the audit must not crash on them either way.
    try:
        _run(strategy, setup, rounds=1, mods=(_corrupt(kind),))
    except Exception as error:  # the inner strategy's own complaint, not the audit's
        assert "audit" not in repr(error).lower()
    by_node = {c.node_id: c for c in strategy.report.rounds[0].clients}
    assert by_node[100].status == "skipped" and reason in by_node[100].reason
    assert by_node[101].status == "ok"


def test_client_without_audit_mod_or_export_is_skipped_with_a_reason(setup, small_semsim) -> None:
    strategy = _audited(setup, small_semsim)
    _run(strategy, setup, rounds=1, run_config={})
    reasons = [c.reason for c in strategy.report.rounds[0].clients]
    assert all(c.status == "skipped" for c in strategy.report.rounds[0].clients)
    assert all("audit-export-originals" in r for r in reasons)


def test_missing_learning_rate_is_skipped_with_a_reason(setup, small_semsim) -> None:
    strategy = _audited(setup, small_semsim)
    _run(strategy, setup, rounds=1, train_config={"local-steps": 1})
    assert all("'lr'" in c.reason for c in strategy.report.rounds[0].clients)


# ------------------------------------------------------------------ executors through the wrapper


def test_thread_executor_gives_the_same_audits_as_inline(setup, small_semsim) -> None:
    inline = _audited(setup, small_semsim)
    _run(inline, setup, rounds=1)
    threaded = _audited(setup, small_semsim, executor=ThreadExecutor())
    _run(threaded, setup, rounds=1)
    def summary(strategy: AuditedStrategy) -> list:
        return [[(c.node_id, c.status, [s.semsim for s in c.scores]) for c in r.clients]
                for r in strategy.report.rounds]
    assert summary(threaded) == summary(inline)


def test_audit_that_outlives_the_timeout_is_failed_and_the_run_ends(setup, small_semsim) -> None:
    import threading

    release = threading.Event()

    def stuck(name: str, observations: list[Any], config: Any) -> list[Any]:
        release.wait(30)
        return run_attacks(name, observations, config)

    strategy = _audited(setup, small_semsim, audit=_audit(timeout=0.5),
                        executor=ThreadExecutor(attack_fn=stuck))
    try:
        _run(strategy, setup, rounds=1)
    finally:
        release.set()
    client = strategy.report.rounds[0].clients[0]
    assert client.status == "failed" and "timeout" in client.reason


# ------------------------------------------------------------------ composing with Flower's DP wrappers


def _update_norms(attack: SpyAttack) -> list[float]:
    """The L2 norm of each observed update, as the attack was given it (gradient x lr = delta)."""
    norms = []
    for observation in (o for call in attack.calls for o in call):
        delta = torch.cat([t.flatten() for t in observation.target.values()]) * observation.lr
        norms.append(float(delta.norm()))
    return norms


CLIP = 0.05


def test_dp_wrapper_order_decides_what_the_audit_sees(setup, small_semsim) -> None:
    """Audit outside server-side DP: the audit attacks the raw updates the server received (what an
    honest-but-curious server holds). Audit inside: it attacks the updates after DP clipped them."""
    outside = SpyAttack()
    strategy = _audited(setup, small_semsim, executor=InlineExecutor(attack_fn=outside),
                        inner=DifferentialPrivacyServerSideFixedClipping(_fedavg(), 0.0, CLIP, 2))
    _run(strategy, setup, rounds=1)
    assert min(_update_norms(outside)) > 2 * CLIP

    inside = SpyAttack()
    inner = _audited(setup, small_semsim, executor=InlineExecutor(attack_fn=inside))
    wrapped = DifferentialPrivacyServerSideFixedClipping(inner, 0.0, CLIP, 2)
    _run(wrapped, setup, rounds=1)
    inner.finish()
    assert max(_update_norms(inside)) <= CLIP * 1.001
    assert [c.status for c in inner.report.rounds[0].clients] == ["ok", "ok"]


def test_client_side_dp_clipping_is_what_the_audit_sees(setup, small_semsim) -> None:
    """Client-side clipping happens before the update leaves the client: the audit sees it clipped."""
    attack = SpyAttack()
    strategy = _audited(setup, small_semsim, executor=InlineExecutor(attack_fn=attack),
                        inner=DifferentialPrivacyClientSideFixedClipping(_fedavg(), 0.0, CLIP, 2))
    _run(strategy, setup, rounds=1, mods=(fixedclipping_mod,))
    norms = _update_norms(attack)
    assert len(norms) == 2 and max(norms) <= CLIP * 1.001


