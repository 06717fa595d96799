"""giot-server's status page as a person sees it: the real command, in headless Chromium.

Playwright lives in this (the Home Assistant) environment, ``giot-server`` in the server one: the
test writes a synthetic ``rounds.jsonl`` the way the ServerApp does, starts ``giot-server
status-page`` from ``.venv-server`` on a free port (the ``socket_enabled`` fixture lifts the
plugin's socket block for this test) and checks that every plot is rendered. With
GIOT_SCREENSHOTS=docs/screenshots the full-page screenshot is also copied there (the committed
``docs/screenshots/status-page.png`` comes from such a run).
"""

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright

from .real_hass import ROOT, _free_port
from .test_browser import CHROMIUM, CHROMIUM_ARGS

SERVER_PYTHON = ROOT / ".venv-server" / "bin" / "python"
ROUNDS = 12
TIMEOUT_MS = 60_000


def synthetic_rounds(now: float) -> list[dict[str, Any]]:
    """Twelve rounds of a small federation: rotation, one refusal, one miss, DP on."""
    out = []
    for rnd in range(1, ROUNDS + 1):
        refused = {"update norm too large": 1} if rnd == 5 else {}
        missed = int(rnd in (7, 8))
        asked = 4 if rnd % 2 else 3
        accepted = asked - missed - sum(refused.values())
        latency = 41.0 + 6 * missed + (rnd % 3)
        out.append(
            {
                "v": 1,
                "round": rnd,
                "strategy": "gsfs",
                "started": now - (ROUNDS - rnd + 1) * 300.0,
                "ended": now - (ROUNDS - rnd + 1) * 300.0 + latency,
                "latency_s": latency,
                "train_s": latency - 6.0,
                "deadline_s": 60.0 if rnd < 3 else 48.0,
                "available": 7,
                "nodes_seen": 7,
                "asked": asked,
                "replied": asked - missed,
                "accepted": accepted,
                "refused": sum(refused.values()),
                "refused_reasons": refused,
                "missed": missed,
                "skipped": 7 - asked,
                "bytes_up": 3000 * accepted,
                "bytes_down": 36096 * asked if rnd < 3 else 9000 * asked,
                "train_loss": 4.1 - 1.6 * (1 - 0.8**rnd),
                "eval_clients": {"eval-loss": 4.2 - 1.5 * (1 - 0.8**rnd)},
                "eval_server": {
                    "auroc": 0.62 + 0.3 * (1 - 0.75**rnd),
                    "f1": 0.4 + 0.4 * (1 - 0.7**rnd),
                },
                "dp_epsilon": 0.9 * rnd**0.5,
                "dp_delta": 1e-5,
                "model_version": rnd,
                "model_sha256": f"{rnd * 0x9E3779B97F4A7C15 % 2**64:016x}",
            }
        )
    return out


@pytest.fixture
def status_page(tmp_path: Path, socket_enabled: None) -> Iterator[str]:
    """``giot-server status-page`` over a synthetic history; its base URL."""
    assert SERVER_PYTHON.exists(), f"{SERVER_PYTHON} is missing: scripts/setup builds it"
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    lines = [json.dumps(r) + "\n" for r in synthetic_rounds(time.time())]
    (checkpoints / "rounds.jsonl").write_text("".join(lines))
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "engine" / "src")]),  # this checkout
        "MPLCONFIGDIR": str(tmp_path / "matplotlib"),
    }
    cmd = [str(SERVER_PYTHON), "-m", "giot_server", "status-page", "--home", str(tmp_path)]
    cmd += ["--checkpoint-dir", str(checkpoints), "--status-port", str(port)]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=2).close()
                break
            except urllib.error.URLError, ConnectionError:
                assert process.poll() is None, process.communicate()[1].decode(errors="replace")
                assert time.monotonic() < deadline, "the status page did not answer in 60 s"
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err.decode(errors="replace")


def test_status_page_renders_every_plot(status_page: str, tmp_path: Path) -> None:
    """The header shows the round; each plot is an image Chromium decoded and laid out."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: scripts/setup installs Debian's chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="en-US")
            page.set_default_timeout(TIMEOUT_MS)
            failed: list[str] = []
            page.on("requestfailed", lambda req: failed.append(req.url))
            page.goto(status_page, wait_until="load")
            facts = page.locator("#facts")
            expect(facts).to_contain_text(f"Round: {ROUNDS}", timeout=TIMEOUT_MS)
            expect(facts).to_contain_text("Nodes seen: 7")
            expect(facts).to_contain_text("DP epsilon: 3.12")
            images = page.locator("main figure img")
            expect(images).to_have_count(6)
            for i in range(6):
                img = images.nth(i)
                img.scroll_into_view_if_needed()
                expect(img).to_be_visible()
                box = img.bounding_box()
                assert box is not None
                assert box["width"] > 300
                assert box["height"] > 100
                # decoded: a broken or empty SVG has no natural size
                size = img.evaluate("i => i.complete ? [i.naturalWidth, i.naturalHeight] : null")
                assert size is not None
                assert min(size) > 0, (img.get_attribute("src"), size)
            expect(page.get_by_role("table")).to_contain_text("update norm too large: 1")
            assert failed == []
            shot = tmp_path / "status-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if target := os.environ.get("GIOT_SCREENSHOTS"):
                (ROOT / target).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, ROOT / target / shot.name)
        finally:
            browser.close()
