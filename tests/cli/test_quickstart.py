"""examples/quickstart runs under `flwr run` offline, on a fresh Flower home."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from semsim_audit.report import read_jsonl

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop_local_superlink(flwr_home: Path) -> None:
    """`flwr run` leaves its local SuperLink running by design; stop the one this test started."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # Its log file lives under this test's own Flower home: no other process matches.
        if "flower-superlink" in command and str(flwr_home) in command:
            os.kill(int(entry.name), signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the local SuperLink through /proc")
def test_quickstart_runs_under_flwr_run(tmp_path: Path) -> None:
    flwr_home, out = tmp_path / "flwr-home", tmp_path / "runs"
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),  # a fresh machine: no Flower config yet
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "UV_OFFLINE": "1",  # Flower's per-run dependency sync must not need the network
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "OMP_NUM_THREADS": "1",
    }
    overrides = f"out-dir='{out}' num-server-rounds=1 audit-iterations=3"
    try:
        completed = subprocess.run(
            [str(bin_dir / "flwr"), "run", str(QUICKSTART), "--stream", "--run-config", overrides],
            capture_output=True, text=True, env=env, timeout=540)
    finally:
        _stop_local_superlink(flwr_home)
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log
    (run_dir,) = out.iterdir()
    report = read_jsonl(run_dir / "report.jsonl")
    assert [r.round for r in report.rounds] == [1]
    (audit,) = report.rounds[0].clients
    assert audit.status == "ok", audit.reason
    assert audit.scored_on == "client" and audit.scores
    assert report.rounds[0].accuracy is not None
    assert (run_dir / "report.html").is_file()
    assert "[audit] round 1:" in log
