"""Fixtures for the CLI tests: the hand-made run folder of the view tests, tiny dataset files."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sample_run_module = _load(Path(__file__).parents[1] / "views" / "sample_run.py", "sample_run")
dataset_files = _load(Path(__file__).parents[1] / "data" / "dataset_files.py", "dataset_files")


@pytest.fixture
def sample_run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    sample_run_module.make_run(run_dir)
    return run_dir


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """Tiny files of every torchvision dataset the CLI reads, and a class folder under ``mine/``."""
    root = tmp_path / "data"
    dataset_files.write_cifar10(root)
    dataset_files.write_cifar100(root)
    dataset_files.write_mnist(root, "MNIST")
    dataset_files.write_mnist(root, "FashionMNIST", compressed=True)
    dataset_files.write_class_folder(root / "mine", per_class=4)
    return root
