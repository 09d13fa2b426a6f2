"""Each defense mod does exactly what it says to the update, and leaves buffers alone."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

from semsim_audit.strategies.defenses import (
    DEFENSE_KEYS,
    DEFENSES,
    _rng,
    clip_mod,
    defend_update,
    defense_mods,
    dp_fixed_clipping_mod,
    dp_fixed_strategy,
    gaussian_mod,
    is_parameter,
    laplacian_mod,
    localdp_mod,
    noise_mod,
    prune_mod,
    prune_update,
    quantize_mod,
)

RNG = np.random.default_rng(0)
GLOBAL = {
    "conv.weight": RNG.normal(size=(8, 3, 3, 3)).astype(np.float32),
    "conv.bias": RNG.normal(size=(8,)).astype(np.float32),
    "bn.running_mean": np.zeros(8, dtype=np.float32),
    "bn.running_var": np.ones(8, dtype=np.float32),
    "bn.num_batches_tracked": np.array(3, dtype=np.int64),
    "fc.weight": RNG.normal(size=(10, 200)).astype(np.float32),
}
STEP = {k: (RNG.normal(size=v.shape) * 0.1).astype(v.dtype) if is_parameter(k, v) else v
        for k, v in GLOBAL.items()}
CLIENT = {
    **{k: (GLOBAL[k] + STEP[k]).astype(np.float32) for k in GLOBAL if is_parameter(k, GLOBAL[k])},
    "bn.running_mean": np.full(8, 0.5, dtype=np.float32),
    "bn.running_var": np.full(8, 2.0, dtype=np.float32),
    "bn.num_batches_tracked": np.array(4, dtype=np.int64),
}
PARAMS = [k for k, v in GLOBAL.items() if is_parameter(k, v)]


def _train_message(config: dict | None = None) -> Message:
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()}),
        "config": ConfigRecord(config or {"lr": 0.1}),
    })
    metadata = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=3600.0, message_type="train")
    return Message(content=content, metadata=metadata)


def _client(msg: Message, context: Context) -> Message:
    """A stand-in ClientApp: returns the fixed client arrays and a metric record."""
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(CLIENT[k].copy()) for k in GLOBAL}),
        "metrics": MetricRecord({"num-examples": 4, "train_loss": 0.5}),
    })
    return Message(content, reply_to=msg)


def _context(**run_config: object) -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config=dict(run_config))


def _run(mods: list, config: dict | None = None, **run_config: object) -> Message:
    """Call the mods around the stand-in client exactly as ClientApp chains them."""
    call = _client
    for mod in reversed(mods):
        call = (lambda m, inner: lambda msg, ctx: m(msg, ctx, inner))(mod, call)
    return call(_train_message(config), _context(**run_config))


def _arrays(reply: Message) -> dict[str, np.ndarray]:
    assert not reply.has_error(), reply.error
    return {k: a.numpy() for k, a in reply.content["arrays"].items()}


def _update(reply: Message) -> dict[str, np.ndarray]:
    arrays = _arrays(reply)
    return {k: arrays[k].astype(np.float64) - GLOBAL[k].astype(np.float64) for k in PARAMS}


def _assert_buffers_untouched(reply: Message) -> None:
    arrays = _arrays(reply)
    for name in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        np.testing.assert_array_equal(arrays[name], CLIENT[name])
        assert arrays[name].dtype == CLIENT[name].dtype


def _true_update() -> dict[str, np.ndarray]:
    return {k: CLIENT[k].astype(np.float64) - GLOBAL[k].astype(np.float64) for k in PARAMS}


def test_buffers_are_detected_by_name_and_dtype() -> None:
    assert [k for k in GLOBAL if not is_parameter(k, GLOBAL[k])] == [
        "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]


@pytest.mark.parametrize("mod", defense_mods())
def test_mod_without_its_parameter_passes_through(mod) -> None:
    reply = _run([mod])
    for name, values in _arrays(reply).items():
        np.testing.assert_array_equal(values, CLIENT[name])
    assert set(reply.content["metrics"].keys()) == {"num-examples", "train_loss"}


@pytest.mark.parametrize(("name", "text"), [("prune", "0.5"), ("clip", "0.01"), ("noise", "0.1"),
                                            ("gaussian", "1e-2"), ("laplacian", "1e-2"),
                                            ("quantize", "sign"), ("localdp", "1.0")])
def test_each_defense_of_the_table_is_turned_on_by_its_key(name: str, text: str) -> None:
    # The sweep sets DEFENSES[name].key to the parsed strength; the mods must react to exactly that.
    defense = DEFENSES[name]
    reply = _run(defense_mods(), **{defense.key: defense.parse(text), "defense.seed": 0})
    assert any(not np.array_equal(values, CLIENT[key]) for key, values in _arrays(reply).items()
               if key in PARAMS), name
    assert set(DEFENSE_KEYS[name]) == {defense.key, *(f"defense.{name}.{o}" for o in defense.options)}


@pytest.mark.parametrize("share", [0.5, 0.7, 0.9, 0.99])
def test_prune_keeps_exactly_the_largest_share_per_layer(share: float) -> None:
    reply = _run([prune_mod], **{"defense.prune.share": share})
    true = _true_update()
    for name, delta in _update(reply).items():
        n = delta.size
        keep = n - math.floor(share * n + 1e-9)
        kept = np.flatnonzero(delta.reshape(-1))
        assert kept.size == keep, name
        magnitudes = np.abs(true[name].reshape(-1))
        # Every kept entry is at least as large as every pruned one, and is the client's exact value.
        assert magnitudes[kept].min() >= np.delete(magnitudes, kept).max()
        np.testing.assert_allclose(delta.reshape(-1)[kept], true[name].reshape(-1)[kept], atol=1e-6)
    _assert_buffers_untouched(reply)
    assert reply.content["metrics"]["defense.prune.share"] == share


def test_prune_count_is_exact_despite_round_off() -> None:
    # 0.29 * 100 is 28.999... in binary; 29 entries must go, 71 stay.
    update = {"w": np.arange(1, 101, dtype=np.float64)}
    assert np.count_nonzero(prune_update(update, 0.29)["w"]) == 71
    with pytest.raises(ValueError, match="prune share"):
        prune_update(update, 1.0)


def test_clip_bounds_the_norm_and_keeps_the_direction() -> None:
    true = _true_update()
    norm = math.sqrt(sum(float(np.sum(v**2)) for v in true.values()))
    reply = _run([clip_mod], **{"defense.clip.norm": norm / 4})
    clipped = _update(reply)
    clipped_norm = math.sqrt(sum(float(np.sum(v**2)) for v in clipped.values()))
    assert clipped_norm == pytest.approx(norm / 4, rel=1e-4)
    for name in PARAMS:
        np.testing.assert_allclose(clipped[name], true[name] / 4, atol=1e-6)
    assert reply.content["metrics"]["defense.clip.update_norm"] == pytest.approx(norm)
    _assert_buffers_untouched(reply)
    # A bound above the norm changes nothing.
    loose = _update(_run([clip_mod], **{"defense.clip.norm": norm * 2}))
    for name in PARAMS:
        np.testing.assert_allclose(loose[name], true[name], atol=1e-6)


def test_noise_has_std_sigma_times_norm() -> None:
    sigma, bound = 0.05, 0.5
    reply = _run([noise_mod], **{"defense.noise.sigma": sigma, "defense.noise.clip": bound,
                                 "defense.seed": 3})
    true = _true_update()
    norm = math.sqrt(sum(float(np.sum(v**2)) for v in true.values()))
    clipped = {k: v * min(1.0, bound / norm) for k, v in true.items()}
    residual = np.concatenate([(_update(reply)[k] - clipped[k]).reshape(-1) for k in PARAMS])
    # ~2,200 draws: the sample std is within 5% of the truth far beyond 3 standard errors.
    assert residual.std() == pytest.approx(sigma * bound, rel=0.05)
    assert abs(residual.mean()) < 4 * sigma * bound / math.sqrt(residual.size)
    metrics = reply.content["metrics"]
    assert metrics["defense.noise.sigma"] == sigma and metrics["defense.noise.norm"] == bound
    _assert_buffers_untouched(reply)


def test_noise_without_clip_is_relative_to_the_update_norm() -> None:
    reply = _run([noise_mod], **{"defense.noise.sigma": 0.01, "defense.seed": 1})
    true = _true_update()
    norm = math.sqrt(sum(float(np.sum(v**2)) for v in true.values()))
    residual = np.concatenate([(_update(reply)[k] - true[k]).reshape(-1) for k in PARAMS])
    assert residual.std() == pytest.approx(0.01 * norm, rel=0.05)
    assert reply.content["metrics"]["defense.noise.norm"] == pytest.approx(norm)


@pytest.mark.parametrize(("mod", "name"), [(gaussian_mod, "gaussian"), (laplacian_mod, "laplacian")])
def test_variance_noise_is_absolute_with_the_declared_variance(mod, name: str) -> None:
    # DLG's section-5 defense: noise of a given variance on every entry, whatever the update's norm.
    variance = 1e-3
    reply = _run([mod], **{f"defense.{name}.variance": variance, "defense.seed": 5})
    residual = np.concatenate([(_update(reply)[k] - _true_update()[k]).reshape(-1) for k in PARAMS])
    assert residual.var() == pytest.approx(variance, rel=0.1)
    # Excess kurtosis tells the two apart: 0 for a Gaussian, 3 for a Laplacian (~2,200 draws).
    kurtosis = float(np.mean(residual**4) / residual.var() ** 2 - 3.0)
    assert (kurtosis > 1.5) == (name == "laplacian"), kurtosis
    assert reply.content["metrics"][f"defense.{name}.variance"] == variance
    _assert_buffers_untouched(reply)


@pytest.mark.parametrize("run_config", [
    {"defense.prune.share": 0.9},
    {"defense.noise.sigma": 0.05, "defense.noise.clip": 0.5},
    {"defense.gaussian.variance": 1e-4},
    {"defense.laplacian.variance": 1e-4},
    {"defense.quantize.bits": 4},
    {"defense.clip.norm": 0.1},
])
def test_defend_update_is_what_the_mods_send(run_config: dict) -> None:
    # The attack-only sweep defends gradients computed outside Flower with these same transforms.
    seed = {"defense.seed": 2, **run_config}
    sent = _update(_run(defense_mods(), **seed))
    # The mods seed their generator with the node and the global weights; replay the same draw.
    rng = _rng(_context(**seed), ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()}))
    defended = defend_update(_true_update(), seed, rng)
    for name in PARAMS:
        # The reply holds float32 weights: the update read back from them carries their round-off.
        np.testing.assert_allclose(defended[name], sent[name], atol=1e-5)


def test_defend_update_refuses_flower_only_defenses() -> None:
    with pytest.raises(ValueError, match="only inside a Flower run"):
        defend_update(_true_update(), {"defense.localdp.epsilon": 1.0}, np.random.default_rng(0))


def test_noise_is_reproducible_with_a_seed() -> None:
    config = {"defense.noise.sigma": 0.1, "defense.seed": 5}
    first, second = _arrays(_run([noise_mod], **config)), _arrays(_run([noise_mod], **config))
    other = _arrays(_run([noise_mod], **{**config, "defense.seed": 6}))
    np.testing.assert_array_equal(first["fc.weight"], second["fc.weight"])
    assert not np.array_equal(first["fc.weight"], other["fc.weight"])


def test_sign_quantisation_gives_two_levels_per_layer() -> None:
    reply = _run([quantize_mod], **{"defense.quantize.bits": "sign"})
    true = _true_update()
    for name, delta in _update(reply).items():
        scale = np.abs(true[name]).mean()
        np.testing.assert_allclose(np.abs(delta), scale, rtol=1e-4)
        np.testing.assert_array_equal(np.sign(delta), np.sign(true[name]))
    _assert_buffers_untouched(reply)


@pytest.mark.parametrize("bits", [1, 2, 4, "3"])
def test_stochastic_quantisation_gives_the_declared_levels(bits: int | str) -> None:
    b = int(bits)
    reply = _run([quantize_mod], **{"defense.quantize.bits": bits, "defense.seed": 0})
    true = _true_update()
    for name, delta in _update(reply).items():
        low, high = true[name].min(), true[name].max()
        levels = low + np.arange(2**b) * (high - low) / (2**b - 1)
        distance = np.abs(delta.reshape(-1, 1) - levels.reshape(1, -1)).min(axis=1)
        assert distance.max() < 1e-5 * max(1.0, high - low), name
        # Each value is rounded to one of its two neighbouring levels.
        assert np.all(np.abs(delta - true[name]) <= (high - low) / (2**b - 1) + 1e-5)
    assert reply.content["metrics"]["defense.quantize.bits"] == b


def test_stochastic_quantisation_is_unbiased() -> None:
    true = _true_update()["fc.weight"]
    draws = np.mean([_update(_run([quantize_mod], **{"defense.quantize.bits": 2,
                                                     "defense.seed": s}))["fc.weight"]
                     for s in range(200)], axis=0)
    step = (true.max() - true.min()) / 3
    # The std of one rounding is at most step/2; the mean of 200 is within 5 of its std errors.
    assert np.abs(draws - true).max() < 5 * (step / 2) / math.sqrt(200)


def test_bad_parameter_gives_an_error_reply_naming_the_mod() -> None:
    reply = _run([prune_mod], **{"defense.prune.share": 1.5})
    assert reply.has_error() and "prune_mod" in reply.error.reason
    reply = _run([quantize_mod], **{"defense.quantize.bits": "three"})
    assert reply.has_error() and "quantize" in reply.error.reason


def test_mods_compose_in_list_order() -> None:
    # The reply passes the mods from the last to the first: prune first, then clip.
    reply = _run([clip_mod, prune_mod], **{"defense.prune.share": 0.9, "defense.clip.norm": 0.05})
    expected = prune_update(_true_update(), 0.9)
    norm = math.sqrt(sum(float(np.sum(v**2)) for v in expected.values()))
    got = _update(reply)
    for name in PARAMS:
        np.testing.assert_allclose(got[name], expected[name] * min(1.0, 0.05 / norm), atol=1e-6)
    metrics = reply.content["metrics"]
    assert "defense.prune.share" in metrics and "defense.clip.norm" in metrics


def test_evaluate_messages_pass_through() -> None:
    msg = _train_message()
    msg.metadata.message_type = "evaluate"
    reply = prune_mod(msg, _context(**{"defense.prune.share": 0.9}), _client)
    np.testing.assert_array_equal(_arrays(reply)["fc.weight"], CLIENT["fc.weight"])


def test_flower_fixed_clipping_runs_on_parameters_only() -> None:
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    reply = _run([dp_fixed_clipping_mod], config={"lr": 0.1, KEY_CLIPPING_NORM: 0.1},
                 **{"defense.dp-fixed.noise": 1.0})
    clipped = _update(reply)
    norm = math.sqrt(sum(float(np.sum(v**2)) for v in clipped.values()))
    assert norm == pytest.approx(0.1, rel=1e-4)
    _assert_buffers_untouched(reply)
    assert list(reply.content["arrays"].keys()) == list(GLOBAL)


def test_flower_local_dp_from_the_run_config() -> None:
    config = {"defense.localdp.epsilon": 10.0, "defense.localdp.clip": 0.1,
              "defense.localdp.sensitivity": 0.01, "defense.localdp.delta": 1e-5}
    np.random.seed(0)  # LocalDpMod draws from numpy's global generator
    reply = _run([localdp_mod], **config)
    residual = np.concatenate([v.reshape(-1) for v in _update(reply).values()])
    std = 0.01 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 10.0
    # The clipped update (norm 0.1 over ~2,200 entries) is small beside the noise.
    assert residual.std() == pytest.approx(std, rel=0.1)
    _assert_buffers_untouched(reply)
    bad = _run([localdp_mod], **{"defense.localdp.epsilon": 1.0, "defense.localdp.clip": -1.0})
    assert bad.has_error() and "clipping norm" in bad.error.reason


def test_dp_fixed_strategy_wraps_only_when_asked() -> None:
    inner = FedAvg()
    assert dp_fixed_strategy(inner, {}, 2) is inner
    wrapped = dp_fixed_strategy(inner, {"defense.dp-fixed.noise": 0.5, "defense.dp-fixed.clip": 2.0}, 2)
    assert isinstance(wrapped, DifferentialPrivacyClientSideFixedClipping)
    assert wrapped.noise_multiplier == 0.5 and wrapped.clipping_norm == 2.0
