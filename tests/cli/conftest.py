"""Fixtures for the CLI tests: the hand-made run folder of the view tests, tiny dataset files."""

from __future__ import annotations

from pathlib import Path

import pytest
from module_files import load_module  # tests/module_files.py

sample_run_module = load_module(Path(__file__).parents[1] / "views" / "sample_run.py", "sample_run")
dataset_files = load_module(Path(__file__).parents[1] / "data" / "dataset_files.py", "dataset_files")


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
