"""AuditedStrategy in process (no Ray): every step, and the invariants of DESIGN.md."""

from __future__ import annotations

import json
import logging
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from audit_apps import TemplateClient
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
from semsim_audit.strategies import AuditedFedAvg, AuditedStrategy, audit_mod, make_client_app
from semsim_audit.strategies.executors import InlineExecutor, ThreadExecutor
from semsim_audit.strategies.local import InProcessGrid as LocalGrid
from semsim_audit.strategies.protocol import CAPTURE_KEY, RECORD_KEY, SCORING_MESSAGE_TYPE

EXPORT = {"audit-export-originals": True}


def _audit(**fields: Any) -> AuditConfig:
    fields.setdefault("attack", "inverting-gradients")  # a couple of Adam steps: fast
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
    strategy = _audited(setup, small_semsim, audit=_audit(clients=[101]))
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


def test_clients_are_chosen_by_their_stable_key_not_by_node_id(setup, small_semsim) -> None:
    def audited_partitions(node_ids: list[int], seed: int) -> list[list[int]]:
        strategy = _audited(setup, small_semsim, audit=_audit(clients=1, seed=seed))
        random.seed(0)
        app = make_client_app(setup.model_fn, setup.load_partition)
        grid = LocalGrid(app, 2, EXPORT, node_ids=node_ids)
        partition = {node: int(c.node_config["partition-id"]) for node, c in grid.contexts.items()}
        strategy.start(grid=grid, initial_arrays=ArrayRecord(setup.model_fn().state_dict()), num_rounds=3,
                       train_config=ConfigRecord({"lr": 0.1}))
        for record in strategy.report.rounds:  # the report names each audit by the key too
            assert [c.client_key for c in record.clients] == [f"partition-{partition[c.node_id]}"
                                                              for c in record.clients]
        return [[partition[c.node_id] for c in r.clients] for r in strategy.report.rounds]

    first = audited_partitions([100, 101], seed=6)
    # Other node ids, in the other order (as another run of Flower's engine gets): the same partitions.
    assert audited_partitions([9003, 502], seed=6) == first
    assert all(len(picked) == 1 for picked in first)
    assert len({p for picked in first for p in picked}) == 2  # the seeded draw does vary by round


def test_stable_key_order_hands_the_inner_strategy_the_replies_in_partition_order(setup,
                                                                                   small_semsim) -> None:
    def seen_partitions(order: str, seed: int, audit: Any = None) -> list[int]:
        inner = SpyStrategy()
        strategy = _audited(setup, small_semsim, inner=inner, audit=audit or _audit(clients=2),
                            reply_order=order)
        app = make_client_app(setup.model_fn, setup.load_partition)
        grid = LocalGrid(app, 2, EXPORT, node_ids=[900, 100])
        partition = {node: int(c.node_config["partition-id"]) for node, c in grid.contexts.items()}
        random.seed(seed)  # FedAvg samples (and so orders) the nodes with the global `random`
        strategy.start(grid=grid, initial_arrays=ArrayRecord(setup.model_fn().state_dict()), num_rounds=1,
                       train_config=ConfigRecord({"lr": 0.1}))
        return [partition[reply.metadata.src_node_id] for reply in inner.seen]

    seeds = range(6)
    # As delivered, the replies come in either order; sorted by stable key, always in partition order,
    # also in a round that audits nobody (the clients report their key with every train reply).
    assert {tuple(seen_partitions("arrival", seed)) for seed in seeds} == {(0, 1), (1, 0)}
    assert all(seen_partitions("stable-key", seed) == [0, 1] for seed in seeds)
    assert all(seen_partitions("stable-key", seed, _audit(clients=2, every=[2])) == [0, 1] for seed in seeds)
    with pytest.raises(ValueError, match="reply_order must be"):
        _audited(setup, small_semsim, reply_order="random")


def test_named_node_ids_are_audited_when_sampled(setup, small_semsim) -> None:
    strategy = _audited(setup, small_semsim, audit=_audit(clients=[101]))
    grid = LocalGrid(make_client_app(setup.model_fn, setup.load_partition), 2, EXPORT)
    for server_round in (1, 2):
        messages = strategy.configure_train(server_round, ArrayRecord(setup.model_fn().state_dict()),
                                            ConfigRecord({"lr": 0.1}), grid)
        assert [m.metadata.dst_node_id for m in messages if m.content["config"].get(CAPTURE_KEY)] == [101]


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


def _carried_bytes(message: Message) -> bytes:
    """Every byte a message carries: its arrays and the bytes values of its config records."""
    chunks = [array.numpy().tobytes() for record in message.content.array_records.values()
              for array in record.values()]
    chunks += [value for record in message.content.config_records.values() for value in record.values()
               if isinstance(value, bytes)]
    return b"".join(chunks)


def test_originals_never_reach_the_server_the_inner_strategy_or_the_attack(setup, small_semsim) -> None:
    inner, attack = SpyStrategy(), SpyAttack()
    strategy = _audited(setup, small_semsim, inner=inner, executor=InlineExecutor(attack_fn=attack))
    _, grid = _run(strategy, setup, rounds=1, run_config={})
    # The clients sent their audit records and scores, and the audits were scored...
    assert sum(RECORD_KEY in reply.content for reply in grid.replies if reply.has_content()) == 2
    clients = strategy.report.rounds[0].clients
    assert all(c.status == "ok" and c.scored_on == "client" and c.scores for c in clients)
    # ...but no message the server received carries an original, in the model's space or in pixels,
    originals = [image for partition in setup.partitions for image, _ in partition]
    rows = [t.contiguous().numpy().tobytes()[:128] for image in originals
            for t in (image, setup.spec.denormalize(image).clamp(0, 1))]
    received = b"".join(_carried_bytes(reply) for reply in grid.replies if reply.has_content())
    assert received and not any(row in received for row in rows)
    # and once scored, the clients dropped them too.
    assert not [key for context in grid.contexts.values() for key in context.state.keys()]
    # the inner strategy saw replies without any audit record,
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


def test_the_originals_check_sees_originals_a_client_chose_to_export(setup, small_semsim) -> None:
    """The check above can fail: with the client's export opt-in, its exported originals show."""
    strategy = _audited(setup, small_semsim)
    _, grid = _run(strategy, setup, rounds=1, run_config=EXPORT)
    rows = [setup.spec.denormalize(image).clamp(0, 1).contiguous().numpy().tobytes()[:128]
            for partition in setup.partitions for image, _ in partition]
    received = b"".join(_carried_bytes(reply) for reply in grid.replies if reply.has_content())
    assert any(row in received for row in rows)


def test_without_export_only_reconstructions_are_saved(setup, small_semsim, tmp_path: Path) -> None:
    strategy = _audited(setup, small_semsim, audit=_audit(out_dir=tmp_path, save_images=True))
    _run(strategy, setup, rounds=1, run_config={})
    scores = [s for c in strategy.report.rounds[0].clients for s in c.scores]
    assert scores and all(s.original_image is None for s in scores)
    assert all((tmp_path / s.reconstruction_image).is_file() for s in scores)
    assert not list(tmp_path.rglob("original-*.png"))


def test_client_without_audit_mod_is_skipped_naming_the_fix(setup, small_semsim) -> None:
    strategy = _audited(setup, small_semsim)
    random.seed(0)
    grid = LocalGrid(make_client_app(setup.model_fn, setup.load_partition, audit=False), 2)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(setup.model_fn().state_dict()), num_rounds=1,
                   train_config=ConfigRecord({"lr": 0.1}))
    clients = strategy.report.rounds[0].clients
    assert all(c.status == "skipped" and "AuditedClientApp" in c.reason for c in clients)


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




# ------------------------------------------------------------------ scoring on the client, two ways


def _template_run(strategy: Strategy, setup, kind: str, *, rounds: int = 2, epochs: int = 1) -> Any:
    random.seed(0)
    grid = LocalGrid(TemplateClient(setup).app(kind), 2, {"local-epochs": epochs})
    return strategy.start(grid=grid, initial_arrays=ArrayRecord(setup.model_fn().state_dict()),
                          num_rounds=rounds, train_config=ConfigRecord({"lr": 0.1}))


def test_mod_only_app_with_federated_evaluation_gets_every_round_scored(setup, small_semsim) -> None:
    inner = FedAvg(fraction_evaluate=1.0, min_evaluate_nodes=2)
    strategy = _audited(setup, small_semsim, inner=inner, audit=_audit(local_epochs=1, local_batch_size=2))
    _template_run(strategy, setup, "mod")
    for record in strategy.report.rounds:
        assert record.status == "ok" and record.leakage_rate is not None, record.clients
        for client in record.clients:
            assert client.scored_on == "client" and client.scores
            # The template's training (one epoch of 2 batches of 2), declared through the run config.
            assert (client.local_steps, client.batch_size, client.note) == (2, 2, None)


def test_mod_only_app_is_scored_on_its_next_train_message_and_the_last_round_names_the_fix(
        setup, small_semsim) -> None:
    strategy = _audited(setup, small_semsim, audit=_audit(local_epochs=1, local_batch_size=2))
    _template_run(strategy, setup, "mod")
    first, last = strategy.report.rounds
    assert first.status == "ok" and all(c.scored_on == "client" for c in first.clients)
    assert last.status == "failed"
    assert all("no scoring handler" in c.reason and "AuditedClientApp" in c.reason for c in last.clients)


# ------------------------------------------------------------------ attacking the training the client ran


def test_template_app_is_attacked_as_it_trained(setup, small_semsim) -> None:
    strategy = _audited(setup, small_semsim, audit=_audit(local_epochs=2, local_batch_size=2))
    _template_run(strategy, setup, "audited", rounds=1, epochs=2)
    for client in strategy.report.rounds[0].clients:
        assert (client.status, client.local_steps, client.batch_size, client.num_images) == ("ok", 4, 2, 4)
        assert client.note is None


def test_training_other_than_declared_is_attacked_as_observed_and_named(setup, small_semsim) -> None:
    strategy = _audited(setup, small_semsim, audit=_audit(local_epochs=1, local_batch_size=2))
    _template_run(strategy, setup, "audited", rounds=1, epochs=2)
    for client in strategy.report.rounds[0].clients:
        assert (client.status, client.local_steps) == ("ok", 4)
        assert "local steps: declared 2" in client.note and "observed 4" in client.note


def test_declared_training_mode_skips_a_mismatch_naming_it(setup, small_semsim) -> None:
    audit = _audit(local_epochs=1, local_batch_size=2, training="declared")
    strategy = _audited(setup, small_semsim, audit=audit)
    _template_run(strategy, setup, "audited", rounds=1, epochs=2)
    for client in strategy.report.rounds[0].clients:
        assert client.status == "skipped"
        assert "trained otherwise than declared" in client.reason and "observed 4" in client.reason


@pytest.mark.parametrize(("config", "audit", "expected"), [
    ({"local-steps": 3, "batch-size": 2}, {}, (3, 2, None)),  # declared in the train config, as observed
    ({}, {"local_steps": 3, "local_batch_size": 2}, (3, 2, None)),  # declared in the run config
    ({}, {"local_epochs": 1, "local_batch_size": 2}, (3, 2, None)),  # 1 epoch x ceil(5 / 2) batches
    ({}, {}, (3, 2, "declares no local steps and no batch size")),
    ({"local-steps": 1}, {}, (3, 2, "local steps: declared 1 (train config 'local-steps'), observed 3")),
    ({"local-steps": 1}, {"training": "declared"}, "declares no batch size"),
])
def test_attacked_training(config: dict, audit: dict, expected: Any) -> None:
    from semsim_audit.strategies.protocol import AuditRecord
    from semsim_audit.strategies.replies import attacked_training

    record = AuditRecord(1, local_steps=3, batch_size=2, distinct_images=5, kept_images=5,
                         scoring_handler=True)
    got = attacked_training(record, config, AuditConfig(**audit), num_examples=5)
    if isinstance(expected, str) or isinstance(expected[2], str):
        text = expected if isinstance(expected, str) else expected[2]
        assert text in (got if isinstance(got, str) else got[2])
    else:
        assert got == expected


# ------------------------------------------------------------------ Flower's conventions


def test_audit_numbers_reach_flowers_result_and_log(setup, small_semsim, caplog) -> None:
    strategy = _audited(setup, small_semsim)
    with caplog.at_level(logging.INFO, logger="flwr"):
        result, _ = _run(strategy, setup, rounds=2,
                         evaluate_fn=lambda r, arrays: MetricRecord({"accuracy": 0.5, "loss": 1.0}))
    for server_round in (1, 2):
        metrics = result.evaluate_metrics_serverapp[server_round]
        record = strategy.report.rounds[server_round - 1]
        assert metrics["accuracy"] == 0.5 and metrics["audit.clients"] == 2
        assert metrics["audit.leakage-rate"] == record.leakage_rate
        assert metrics["audit.leakage-low"] <= record.leakage_rate <= metrics["audit.leakage-high"]
        assert metrics["audit.mean-semsim"] == pytest.approx(record.mean_semsim)
    assert "Privacy audit, round 2: leakage rate" in caplog.text


def test_out_dir_alone_writes_the_run_folder(setup, small_semsim, tmp_path: Path) -> None:
    strategy = _audited(setup, small_semsim, audit=_audit(out_dir=tmp_path))
    _run(strategy, setup, rounds=1)
    for name in ("report.jsonl", "report.json", "rounds.csv", "report.html"):
        assert (tmp_path / name).is_file(), name


# ------------------------------------------------------------------ nothing the audit does stops the run


class RaisingSink:
    """A report sink that lost its connection."""

    def start(self, report: Any) -> None:
        raise ConnectionError("logger unreachable")

    def write_round(self, record: Any) -> None:
        raise ConnectionError("logger unreachable")

    def close(self, report: Any) -> None:
        raise ConnectionError("logger unreachable")


def test_a_raising_sink_is_recorded_and_the_run_goes_on(setup, small_semsim, tmp_path: Path) -> None:
    strategy = _audited(setup, small_semsim, audit=_audit(out_dir=tmp_path), sinks=[RaisingSink()])
    result, _ = _run(strategy, setup, rounds=2)
    assert len(result.train_metrics_clientapp) == 2
    assert [r.status for r in strategy.report.rounds] == ["ok", "ok"]
    assert all("RaisingSink" in r.errors[0] and "logger unreachable" in r.errors[0]
               for r in strategy.report.rounds)
    assert len(strategy.report.errors) == 2  # start and close
    assert [r.round for r in read_jsonl(tmp_path / "report.jsonl").rounds] == [1, 2]  # the journal still


def _on_scoring(transform):
    """An outermost client mod that handles scoring queries its own way."""

    def mod(msg: Message, context: Context, call_next: Any) -> Message:
        reply = call_next(msg, context) if msg.metadata.message_type != SCORING_MESSAGE_TYPE else None
        return reply if reply is not None else transform(msg, context, call_next)

    return mod


def test_a_hanging_scorer_times_out_and_the_run_goes_on(setup, small_semsim) -> None:
    release = threading.Event()

    def hang(msg: Message, context: Context, call_next: Any) -> Message:
        release.wait(30)
        return call_next(msg, context)

    strategy = _audited(setup, small_semsim, audit=_audit(scoring_timeout=0.5))
    app = make_client_app(setup.model_fn, setup.load_partition, mods=[_on_scoring(hang), audit_mod])
    try:
        result = strategy.start(grid=LocalGrid(app, 2), num_rounds=2, train_config=ConfigRecord({"lr": 0.1}),
                                initial_arrays=ArrayRecord(setup.model_fn().state_dict()))
    finally:
        release.set()
    assert len(result.train_metrics_clientapp) == 2
    for record in strategy.report.rounds:
        assert all(c.status == "failed" and "within 0.5 s" in c.reason for c in record.clients)


def test_a_garbage_scoring_answer_fails_the_audit_and_the_run_goes_on(setup, small_semsim) -> None:
    def garbage(msg: Message, context: Context, call_next: Any) -> Message:
        reply = call_next(msg, context)
        for key in [k for k in reply.content.keys() if k.startswith("audit.scores.")]:
            reply.content[key] = ConfigRecord({"audit-id": 1, "status": "ok", "scores": "{not json"})
        return reply

    strategy = _audited(setup, small_semsim)
    app = make_client_app(setup.model_fn, setup.load_partition, mods=[_on_scoring(garbage), audit_mod])
    result = strategy.start(grid=LocalGrid(app, 2), initial_arrays=ArrayRecord(setup.model_fn().state_dict()),
                            num_rounds=2, train_config=ConfigRecord({"lr": 0.1}))
    assert len(result.train_metrics_clientapp) == 2
    for record in strategy.report.rounds:
        assert all(c.status == "failed" and "malformed scoring answer" in c.reason for c in record.clients)


def test_a_failing_executor_is_recorded_and_the_run_goes_on(setup, small_semsim) -> None:
    class Broken(InlineExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("cluster gone")

    strategy = _audited(setup, small_semsim, executor=Broken())
    result, _ = _run(strategy, setup, rounds=2)
    assert len(result.train_metrics_clientapp) == 2
    for record in strategy.report.rounds:
        assert all(c.status == "failed" and "cluster gone" in c.reason for c in record.clients)
        assert any("cluster gone" in error for error in record.errors)
