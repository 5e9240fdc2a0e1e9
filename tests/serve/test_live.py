"""The server for real: a browser on the chat page (headless Chromium via Playwright), a bounded
load test on loopback, and SIGTERM finishing the request in flight before the process exits."""

from __future__ import annotations

import io
import os
import re
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

from .conftest import free_port, png_b64

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    if CHROMIUM is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    return sync_playwright


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _css_rgb(text: str) -> np.ndarray:
    return np.array([int(x) for x in re.findall(r"\d+", text)[:3]])


def _send(page, mode: str, text: str, replies: int) -> None:
    page.select_option("#mode", mode)
    page.fill("#text", text)
    page.click("#send")
    page.wait_for_function(f"document.querySelectorAll('.msg.assistant, .msg.error').length >= {replies}",
                           timeout=60_000)


def test_the_chat_page_in_a_browser_three_turns_image_in_and_out(live, image, tmp_path):
    """A person's conversation: upload an image and ask about it, draw, edit what was drawn;
    every answer shows its experts view with legend swatches that render in their colours;
    errors appear in the page; the screenshots are checked, not only taken."""
    import base64

    from PIL import Image

    Image.fromarray(image).save(tmp_path / "scene.png")
    with live() as server, _browser()() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('status').textContent.includes('ready')")
        page.set_input_files("#file", str(tmp_path / "scene.png"))
        page.wait_for_selector("#attached:not([hidden])")
        page.select_option("#task", "utamoe:vqa")
        _send(page, "ask", "what color is the circle ?", 1)
        _send(page, "draw", "a red circle at the top left", 2)
        _send(page, "edit", "make the circle blue", 3)
        assert page.locator(".msg.error").count() == 0, page.text_content("#log")
        answers = page.locator(".msg.assistant")
        assert answers.count() == 3 and page.locator(".msg.user").count() == 3
        assert page.locator(".msg.user img.pic").count() == 1  # the image went in with turn 1
        assert answers.nth(0).locator(".text").text_content().strip()  # an answer in words
        assert answers.nth(1).locator("img.pic").count() == 1  # images out, inline
        assert answers.nth(2).locator("img.pic").count() == 1
        for k, what in ((0, "tokens"), (1, "codes"), (2, "codes")):  # an experts view per answer
            assert f"{what} x 2 MoE layers" in answers.nth(k).locator("details.experts summary").text_content()
        page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)

        # The screenshots, checked: each legend swatch renders in its group's colour (not empty),
        # the generated and edited images render as pictures, and the edit changed the image.
        swatches = page.locator(".swatch")
        assert swatches.count() == 6  # two groups x three answers
        for i in range(2):
            want = _css_rgb(swatches.nth(i).evaluate("e => getComputedStyle(e).backgroundColor"))
            shot = _pixels(swatches.nth(i).screenshot())
            inner = shot[2:-2, 2:-2].reshape(-1, 3)
            assert np.abs(inner - want).max() <= 3, (i, want, inner[:3])
            assert np.abs(want - 255).max() > 60  # a colour, not the page's white
        for k in (1, 2):  # each image on screen is the picture the server sent, 3x, pixelated
            img = answers.nth(k).locator("img.pic")
            img.scroll_into_view_if_needed()
            page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=img.element_handle())
            sent = _pixels(base64.b64decode(img.get_attribute("src").split(",", 1)[1]))
            shown = _pixels(img.screenshot())[1:-1, 1:-1]  # inside the 1 px border
            scale = shown.shape[0] // sent.shape[0]
            assert scale >= 2 and np.abs(shown[scale // 2::scale, scale // 2::scale][:sent.shape[0], :sent.shape[1]]
                                         - sent).mean() < 4, k
        canvas = _pixels(answers.nth(1).locator("details.experts canvas").screenshot())
        assert canvas.std() > 5  # the experts view is drawn

        # Errors appear in the page, in words, and the page keeps working.
        page.fill("#text", "")
        page.click("#send")
        assert "Type a message first" in page.text_content("#error")
        _send(page, "draw", "x" * 1200, 4)
        assert "prompt" in page.locator(".msg.error").last.text_content()
        browser.close()
    assert (tmp_path / "chat.png").stat().st_size > 20_000


def test_the_chat_page_shows_task_spans_and_works_with_an_api_key(live, image, tmp_path):
    """The page with --api-key: a request without the key is told so in the page; with it, the
    chat works. A UnifiedMLLM answer's task spans show their images and errors (the answer comes
    from a route stand-in here: a tiny random model writes no spans)."""
    import base64

    from .conftest import png_b64

    span_answer = {"id": "x", "object": "chat.completion", "created": 0, "model": "utamoe",
                   "choices": [{"index": 0, "finish_reason": "stop", "trace": [],
                                "message": {"role": "assistant",
                                            "content": "sure <edit>make it blue</edit> <bogus>x</bogus>"},
                                "spans": [{"tag": "edit", "text": "make it blue", "executor": "box_edit",
                                           "seconds": 0.1, "error": None, "images": [png_b64(image)],
                                           "masks": [], "result_text": None},
                                          {"tag": None, "text": "x", "executor": "", "seconds": 0,
                                           "error": {"kind": "unknown_tag", "message": "no executor"},
                                           "images": [], "masks": [], "result_text": None}]}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}
    with live(api_key="s3cret") as server, _browser()() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('status').textContent.includes('ready')")
        _send(page, "draw", "a red circle", 1)
        assert "needs an API key" in page.text_content("#error")
        page.fill("#key", "s3cret")
        _send(page, "draw", "a red circle", 2)
        assert page.locator(".msg.assistant img.pic").count() == 1
        page.route("**/v1/chat/completions", lambda route: route.fulfill(
            status=200, content_type="application/json", body=__import__("json").dumps(span_answer)))
        _send(page, "ask", "make the circle blue", 3)
        spans = page.locator(".msg.assistant").last.locator(".span")
        assert spans.count() == 2
        assert "<edit> box_edit" in spans.nth(0).text_content()
        assert spans.nth(0).locator("img.pic").count() == 1
        assert "unknown_tag: no executor" in spans.nth(1).text_content()
        shot = _pixels(spans.nth(0).locator("img.pic").screenshot())
        assert shot.std() > 5
        src = spans.nth(0).locator("img.pic").get_attribute("src")
        assert base64.b64decode(src.split(",", 1)[1]) == base64.b64decode(png_b64(image))
        browser.close()


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
