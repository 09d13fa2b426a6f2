"""Fetching the released SemSim annotation archives from Google Drive (torchvision's helper).

Fails at once, with a clear message, when Google Drive cannot be reached, and never leaves a
half-written download: archives are fetched and unpacked in a scratch folder inside the target and
moved into place only when everything succeeded.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

from torchvision.datasets.utils import download_file_from_google_drive, extract_archive

__all__ = ["ARCHIVES", "download_annotations", "DownloadError"]

# Google Drive file ids of the public SemSim release (see facts/SEMSIM.md).
ARCHIVES: dict[str, str] = {
    "annotations": "1M0xnG8mHa2sZHXYrHYWlkeFLZ2XtR0Jm",
    "reconstructions": "1oVPBE0dyCf8eD1-JIu_PeLZ--_bxY6ZN",
    "cifar100-originals": "1TjRNUX5KTzEAXYVhCHROD5ZVE5uFNosE",
}
_HOST = "drive.google.com"


class DownloadError(RuntimeError):
    """The archives could not be fetched or unpacked; nothing was left behind."""


def _check_reachable(timeout: float) -> None:
    try:
        socket.create_connection((_HOST, 443), timeout=timeout).close()
    except OSError as error:
        raise DownloadError(f"cannot reach {_HOST} ({error}); the SemSim archives need internet access. "
                            f"Download them elsewhere and pass the folder to --data") from None


def _archive_suffix(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PK\x03\x04"):
        return ".zip"
    if head.startswith(b"\x1f\x8b"):
        return ".tar.gz"
    if head[257:262] == b"ustar":
        return ".tar"
    raise DownloadError(f"{path.name}: not a zip or tar archive (Google Drive may have answered with a "
                        f"quota or sign-in page)")


def download_annotations(target: str | Path, which: tuple[str, ...] = ("annotations",),
                         timeout: float = 5.0) -> list[Path]:
    """Download and unpack the named archives into ``target``; return the paths that appeared there."""
    unknown = [name for name in which if name not in ARCHIVES]
    if unknown or not which:
        raise ValueError(f"unknown archive(s) {unknown or list(which)}; choose from {', '.join(ARCHIVES)}")
    _check_reachable(timeout)
    target = Path(target)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".semsim-download-", dir=target))
    try:
        unpacked = scratch / "unpacked"
        for name in which:
            download_file_from_google_drive(ARCHIVES[name], root=str(scratch), filename=name)
            archive = scratch / name
            if not archive.is_file():
                raise DownloadError(f"{name}: Google Drive returned no file")
            named = archive.rename(archive.with_name(name + _archive_suffix(archive)))
            extract_archive(str(named), str(unpacked / name))
        clashes = [p.name for p in unpacked.glob("*/*") if (target / p.name).exists()]
        if clashes:
            raise DownloadError(f"{target} already holds {', '.join(sorted(clashes))}; "
                                f"choose an empty folder")
        moved = []
        for item in sorted(unpacked.glob("*/*")):
            moved.append(Path(shutil.move(str(item), str(target / item.name))))
        return moved
    except DownloadError:
        raise
    except Exception as error:  # network, quota, corrupt archive: report one line, leave nothing
        raise DownloadError(f"download failed: {error}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if created and not any(target.iterdir()):
            target.rmdir()
