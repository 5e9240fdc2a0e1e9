"""The server under hostile but realistic use (issue 28): text that looks like control tokens,
a request that fails inside a batch, junk paths, image bombs, over-long prompts, malformed
bodies and settings. Each answer is a 4xx (or the result) and the server keeps serving."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import Future

import httpx
import pytest
from fastapi.testclient import TestClient

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
