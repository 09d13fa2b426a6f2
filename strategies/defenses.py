"""Defenses as Flower client mods: each one changes the update a client sends to the server.

A mod runs around the client's train function: it remembers the global arrays of the incoming
message, lets the client train, then replaces the reply's arrays by ``global + defended(update)``
where ``update = client - global``. So the server (the attacker of an audit) only ever sees the
defended update, and training pays the defense's accuracy cost.

Every mod reads its parameters from ``context.run_config`` and passes the message through untouched
when its parameter is absent, so one ClientApp carrying all of them (:func:`defense_mods`) serves a
whole sweep; the run config chooses the defense of each run:

================================  =======================================================================
run-config key                    meaning
================================  =======================================================================
``defense.prune.share``           prune_mod: share p in [0, 1) of each layer's update entries zeroed; the
                                  ``n - floor(p * n)`` largest magnitudes of every parameter array are kept
``defense.clip.norm``             clip_mod: the update's global L2 norm is scaled down to at most this
``defense.noise.sigma``           noise_mod: Gaussian noise of std ``sigma x norm`` added to every entry
``defense.noise.clip``            noise_mod: the update is first clipped to this L2 norm and ``norm`` is
                                  this bound; absent: no clipping and ``norm`` is the update's own L2 norm
``defense.gaussian.variance``     gaussian_mod: Gaussian noise of this variance added to every entry
                                  (absolute, not relative to the norm: DLG's section-5 defense)
``defense.laplacian.variance``    laplacian_mod: Laplacian noise of this variance (scale sqrt(v / 2))
``defense.quantize.bits``         quantize_mod: ``"sign"`` (each layer becomes
                                  ``sign(update) x mean|update|``) or an int b in [1, 16]: unbiased
                                  stochastic rounding of each layer onto ``2**b`` evenly spaced levels
                                  from the layer's minimum to its maximum
``defense.localdp.epsilon``       Flower's ``LocalDpMod`` with this epsilon (turns it on) ...
``defense.localdp.clip``          ... its clipping norm (default 1.0),
``defense.localdp.sensitivity``   ... its sensitivity (default: the clipping norm),
``defense.localdp.delta``         ... and its delta (default 1e-5)
``defense.dp-fixed.noise``        Flower's client-side fixed clipping DP: the noise multiplier of the server
                                  wrapper (see :func:`dp_fixed_strategy`); turns ``fixedclipping_mod`` on
``defense.dp-fixed.clip``         its clipping norm (default 1.0)
``defense.seed``                  seed of our random defenses (noise, stochastic quantisation), mixed with
                                  the node id and the global weights; absent: fresh randomness every call.
                                  LocalDpMod draws from numpy's global generator, which it does not set
================================  =======================================================================

Non-parameter arrays are left untouched by every defense: a BatchNorm buffer is not a gradient, and
noise or pruning on a running variance only corrupts the model. They are detected by name and type,
the two things an ArrayRecord keeps of a torch ``state_dict``: an array whose key ends in one of
:data:`BUFFER_SUFFIXES` (torch's BatchNorm buffer names) or whose dtype is not floating point.
Flower's own DP mods know nothing of buffers (and fail on the integer ``num_batches_tracked``), so
they run behind :func:`parameters_only`, which shows them the parameter arrays alone.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Error, Message, MessageType, MetricRecord
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy

__all__ = [
    "BUFFER_SUFFIXES", "DEFENSES", "Defense", "DEFENSE_KEYS", "Strength", "is_parameter", "update_norm",
    "clip_update", "noise_update", "prune_update", "quantize_update", "prune_mod", "clip_mod", "noise_mod",
    "gaussian_mod", "laplacian_mod", "defend_update", "quantize_mod",
    "localdp_mod", "dp_fixed_clipping_mod", "parameters_only", "defense_mods", "dp_fixed_strategy",
]

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

Strength = float | int | str | None


def _number(low: float, high: float | None = None, *, low_open: bool = False,
            high_open: bool = True) -> Callable[[str], float]:
    """A parser of one float within [low, high) (bounds open or closed as asked)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            bounds = f"{'(' if low_open else '['}{low:g}, {'inf' if high is None else f'{high:g}'}"
            bounds += ")" if high is None or high_open else "]"
            raise ValueError(f"{text!r} is not in {bounds}")
        return value

    return parse


def _bits_text(text: str) -> int | str:
    if text == "sign":
        return "sign"
    if text.isdigit() and 1 <= int(text) <= 16:
        return int(text)
    raise ValueError(f"{text!r} is neither 'sign' nor a bit count in 1..16")


@dataclass(frozen=True)
class Defense:
    """One defense: the run-config key that turns it on with its strength, its options, what it does.

    Option ``o`` of defense ``d`` is the run-config key ``defense.d.o``. Parsers read the text a
    user types (``--defense noise:0.1``) and raise ValueError naming the problem.
    """

    key: str | None
    parse: Callable[[str], Strength] | None
    options: Mapping[str, Callable[[str], Strength]] = field(default_factory=dict)
    meaning: str = ""


DEFENSES: dict[str, Defense] = {
    "none": Defense(None, None, meaning="no defense"),
    "noise": Defense("defense.noise.sigma", _number(0.0), {"clip": _number(0.0, low_open=True)},
                     "Gaussian noise, std sigma x norm (norm: noise.clip, else the update's own)"),
    "gaussian": Defense("defense.gaussian.variance", _number(0.0),
                        meaning="Gaussian noise of this variance on every entry (absolute, as in DLG)"),
    "laplacian": Defense("defense.laplacian.variance", _number(0.0),
                         meaning="Laplacian noise of this variance on every entry (absolute, as in DLG)"),
    "prune": Defense("defense.prune.share", _number(0.0, 1.0),
                     meaning="share of each layer's update zeroed (smallest magnitudes)"),
    "clip": Defense("defense.clip.norm", _number(0.0, low_open=True), meaning="L2 bound on the update"),
    "quantize": Defense("defense.quantize.bits", _bits_text,
                        meaning="'sign' or b-bit stochastic quantisation of the update"),
    "dp-fixed": Defense("defense.dp-fixed.noise", _number(0.0), {"clip": _number(0.0, low_open=True)},
                        "Flower client-side fixed clipping DP: noise multiplier (clip: dp-fixed.clip)"),
    "localdp": Defense("defense.localdp.epsilon", _number(0.0, low_open=True),
                       {"clip": _number(0.0, low_open=True), "sensitivity": _number(0.0),
                        "delta": _number(0.0, 1.0, low_open=True)},
                       "Flower LocalDpMod: epsilon (clip, sensitivity, delta: localdp.*)"),
}

# The run-config keys each defense reads; the first one turns the defense on.
DEFENSE_KEYS: dict[str, tuple[str, ...]] = {
    name: (defense.key, *(f"defense.{name}.{option}" for option in defense.options))
    for name, defense in DEFENSES.items() if defense.key is not None
}

Update = dict[str, np.ndarray]


def is_parameter(name: str, array: np.ndarray) -> bool:
    """True for a trainable parameter; False for BatchNorm buffers and integer state."""
    if not np.issubdtype(array.dtype, np.floating):
        return False
    return name.rsplit(".", 1)[-1] not in BUFFER_SUFFIXES


# --- pure transforms of an update (name -> float64 array) -----------------------------------------


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all entries of the update together."""
    return float(math.sqrt(sum(float(np.sum(np.square(v))) for v in update.values())))


def clip_update(update: Mapping[str, np.ndarray], max_norm: float) -> Update:
    """Scale the whole update down so that its L2 norm is at most ``max_norm``."""
    if not max_norm > 0:
        raise ValueError(f"clip norm must be > 0, got {max_norm}")
    norm = update_norm(update)
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: v * scale for k, v in update.items()}


def noise_update(update: Mapping[str, np.ndarray], sigma: float, norm: float,
                 rng: np.random.Generator, distribution: str = "gaussian") -> Update:
    """Add noise of std ``sigma * norm`` to every entry: Gaussian, or Laplacian of the same variance."""
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    std = sigma * norm
    if distribution == "laplacian":
        # Laplace(b) has variance 2 b^2.
        return {k: v + rng.laplace(0.0, std / math.sqrt(2.0), size=v.shape) for k, v in update.items()}
    if distribution != "gaussian":
        raise ValueError(f"noise distribution must be 'gaussian' or 'laplacian', got {distribution!r}")
    return {k: v + rng.normal(0.0, std, size=v.shape) for k, v in update.items()}


def prune_update(update: Mapping[str, np.ndarray], share: float) -> Update:
    """Zero the smallest-magnitude ``share`` of every array, keeping exactly ``n - floor(share * n)``."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"prune share must be in [0, 1), got {share}")
    pruned: Update = {}
    for name, values in update.items():
        flat = values.reshape(-1)
        # The epsilon absorbs binary round-off (0.29 * 100 = 28.999...), so the count is what p says.
        keep = flat.size - math.floor(share * flat.size + 1e-9)
        out = np.zeros_like(flat)
        if keep > 0:
            # argpartition keeps exactly `keep` entries even when magnitudes tie.
            top = np.argpartition(np.abs(flat), flat.size - keep)[flat.size - keep:]
            out[top] = flat[top]
        pruned[name] = out.reshape(values.shape)
    return pruned


def quantize_update(update: Mapping[str, np.ndarray], bits: int | str,
                    rng: np.random.Generator) -> Update:
    """Sign quantisation (``bits="sign"``) or unbiased stochastic b-bit quantisation, per array."""
    quantized: Update = {}
    if bits == "sign":
        for name, values in update.items():
            # Scaled sign (as in signSGD with a magnitude): keeps the layer's L1 mass so training moves.
            scale = float(np.mean(np.abs(values))) if values.size else 0.0
            quantized[name] = np.sign(values) * scale
        return quantized
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"quantize bits must be 'sign' or an int in [1, 16], got {bits!r}")
    steps = 2**bits - 1
    for name, values in update.items():
        if values.size == 0:
            quantized[name] = values.copy()
            continue
        low, high = float(values.min()), float(values.max())
        if high == low:
            quantized[name] = values.copy()
            continue
        position = (values - low) / (high - low) * steps
        floor = np.floor(position)
        # Round up with probability equal to the distance from the lower level: E[result] = values.
        level = floor + (rng.random(values.shape) < (position - floor))
        quantized[name] = low + np.minimum(level, steps) * (high - low) / steps
    return quantized


# --- mod machinery ---------------------------------------------------------------------------------


def _is_train(msg: Message) -> bool:
    return msg.metadata.message_type.split(".", 1)[0] == MessageType.TRAIN


def _error(msg: Message, reason: str) -> Message:
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def _global_record(msg: Message) -> tuple[str, ArrayRecord] | None:
    records = msg.content.array_records
    return next(iter(records.items())) if len(records) == 1 else None


def _reply_record(reply: Message, keys: list[str]) -> tuple[str, ArrayRecord] | None:
    """The reply's ArrayRecord holding the model: the one with the global record's keys."""
    matches = [(k, r) for k, r in reply.content.array_records.items() if list(r.keys()) == keys]
    return matches[0] if len(matches) == 1 else None


def _rng(context: Context, global_record: ArrayRecord) -> np.random.Generator:
    """Seeded by defense.seed, the node and the global weights: reproducible, different per round."""
    seed = context.run_config.get("defense.seed")
    if seed is None:
        return np.random.default_rng()
    digest = 0
    for array in global_record.values():
        digest = zlib.crc32(array.numpy().tobytes(), digest)
    return np.random.default_rng([int(seed), int(context.node_id) & 0xFFFFFFFF, digest])


def _add_metrics(reply: Message, metrics: Mapping[str, float]) -> None:
    records = reply.content.metric_records
    if records:
        record = next(iter(records.values()))
        for key, value in metrics.items():
            record[key] = float(value)
    else:
        reply.content["metrics"] = MetricRecord({k: float(v) for k, v in metrics.items()})


Transform = Callable[[Update, Context, np.random.Generator], tuple[Update, dict[str, float]]]


def _update_mod(name: str, key: str, msg: Message, context: Context, call_next: ClientAppCallable,
                transform: Transform) -> Message:
    """Run the client, then replace its parameter arrays by global + transform(update)."""
    if not _is_train(msg) or context.run_config.get(key) is None:
        return call_next(msg, context)
    found = _global_record(msg)
    if found is None:
        return _error(msg, f"{name} expects exactly one ArrayRecord in the train message")
    _, global_record = found
    global_arrays = {k: a.numpy() for k, a in global_record.items()}
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    target = _reply_record(reply, list(global_arrays))
    if target is None:
        return _error(msg, f"{name} expects one ArrayRecord in the reply with the keys it received")
    reply_key, reply_record = target
    client_arrays = {k: a.numpy() for k, a in reply_record.items()}
    params = [k for k, v in global_arrays.items() if is_parameter(k, v)]
    update = {k: client_arrays[k].astype(np.float64) - global_arrays[k].astype(np.float64)
              for k in params}
    try:
        defended, metrics = transform(update, context, _rng(context, global_record))
    except ValueError as exc:
        return _error(msg, f"{name}: {exc}")
    arrays = {}
    for k, original in client_arrays.items():
        if k in defended:
            new = global_arrays[k].astype(np.float64) + defended[k]
            arrays[k] = Array(np.ascontiguousarray(new.astype(original.dtype)))
        else:
            arrays[k] = reply_record[k]
    reply.content[reply_key] = ArrayRecord(arrays)
    _add_metrics(reply, metrics)
    return reply


def _float(context: Context, key: str) -> float:
    value = context.run_config[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"run config {key} must be a number, got {value!r}")
    return float(value)


def prune_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Per-layer magnitude pruning of the update (``defense.prune.share``)."""

    def transform(update: Update, ctx: Context, rng: np.random.Generator) -> tuple[Update, dict]:
        share = _float(ctx, "defense.prune.share")
        return prune_update(update, share), {"defense.prune.share": share}

    return _update_mod("prune_mod", "defense.prune.share", msg, context, call_next, transform)


def clip_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip the update's L2 norm to ``defense.clip.norm``; reports the norm before clipping."""

    def transform(update: Update, ctx: Context, rng: np.random.Generator) -> tuple[Update, dict]:
        bound = _float(ctx, "defense.clip.norm")
        norm = update_norm(update)
        return clip_update(update, bound), {"defense.clip.norm": bound, "defense.clip.update_norm": norm}

    return _update_mod("clip_mod", "defense.clip.norm", msg, context, call_next, transform)


def noise_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip the update (``defense.noise.clip``) and add Gaussian noise of std sigma x norm."""

    def transform(update: Update, ctx: Context, rng: np.random.Generator) -> tuple[Update, dict]:
        sigma = _float(ctx, "defense.noise.sigma")
        if ctx.run_config.get("defense.noise.clip") is None:
            norm = update_norm(update)
        else:
            norm = _float(ctx, "defense.noise.clip")
            update = clip_update(update, norm)
        return noise_update(update, sigma, norm, rng), {"defense.noise.sigma": sigma,
                                                         "defense.noise.norm": norm}

    return _update_mod("noise_mod", "defense.noise.sigma", msg, context, call_next, transform)


def _variance_noise_mod(distribution: str) -> Mod:
    key = f"defense.{distribution}.variance"

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        def transform(update: Update, ctx: Context, rng: np.random.Generator) -> tuple[Update, dict]:
            variance = _float(ctx, key)
            if variance < 0:
                raise ValueError(f"{key} must be >= 0, got {variance}")
            return noise_update(update, math.sqrt(variance), 1.0, rng, distribution), {key: variance}

        return _update_mod(f"{distribution}_mod", key, msg, context, call_next, transform)

    mod.__name__ = f"{distribution}_mod"
    mod.__doc__ = f"Add {distribution.capitalize()} noise of variance ``{key}`` to every update entry."
    return mod


gaussian_mod = _variance_noise_mod("gaussian")
laplacian_mod = _variance_noise_mod("laplacian")


def defend_update(update: Mapping[str, np.ndarray], run_config: Mapping[str, Any],
                  rng: np.random.Generator) -> Update:
    """The update as :func:`defense_mods` would send it, for an update computed outside Flower.

    The same transforms in the mods' order (prune, clip, noise, gaussian, laplacian, quantize), each
    on when its key is in ``run_config``. Flower's own DP mods (``localdp``, ``dp-fixed``) need a
    Flower run: asking for them raises ValueError, as does a bad value.
    """
    flower_only = [k for k in (*DEFENSE_KEYS["localdp"], *DEFENSE_KEYS["dp-fixed"]) if k in run_config]
    if flower_only:
        raise ValueError(f"{flower_only[0]}: Flower's DP mods run only inside a Flower run")
    defended: Update = {k: np.asarray(v, dtype=np.float64) for k, v in update.items()}
    config = run_config
    if config.get("defense.prune.share") is not None:
        defended = prune_update(defended, float(config["defense.prune.share"]))
    if config.get("defense.clip.norm") is not None:
        defended = clip_update(defended, float(config["defense.clip.norm"]))
    if config.get("defense.noise.sigma") is not None:
        if config.get("defense.noise.clip") is None:
            norm = update_norm(defended)
        else:
            norm = float(config["defense.noise.clip"])
            defended = clip_update(defended, norm)
        defended = noise_update(defended, float(config["defense.noise.sigma"]), norm, rng)
    for distribution in ("gaussian", "laplacian"):
        variance = config.get(f"defense.{distribution}.variance")
        if variance is not None:
            if float(variance) < 0:
                raise ValueError(f"defense.{distribution}.variance must be >= 0, got {variance}")
            defended = noise_update(defended, math.sqrt(float(variance)), 1.0, rng, distribution)
    if config.get("defense.quantize.bits") is not None:
        defended = quantize_update(defended, _bits(config["defense.quantize.bits"]), rng)
    return defended


def _bits(value: Any) -> int | str:
    """Run-config bits: "sign", an int, or an int written as a string ("4") from the command line."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def quantize_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Sign or b-bit stochastic quantisation of the update (``defense.quantize.bits``)."""

    def transform(update: Update, ctx: Context, rng: np.random.Generator) -> tuple[Update, dict]:
        bits = _bits(ctx.run_config["defense.quantize.bits"])
        # Metrics are numbers: sign quantisation is reported as 1 bit with sign=1.
        metrics = {"defense.quantize.bits": 1 if bits == "sign" else bits,
                   "defense.quantize.sign": float(bits == "sign")}
        return quantize_update(update, bits, rng), metrics

    return _update_mod("quantize_mod", "defense.quantize.bits", msg, context, call_next, transform)


def parameters_only(mod: Mod) -> Mod:
    """Wrap a mod so that it sees (and changes) only the parameter arrays, never the buffers.

    The wrapped mod gets the train message and the reply with the BatchNorm buffers taken out; the
    client still trains on the full arrays, and the buffers go back into the reply unchanged.
    """

    def wrapped(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        found = _global_record(msg) if _is_train(msg) else None
        if found is None:
            return mod(msg, context, call_next)
        record_key, global_record = found
        params = [k for k, a in global_record.items() if is_parameter(k, a.numpy())]
        if len(params) == len(global_record):
            return mod(msg, context, call_next)
        keys = list(global_record.keys())
        buffers: dict[str, Array] = {}

        def inner(message: Message, ctx: Context) -> Message:
            message.content[record_key] = global_record  # the client trains on the full model
            reply = call_next(message, ctx)
            target = None if reply.has_error() else _reply_record(reply, keys)
            if target is not None:
                reply_key, reply_record = target
                buffers.update({k: reply_record[k] for k in keys if k not in params})
                reply.content[reply_key] = ArrayRecord({k: reply_record[k] for k in params})
            return reply

        msg.content[record_key] = ArrayRecord({k: global_record[k] for k in params})
        try:
            out = mod(msg, context, inner)
        finally:
            msg.content[record_key] = global_record
        if out.has_error() or not buffers:
            return out
        target = _reply_record(out, params)
        if target is None:
            return out
        reply_key, reply_record = target
        out.content[reply_key] = ArrayRecord(
            {k: reply_record[k] if k in params else buffers[k] for k in keys})
        return out

    wrapped.__name__ = f"parameters_only({getattr(mod, '__name__', type(mod).__name__)})"
    return wrapped


_flower_fixed_clipping = parameters_only(fixedclipping_mod)


def dp_fixed_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod``, on when ``defense.dp-fixed.noise`` is set (server: the wrapper)."""
    if context.run_config.get("defense.dp-fixed.noise") is None:
        return call_next(msg, context)
    return _flower_fixed_clipping(msg, context, call_next)


def localdp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``LocalDpMod`` built from ``defense.localdp.*``; passes through when epsilon is absent."""
    config = context.run_config
    if config.get("defense.localdp.epsilon") is None:
        return call_next(msg, context)
    try:
        clip = _float(context, "defense.localdp.clip") if "defense.localdp.clip" in config else 1.0
        sensitivity = (_float(context, "defense.localdp.sensitivity")
                       if "defense.localdp.sensitivity" in config else clip)
        delta = _float(context, "defense.localdp.delta") if "defense.localdp.delta" in config else 1e-5
        flower_mod = LocalDpMod(clip, sensitivity, _float(context, "defense.localdp.epsilon"), delta)
    except ValueError as exc:
        return _error(msg, f"localdp_mod: {exc}")
    return parameters_only(flower_mod)(msg, context, call_next)


def defense_mods() -> list[Mod]:
    """Every defense, in the order of a ClientApp's ``mods`` list.

    Flower runs the reply through the mods from the last to the first, so the update is defended by
    prune, then clip, then noise, gaussian and laplacian noise, then quantize, then LocalDpMod, then
    Flower's fixed clipping (which Flower asks to be the last to touch the arrays). Put an audit mod
    before these so it sees the defended update.
    """
    return [dp_fixed_clipping_mod, localdp_mod, quantize_mod, laplacian_mod, gaussian_mod, noise_mod,
            clip_mod, prune_mod]


def dp_fixed_strategy(strategy: Strategy, run_config: Mapping[str, Any],
                      num_sampled_clients: int) -> Strategy:
    """Wrap ``strategy`` in Flower's client-side fixed clipping DP when the run config asks for it."""
    noise = run_config.get("defense.dp-fixed.noise")
    if noise is None:
        return strategy
    clip = run_config.get("defense.dp-fixed.clip", 1.0)
    return DifferentialPrivacyClientSideFixedClipping(strategy, float(noise), float(clip),
                                                      num_sampled_clients)
