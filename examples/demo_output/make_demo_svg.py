"""Regenerate demo.svg: run `semsim-audit demo` with its default settings and keep the console SVG.

Usage (from the repository root): python examples/demo_output/make_demo_svg.py
The SVG is the run's console.svg, which rich exports from the run's report; nothing is hand-edited.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    """Run the demo into a temporary folder and copy its console.svg here as demo.svg."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "semsim_audit.cli.main", "demo", "--seed", "0", "--out", out]
        if subprocess.run(command).returncode != 0:
            print("the demo failed; demo.svg was left as it was", file=sys.stderr)
            return 1
        (run_dir,) = Path(out).iterdir()
        shutil.copyfile(run_dir / "console.svg", HERE / "demo.svg")
    print(f"wrote {HERE / 'demo.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
