"""Checkpoints round-trip, and damaged or foreign files are refused with a message saying why."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from semsim_audit.semsim import SemSim
from semsim_audit.semsim.checkpoint import load_checkpoint, save_checkpoint, weights_sha256, write_safetensors
from semsim_audit.semsim.model import SemSimNet


def _rewrite_metadata(source: Path, target: Path, **changes: object) -> None:
    blob = source.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + size])
    metadata = json.loads(header["__metadata__"]["semsim"])
    metadata.update(changes)
    from safetensors.torch import load
    write_safetensors(target, load(blob), metadata)


def test_round_trip_keeps_weights_and_provenance(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = SemSimNet(width=4).eval()
    path = tmp_path / "model.safetensors"
    saved = save_checkpoint(path, model, threshold=0.42, annotator="human", data="unit test",
                            training={"epochs": 3})
    loaded, metadata = load_checkpoint(path)
    images = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded(images), model(images))
    assert metadata == saved
    assert (metadata.annotator, metadata.threshold, metadata.width) == ("human", 0.42, 4)
    assert metadata.sha256 == weights_sha256(model.state_dict())
    info = SemSim.load(path).info
    for key in ("annotator", "threshold", "data", "version", "width", "sha256"):
        assert key in info


def test_float16_storage_halves_the_file_and_still_loads(tmp_path: Path) -> None:
    model = SemSimNet(width=4).eval()
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_checkpoint(full, model, threshold=0.3, annotator="proxy", data="t")
    save_checkpoint(half, model, threshold=0.3, annotator="proxy", data="t", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, metadata = load_checkpoint(half)
    assert metadata.dtype == "float16"
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(images), model(images), atol=1e-2)


def test_truncated_file_is_refused(random_checkpoint: Path, tmp_path: Path) -> None:
    blob = random_checkpoint.read_bytes()
    for keep, reason in ((4, "truncated"), (200, "truncated"), (len(blob) - 100, "corrupt or truncated")):
        cut = tmp_path / f"cut{keep}.safetensors"
        cut.write_bytes(blob[:keep])
        with pytest.raises(ValueError, match=reason):
            load_checkpoint(cut)


def test_flipped_weight_bytes_fail_the_sha256_check(random_checkpoint: Path, tmp_path: Path) -> None:
    blob = bytearray(random_checkpoint.read_bytes())
    blob[-10] ^= 0xFF  # inside the tensor data: safetensors itself cannot notice
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="sha256"):
        load_checkpoint(damaged)


def test_garbled_header_is_refused(random_checkpoint: Path, tmp_path: Path) -> None:
    blob = bytearray(random_checkpoint.read_bytes())
    blob[12:20] = b"\xff" * 8
    damaged = tmp_path / "garbled.safetensors"
    damaged.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(damaged)


def test_wrong_architecture_is_refused(random_checkpoint: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "vit.safetensors"
    _rewrite_metadata(random_checkpoint, foreign, architecture="vit-b16")
    with pytest.raises(ValueError, match="architecture 'vit-b16' is not supported"):
        load_checkpoint(foreign)


def test_weights_of_another_width_are_refused(random_checkpoint: Path, tmp_path: Path) -> None:
    lying = tmp_path / "lying.safetensors"
    _rewrite_metadata(random_checkpoint, lying, width=8, embedding_dim=64)
    with pytest.raises(ValueError, match="do not fit resnet18-cifar width 8"):
        load_checkpoint(lying)


def test_bad_metadata_field_is_named(random_checkpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    _rewrite_metadata(random_checkpoint, bad, annotator="crowd")
    with pytest.raises(ValueError, match="annotator"):
        load_checkpoint(bad)


def test_plain_safetensors_file_is_not_a_semsim_checkpoint(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file(SemSimNet(width=4).state_dict(), str(plain))
    with pytest.raises(ValueError, match="not a SemSim file"):
        load_checkpoint(plain)


class _Bomb:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_a_pickle_is_never_unpickled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(pickle.dumps({"weights": _Bomb()}))
    with pytest.raises(ValueError):
        load_checkpoint(pickled)
    assert "unpickled!" not in capsys.readouterr().out


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        SemSim.load(tmp_path / "nowhere.safetensors")


@pytest.mark.parametrize("head", ["stats", "stats-layout", "stats-early"])
def test_a_stats_head_checkpoint_round_trips_with_its_standardisation(tmp_path: Path, head: str) -> None:
    torch.manual_seed(2)
    model = SemSimNet(width=4, head=head).eval()  # type: ignore[arg-type]
    model.feature_mean.normal_()
    model.feature_std.uniform_(0.5, 2.0)
    path = tmp_path / "stats.safetensors"
    save_checkpoint(path, model, threshold=0.3, annotator="human", data="unit test")
    loaded, metadata = load_checkpoint(path)
    assert (metadata.head, metadata.embedding_dim) == (head, 64)
    images = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded(images), model(images))
    assert torch.equal(loaded.feature_std, model.feature_std)


def test_a_checkpoint_from_before_the_head_field_loads_as_the_released_model(
        random_checkpoint: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.safetensors"
    blob = random_checkpoint.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    metadata = json.loads(json.loads(blob[8:8 + size])["__metadata__"]["semsim"])
    del metadata["head"]
    from safetensors.torch import load
    write_safetensors(old, load(blob), metadata)
    model, loaded = load_checkpoint(old)
    assert loaded.head == "none" and model.head_kind == "none" and model.embedding_dim == 32


def test_a_head_the_weights_lack_is_refused(random_checkpoint: Path, tmp_path: Path) -> None:
    lying = tmp_path / "headless.safetensors"
    _rewrite_metadata(random_checkpoint, lying, head="stats", embedding_dim=64)
    with pytest.raises(ValueError, match="head 'stats'.*missing"):
        load_checkpoint(lying)
    unknown = tmp_path / "unknown.safetensors"
    _rewrite_metadata(random_checkpoint, unknown, head="transformer")
    with pytest.raises(ValueError, match="head"):
        load_checkpoint(unknown)
