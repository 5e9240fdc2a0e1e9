"""The server for real: a browser on the web page (headless Chromium via Playwright), a bounded
load test on loopback, and SIGTERM finishing the request in flight before the process exits."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from utamoe.infer.sampling import SamplingConfig
from utamoe.serve.app import STATIC

from .conftest import free_port, png_b64

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_web_page_asks_and_generates_in_a_browser(live, image, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    if CHROMIUM is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "scene.png")
    with live() as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('status').textContent.includes('ready')")
        page.set_input_files("#file", str(tmp_path / "scene.png"))
        page.fill("#question", "what color is the circle ?")
        page.click("#ask")
        page.wait_for_function("!['', '...'].includes(document.getElementById('answer').textContent)")
        page.fill("#prompt", "a red circle at the top left")
        page.click("#generate")
        page.wait_for_selector("#images img", timeout=60_000)
        assert page.locator("#images img").count() == 2
        assert "codes x 2 layers" in page.text_content("#experts-note")
        page.fill("#prompt", "")
        page.click("#generate")
        assert "Type a prompt first" in page.text_content("#error")  # errors shown in words
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_bounded_load_loses_nothing_and_keeps_memory_flat(live, predictor, image):
    import httpx

    b64, seconds, clients = png_b64(image), 6.0, 8
    want_answer = predictor.answer(image, ["what color is the circle ?"])[0]
    want_image = predictor.generate(["a red circle"], SamplingConfig(temperature=0, cfg_scale=1.5))[0]
    bodies = [("/v1/answer", {"image": b64, "question": "what color is the circle ?"}, 200),
              ("/v1/generate", {"prompt": "a red circle", "temperature": 0, "cfg_scale": 1.5}, 200),
              ("/v1/answer", {"image": "garbage", "question": "q"}, 422),
              ("/v1/generate", {"prompt": "", "seed": 1}, 422)]
    results, errors = [], []
    with live(max_batch=8, queue_size=64) as server:
        def client(k):
            with httpx.Client(base_url=server.url, timeout=60) as c:
                end, i = time.monotonic() + seconds, k
                while time.monotonic() < end:
                    path, body, want = bodies[i % len(bodies)]
                    i += 1
                    try:
                        r = c.post(path, json=body)
                        results.append((path, want, r.status_code, r.json()))
                    except Exception as err:  # a lost request
                        errors.append(repr(err))

        rss = []
        for _ in range(2):  # memory after a first round, then after a second as long
            threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    assert not errors, errors[:3]
    assert len(results) > 20
    assert all(code == want for _, want, code, _ in results), \
        sorted({(p, w, c) for p, w, c, _ in results if c != w})
    for path, _, code, body in results:
        if code == 200 and path == "/v1/answer":
            assert body["answer"] == want_answer
        elif code == 200:
            from .test_app import _decode

            assert np.array_equal(_decode(body["images"][0]), want_image)
    assert rss[1] - rss[0] < 100_000, rss  # KiB: the second round grows peak memory < 100 MB


def test_sigterm_finishes_the_request_in_flight_then_exits(tmp_path, predictor):
    import httpx

    from utamoe.model.io import save_model_dir

    save_model_dir(predictor.model, tmp_path / "m", predictor.tokenizer)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "utamoe.cli", "serve", "--model", str(tmp_path / "m"),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if (health := httpx.get(url + "/health", timeout=1)).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert health.json()["model"] == "m"  # its name, not where it lives on the server
        got = {}

        def slow_request():
            got["r"] = httpx.post(url + "/v1/generate", json={"prompt": "x", "num_images": 8},
                                  timeout=60)

        t = threading.Thread(target=slow_request)
        t.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert got["r"].status_code == 200 and len(got["r"].json()["images"]) == 8
        assert proc.wait(30) == 0  # drained: a clean exit, not "killed by SIGTERM" (issue 28)
    finally:
        proc.kill()
    assert "Traceback" not in proc.stdout.read()


def test_the_web_page_works_with_an_api_key(live, tmp_path):
    """Issue 28, item 16: the page sent no key, so with --api-key every action was 401. It asks
    for the key once (a prompt), keeps it in the browser and sends it as X-API-Key."""
    page_js = (STATIC / "index.html").read_text()
    assert '"X-API-Key"' in page_js and "res.status === 401" in page_js
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    if CHROMIUM is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    with live(api_key="sesame") as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("dialog", lambda d: d.accept("sesame"))  # the page asks for the key once
        page.goto(server.url + "/")
        page.fill("#prompt", "a red circle at the top left")
        page.click("#generate")
        page.wait_for_selector("#images img", timeout=60_000)
        assert page.evaluate("localStorage.getItem('utamoe-api-key')") == "sesame"
        browser.close()
