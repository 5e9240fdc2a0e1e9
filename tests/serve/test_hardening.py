"""The server under hostile but realistic use (issue 28): text that looks like control tokens,
a request that fails inside a batch, junk paths, image bombs, over-long prompts, malformed
bodies and settings. Each answer is a 4xx (or the result) and the server keeps serving."""

from __future__ import annotations

import base64
import socket
import threading
import time
from concurrent.futures import Future

import httpx
import pytest
from fastapi.testclient import TestClient

from utamoe.cli import main
from utamoe.serve import handlers
from utamoe.serve.app import ServeConfig, create_app
from utamoe.serve.batcher import DynamicBatcher, Job

from ..vision.test_images import ico_bomb
from .conftest import png_b64


@pytest.fixture
def client(predictor):
    with TestClient(create_app(predictor, ServeConfig(max_image_pixels=10_000,
                                                      max_body_bytes=200_000))) as c:
        yield c


def test_control_token_text_is_answered(client, image):
    for q in ("<und_slot> what color?", "<img><eos></img>", "<t2i> a <code_slot>"):
        r = client.post("/v1/answer", json={"image": png_b64(image), "question": q})
        assert r.status_code == 200, r.text
        r = client.post("/v1/generate", json={"prompt": q, "temperature": 0})
        assert r.status_code == 200, r.text


class _Flaky:
    """A predictor whose batch fails when it holds the request "bad"."""

    def __init__(self):
        self.batches = []

    def run(self, requests, trace=False, on_step=None):
        self.batches.append(list(requests))
        if "bad" in requests:
            raise RuntimeError("boom")
        return [f"ok {r}" for r in requests]


def test_one_bad_request_in_a_batch_fails_alone():
    flaky = _Flaky()
    batcher = DynamicBatcher(flaky, max_batch=8, max_wait_ms=200)
    jobs = [Job(r, deadline=float("inf"), future=Future()) for r in ("a", "bad", "c")]
    try:
        for job in jobs:
            batcher.submit(job)
        results = []
        for job in jobs:
            try:
                results.append(job.future.result(timeout=10))
            except RuntimeError as err:
                results.append(f"error {err}")
    finally:
        batcher.close(5)
    assert results == ["ok a", "error boom", "ok c"]
    assert flaky.batches[0] == ["a", "bad", "c"]  # tried together first


def test_junk_paths_do_not_grow_the_metrics(predictor):
    """Issue 28, item 5: every distinct path was a Prometheus label (unbounded memory from
    unauthenticated requests, 401s included)."""
    with TestClient(create_app(predictor, ServeConfig(api_key="k"))) as c:
        c.get("/health")
        before = len(c.get("/metrics", headers={"x-api-key": "k"}).text)
        for i in range(300):
            c.get(f"/v1/junk{i}")
            c.post(f"/v1/answer{i}", json={})
            c.get(f"/health/{i}")
        text = c.get("/metrics", headers={"x-api-key": "k"}).text
    assert "junk" not in text and "answer1" not in text and "/health/" not in text
    assert 'endpoint="other"' in text and len(text) < before + 3000


def test_an_ico_bomb_is_refused_without_decoding(client):
    r = client.post("/v1/answer", json={"image": base64.b64encode(ico_bomb()).decode(),
                                        "question": "what?"})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "image"


def test_images_are_decoded_off_the_event_loop(live, image, monkeypatch):
    """A slow decode (a large image) must not hold /health or other requests."""
    real = handlers.decode

    def slow(*args):
        time.sleep(2.0)
        return real(*args)

    monkeypatch.setattr(handlers, "decode", slow)
    with live() as server:
        t = threading.Thread(target=lambda: httpx.post(
            server.url + "/v1/answer", json={"image": png_b64(image), "question": "q"}, timeout=30))
        t.start()
        time.sleep(0.3)
        start = time.monotonic()
        assert httpx.get(server.url + "/health", timeout=30).status_code == 200
        waited = time.monotonic() - start
        t.join()
    assert waited < 1.0, waited


def test_every_error_has_the_documented_shape(client, image):
    """Issue 28, item 16: 404, 405 and unparsable bodies were {"detail": ...}."""
    for r in (client.get("/nope"), client.get("/v1/answer"),
              client.post("/v1/answer", content=b"{not json", headers={"content-type": "application/json"})):
        assert 400 <= r.status_code < 500 and set(r.json()) == {"error"}, r.text
        assert r.json()["error"]["message"]


def test_base64_with_line_breaks_is_an_image(client, image, predictor):
    b64 = png_b64(image)
    wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76)) + "\n"  # `base64 img.png`
    r = client.post("/v1/answer", json={"image": wrapped, "question": "what color is the circle ?"})
    assert r.status_code == 200 and r.json()["answer"] == predictor.answer(image, ["what color is the circle ?"])[0]


def test_more_images_than_the_queue_holds_is_a_4xx_not_retry(predictor):
    with TestClient(create_app(predictor, ServeConfig(queue_size=3))) as c:
        r = c.post("/v1/generate", json={"prompt": "a red circle", "num_images": 4})
        assert r.status_code == 422 and "num_images" in r.text and "Retry-After" not in r.headers


def test_a_long_request_is_a_4xx(client):
    r = client.post("/v1/generate", json={"prompt": "\U0001F600" * 1000})  # 1000 chars, 4000 bytes
    assert r.status_code == 422 and "positions" in r.json()["error"]["message"]


@pytest.mark.parametrize("flag, value", [("--timeout", "nan"), ("--timeout", "0"),
                                         ("--timeout", "-1"), ("--port", "99999"),
                                         ("--max-wait-ms", "inf")])
def test_bad_serve_settings_are_errors(tmp_path, capsys, flag, value):
    assert main(["serve", "--model", str(tmp_path), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and flag in err and "Traceback" not in err


def test_a_stalled_body_is_cut_off(live):
    with live(body_timeout_s=0.5) as server, socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"prompt\": ")
        s.settimeout(10)
        reply = b""
        while b'"error"' not in reply and (chunk := s.recv(4096)):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b'"error"' in reply


def test_a_client_that_goes_away_frees_its_queue_slots(live, predictor, image, monkeypatch):
    real = predictor.run

    def slow(requests, **kw):
        time.sleep(1.5)
        return real(requests, **kw)

    monkeypatch.setattr(predictor, "run", slow)
    body = {"prompt": "a red circle", "num_images": 2, "temperature": 0}
    with live(max_batch=1, queue_size=2) as server:
        first = threading.Thread(target=lambda: httpx.post(server.url + "/v1/generate",
                                                           json={"prompt": "x"}, timeout=30))
        first.start()
        time.sleep(0.3)  # the first is running; the next two images would wait
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/generate", json=body, timeout=0.5)  # gives up, leaves
        time.sleep(0.6)
        r = httpx.post(server.url + "/v1/generate", json=body, timeout=30)
        first.join()
    assert r.status_code == 200, r.text  # not 503: the slots of the one who left were freed
