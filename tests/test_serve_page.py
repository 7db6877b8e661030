"""The operator's page end to end: the real server (``python -m runtime serve``) on a free local
port, the page driven in headless Chromium (the system's package, through Playwright): a
defective part lands in the watched folder, shows in the review queue with its overlay, is marked
good, taught, switched to, and the same image then scores "ok". Screenshots are kept in
``$PATCHCORE_TEST_ARTEFACTS/serve-e2e/`` when that is set (else in the test's temporary folder)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.capabilities import require

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in (os.environ.get("PATCHCORE_TEST_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium") if p and os.path.isfile(p)), None)
TOKEN = "page-test-token-0123456789abcdef"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    import httpx

    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError("serve did not become healthy")


@pytest.fixture
def artefacts(tmp_path) -> Path:
    out = Path(os.environ.get("PATCHCORE_TEST_ARTEFACTS", tmp_path)) / "serve-e2e"  # never into the checkout
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_defective_part_marked_good_taught_and_switched_in_the_browser(rt_bundle, tmp_path, artefacts):
    require("chromium", None if CHROMIUM else "Chromium not found")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the [serve] extra)")
    models, incoming = tmp_path / "models", tmp_path / "incoming"
    models.mkdir()
    incoming.mkdir()
    shutil.copytree(rt_bundle, models / "line-v1")
    (models / "line").symlink_to("line-v1")
    test = rt_bundle.parent / "data" / "brick" / "test"
    defect = sorted((test / "hole").glob("*.png"))[0]
    goods = sorted((test / "good").glob("*.png"))[:4]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PATCHCORE_RT_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--bundle", str(models / "line"), "--watch",
                             str(incoming), "--settle", "0.2", "--port", str(port), "--models", str(models),
                             "--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_healthy(url, proc)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"),
                                                            executable_path=CHROMIUM, headless=True, args=FLAGS, bypass_csp=True,
                                                            viewport={"width": 1280, "height": 900})  # CSP: the page forbids eval, which wait_for_function uses
            try:
                page = browser.new_page()
                page.set_default_timeout(60_000)
                page.goto(url)
                page.fill("#token", TOKEN)
                page.click("#token-form button")
                for i, good in enumerate(goods):
                    shutil.copy(good, incoming / f"part-04{i:02d}.png")
                page.wait_for_function(f"document.querySelector('#n-ok').textContent === '{len(goods)}'")
                shutil.copy(defect, incoming / "part-0413.png")
                card = page.locator("#queue .card.ng", has_text="part-0413.png")
                card.wait_for()
                img = card.locator("img")
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
                assert img.get_attribute("src").startswith("/v1/results/")
                assert card.locator(".verdict").inner_text().lower() == "defective"
                page.screenshot(path=str(artefacts / "1-review-queue.png"), full_page=True)
                card.locator("button.mark").click()
                page.wait_for_function("document.querySelector('#n-marked').textContent === '1'")
                assert "marked good" in card.locator("button.mark").inner_text()
                page.click("#teach")
                page.wait_for_function("document.querySelector('#teach-state').textContent.startsWith('taught')")
                page.screenshot(path=str(artefacts / "2-taught.png"), full_page=True)
                shown = page.locator("#bundle").inner_text()  # "line-v1 · bundle@..."
                v1 = shown.split(" · ")[-1]
                assert shown.startswith("line-v1 · ")
                page.locator("#switch:not([disabled])").click()
                page.wait_for_function("document.querySelector('#message').textContent.startsWith('now serving')")
                page.wait_for_function(f"document.querySelector('#bundle').textContent !== {shown!r}")
                assert v1 in page.locator("#lineage").inner_text()  # the new bundle's parent is the old one
                assert os.readlink(models / "line") != "line-v1"
                shutil.copy(defect, incoming / "part-0413-again.png")
                for i, good in enumerate(goods[:3]):  # good parts stay good with the taught bundle
                    shutil.copy(good, incoming / f"part-05{i:02d}.png")
                again = page.locator("#latest .card", has_text="part-0413-again.png")
                again.wait_for()
                assert again.locator(".verdict").inner_text().lower() == "ok"
                page.wait_for_function(f"document.querySelector('#n-ok').textContent === '{len(goods) + 4}'")
                assert page.locator("#queue .card", has_text="part-0413.png").count() == 0  # taught: out of the queue
                page.wait_for_function("[...document.querySelectorAll('#latest img')].every(i => i.complete)")
                page.screenshot(path=str(artefacts / "3-switched.png"), full_page=True)
                # the operating point: preview a proposed threshold on the recent parts, then apply it
                # the 4 parts the taught bundle scored, all ok
                page.wait_for_function("document.querySelector('#op-now').textContent.includes('0 of 4 called defective')")
                page.fill("#op-policy", "value=1e6")
                page.click("#op-preview-button")
                page.wait_for_function("document.querySelector('#op-preview').textContent.includes('would change')")
                assert page.locator("#op-preview").inner_text().startswith("value=1000000: threshold")
                assert not page.locator("#proposed-key").is_hidden()
                page.screenshot(path=str(artefacts / "4-threshold-preview.png"), full_page=True)
                served = page.locator("#bundle").inner_text()
                page.locator("#op-apply:not([disabled])").click()
                page.wait_for_function("document.querySelector('#message').textContent.includes('at value=1000000')")
                page.wait_for_function(f"document.querySelector('#bundle').textContent !== {served!r}")
                assert os.readlink(models / "line").endswith("-op-value-1000000")
                shutil.copy(defect, incoming / "part-0413-third.png")  # nothing reaches 1e6: ok
                third = page.locator("#latest .card", has_text="part-0413-third.png")
                third.wait_for()
                assert third.locator(".verdict").inner_text().lower() == "ok"
            finally:
                browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
