"""The operator's page of a line cell end to end: the real server with two products and a watched
folder, driven in headless Chromium: a part of product a called OK is reviewed as a missed defect
by a named reviewer, and the review is on the page, in ``/v1/reviews`` and in the folder of real
defects."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.test_cell import two_bundles  # noqa: F401 - the fixture
from tests.test_serve_page import CHROMIUM, FLAGS, REPO, _free_port, _wait_healthy

TOKEN = "page-test-token-0123456789abcdef"
pytestmark = pytest.mark.slow


def test_a_missed_defect_is_reviewed_ng_on_the_page(two_bundles, tmp_path):
    if CHROMIUM is None:
        pytest.skip("Chromium not found (Debian package `chromium`; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the [serve] extra)")
    import httpx

    a, b = two_bundles
    incoming, out = tmp_path / "incoming", tmp_path / "out"
    (incoming / "a").mkdir(parents=True)
    good = sorted((a.parent / "data" / "brick" / "test" / "good").glob("*.png"))[0]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PATCHCORE_RT_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--bundle", f"a={a}", "--bundle", f"b={b}",
                             "--watch", str(incoming), "--out", str(out), "--settle", "0.2", "--port", str(port),
                             "--models", str(tmp_path), "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_healthy(url, proc)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
                                                            headless=True, args=FLAGS, bypass_csp=True)
            try:
                page = browser.new_page()
                page.set_default_timeout(60_000)
                page.goto(url)
                page.fill("#token", TOKEN)
                page.click("#token-form button")
                page.fill("#reviewer", "ann")
                page.press("#reviewer", "Tab")  # "change": kept in the tab's session
                shutil.copy(good, incoming / "a" / "part-7.png")
                card = page.locator("#latest .card", has_text="a/part-7.png")
                card.locator("button.review-ng").click()
                page.wait_for_function("document.querySelector('#message').textContent.startsWith('reviewed')")
                assert "NG (by ann" in page.locator("#message").inner_text()
                assert "missed defect) by ann" in card.locator(".reviewed").inner_text()
                assert page.locator("#products").inner_text().startswith("a *")
            finally:
                browser.close()
        got = httpx.get(url + "/v1/reviews").json()["reviews"]
        assert [(r["product"], r["file"], r["call"], r["truth"], r["reviewer"]) for r in got] == \
            [("a", "a/part-7.png", "ok", "ng", "ann")]
        assert (out / "reviews" / "a" / "ng" / f"{got[0]['result']}.png").read_bytes() == good.read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
