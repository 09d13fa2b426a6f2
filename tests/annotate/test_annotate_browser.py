"""A real browser (Debian's headless chromium, driven by Playwright) against the real `annotate` server.

Locally the test is skipped when /usr/bin/chromium or the playwright package is missing; in CI
(``CI=true``) it fails instead, so CI cannot pass without running it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from semsim_audit.cli.main import app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ITEMS = [f"round-1.client-7.reconstruction-{i}" for i in range(3)]

pytestmark = pytest.mark.slow


def _require_browser() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the python package playwright is missing (pip install playwright)")
    if missing:
        reason = "; ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(run_folder: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`semsim-audit annotate RUN --out OUT` in a child process, until the test ends."""
    _require_browser()
    port, out = _free_port(), tmp_path / "answers"
    command = [sys.executable, "-m", "semsim_audit.cli.main", "annotate", str(run_folder),
               "--out", str(out), "--annotator", "tester", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"annotate server exited early: {process.stdout.read()}")
            try:
                if httpx.get(f"{base}/api/session", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("annotate server did not answer within 60 s")
            time.sleep(0.2)
        yield base, out
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_item(page, item_id: str, done: int) -> None:
    page.wait_for_selector(f'body[data-ready="true"] #item-id:text-is("{item_id}")', timeout=15_000)
    assert page.inner_text("#progress") == f"{done} / 6"


def test_label_by_clicks_and_keys_undo_and_export(server: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    base, out = server
    problems: list[str] = []
    with sync_playwright() as driver:
        # A fresh, empty profile: nothing from an earlier run (cache, storage) can leak in.
        context = driver.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = context.new_page()
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            # Offline by design: every request the page makes goes to our server.
            page.on("request", lambda r: r.url.startswith(base) or problems.append(f"offsite: {r.url}"))
            page.goto(f"{base}/")
            _wait_for_item(page, ITEMS[0], done=0)
            assert page.inner_text("#annotator") == "tester"
            # The pair is shown large, upscaled with hard pixel edges.
            size = page.evaluate("""() => { const img = document.getElementById('reconstruction');
                return [img.naturalWidth, img.getBoundingClientRect().width,
                        getComputedStyle(img).imageRendering]; }""")
            assert size[0] == 32 and size[1] >= 256 and size[2] == "pixelated"

            page.click("#btn-recognizable")          # item 1 by clicking
            _wait_for_item(page, ITEMS[1], done=1)
            page.keyboard.press("n")                 # item 2 by key
            _wait_for_item(page, ITEMS[2], done=2)
            page.keyboard.press("r")                 # item 3 by key ...
            _wait_for_item(page, "round-2.client-7.reconstruction-0", done=3)
            page.keyboard.press("u")                 # ... undone: item 3 comes back unanswered
            _wait_for_item(page, ITEMS[2], done=2)
            assert page.inner_text("#previous-answer") == ""
            page.click("#btn-not-recognizable")      # item 3 again, by clicking
            _wait_for_item(page, "round-2.client-7.reconstruction-0", done=3)
            for i in range(3):                       # the rest skipped from the keyboard
                page.keyboard.press("s")
                if i < 2:
                    _wait_for_item(page, f"round-2.client-7.reconstruction-{i + 1}", done=4 + i)
            page.wait_for_selector("#finished:not([hidden])", timeout=15_000)
            assert page.inner_text("#progress") == "6 / 6"
        finally:
            context.close()
    assert problems == []

    records = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert [(r["annotator"], r["item"], r["answer"]) for r in records[:5]] == [
        ("tester", ITEMS[0], "recognizable"), ("tester", ITEMS[1], "not_recognizable"),
        ("tester", ITEMS[2], "recognizable"), ("tester", ITEMS[2], "undo"),
        ("tester", ITEMS[2], "not_recognizable")]
    assert [r["answer"] for r in records[5:]] == ["skip"] * 3

    export = tmp_path / "export"
    result = CliRunner().invoke(app, ["annotate", "export", str(out), "--to", str(export)])
    assert result.exit_code == 0, result.output
    layout = export / "train_with_ori"
    assert sorted(p.name for p in layout.iterdir()) == ["-1", "-2", "0", "1", "2"]
    assert (layout / "0" / f"{ITEMS[0]}.png").is_file()
    assert (layout / "-1" / f"{ITEMS[1]}.png").is_file() and (layout / "-2" / f"{ITEMS[2]}.png").is_file()
    summary = json.loads((export / "agreement.json").read_text())
    assert summary["counts"] == {"recognizable": 1, "not_recognizable": 2, "tie": 0, "unlabeled": 3}


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but the browser test cannot run"):
        _require_browser()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium is missing"):
        _require_browser()
