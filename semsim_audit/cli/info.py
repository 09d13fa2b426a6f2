"""`semsim-audit info`: versions, the device that would be used, data and checkpoint locations."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info() -> None:
    """Show versions, the device an audit would use, and where data and checkpoints are."""
    # torch loads here, not when the CLI starts: every other command's `--help` stays fast.
    import torch

    from semsim_audit.core import select_device
    from semsim_audit.data import DATA_ROOT_ENV, DATASETS, DEFAULT_DATA_ROOT, data_root

    table = Table(title="semsim-audit", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for name in ("semsim-audit", "torch", "torchvision", "flwr", "scikit-image", "pydantic"):
        table.add_row(name, _version(name))
    device = select_device("auto")
    cuda = torch.cuda.get_device_name(device) if device.type == "cuda" else "not available"
    table.add_row("device (auto)", str(device))
    table.add_row("CUDA", cuda)
    table.add_row("datasets", ", ".join(DATASETS))
    table.add_row("embedded data", "scikit-image photos and LFW subset (no download)")
    root = data_root()
    table.add_row("data root", f"{root} (${DATA_ROOT_ENV})" if root is not None else
                  f"{DEFAULT_DATA_ROOT} (torchvision's sets; set ${DATA_ROOT_ENV} or pass --data-root)")
    checkpoint_dir = Path(__file__).resolve().parent.parent / "semsim" / "checkpoints"
    table.add_row("SemSim checkpoints", str(checkpoint_dir))
    Console().print(table)
