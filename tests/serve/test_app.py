"""The HTTP API: results equal the predictor's for the same seed, bad requests are 4xx naming
the field (and the server keeps serving), a full queue is 503 with Retry-After, a request past
its deadline is 504, answers stream as server-sent events, metrics are Prometheus text."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from utamoe.infer.sampling import SamplingConfig
from utamoe.serve.app import ServeConfig, create_app

from .conftest import png_b64


@pytest.fixture
def client(predictor):
    with TestClient(create_app(predictor, ServeConfig(max_image_pixels=10_000,
                                                      max_body_bytes=200_000))) as c:
        yield c


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_results_equal_the_predictor_for_the_same_seed(client, predictor, image):
    q = "what color is the circle ?"
    r = client.post("/v1/answer", json={"image": png_b64(image), "question": q})
    assert r.status_code == 200 and r.json()["answer"] == predictor.answer(image, [q])[0]
    r = client.post("/v1/generate", json={"prompt": "a red circle", "num_images": 2, "seed": 3,
                                          "temperature": 1.0, "cfg_scale": 2.0})
    assert r.status_code == 200 and r.json()["seeds"] == [3, 4]
    for j, b64 in enumerate(r.json()["images"]):
        want = predictor.generate(["a red circle"], SamplingConfig(temperature=1.0, cfg_scale=2.0,
                                                                   seed=3 + j))[0]
        assert np.array_equal(_decode(b64), want)
    r = client.post("/v1/upload/edit", files={"image": ("x.png", base64.b64decode(png_b64(image)))},
                    data={"instruction": "make the circle blue", "options": '{"seed": 1}'})
    want = predictor.edit(image, ["make the circle blue"], SamplingConfig(temperature=1.0,
                                                                          cfg_scale=3.0, seed=1))[0]
    assert r.status_code == 200 and np.array_equal(_decode(r.json()["images"][0]), want)


def test_generate_can_return_the_experts_trace(client, predictor):
    r = client.post("/v1/generate", json={"prompt": "a red circle", "trace": True, "temperature": 0})
    out = r.json()
    assert out["groups"] == ["und", "gen"] and len(out["trace"][0]) == predictor.model.config.code_grid ** 2
    assert {"layer", "group", "experts"} <= set(out["trace"][0][0]["layers"][0])


@pytest.mark.parametrize("path, body, status, field", [
    ("/v1/answer", {"image": "@@@", "question": "q"}, 422, "image"),
    ("/v1/answer", {"image": base64.b64encode(b"not an image").decode(), "question": "q"}, 422, "image"),
    ("/v1/answer", {"image": "BIG", "question": "q"}, 422, "image"),
    ("/v1/answer", {"image": "IMG", "question": "   "}, 422, "question"),
    ("/v1/answer", {"image": "IMG", "question": "q" * 2000}, 422, "question"),
    ("/v1/answer", {"image": "IMG", "question": "q", "colour": "red"}, 422, "colour"),
    ("/v1/answer", {"image": "IMG", "question": 3}, 422, "question"),
    ("/v1/answer", {"image": "IMG", "question": "q", "task": "t2i"}, 422, "task"),
    ("/v1/generate", {"prompt": "x", "temperature": -1}, 422, "temperature"),
    ("/v1/generate", {"prompt": "x", "num_images": 100}, 422, "num_images"),
    ("/v1/generate", {"prompt": "x", "cfg_scale": "high"}, 422, "cfg_scale"),
    ("/v1/edit", {"instruction": "x"}, 422, "image"),
])
def test_bad_requests_are_4xx_naming_the_field(client, image, path, body, status, field):
    big = png_b64(np.zeros((200, 200, 3), np.uint8))
    body = {k: (png_b64(image) if v == "IMG" else big if v == "BIG" else v) for k, v in body.items()}
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert field in err["message"] and any(field in f["field"] for f in err["fields"]), err
    assert client.get("/health").status_code == 200  # still serving


def test_body_limits_nan_and_api_key(predictor, image):
    with TestClient(create_app(predictor, ServeConfig(max_body_bytes=1000, api_key="k"))) as c:
        assert c.get("/health").status_code == 200  # no key needed
        assert c.post("/v1/generate", json={"prompt": "x"}).status_code == 401
        h = {"X-API-Key": "k"}
        r = c.post("/v1/answer", json={"image": png_b64(image), "question": "q"}, headers=h)
        assert r.status_code == 413 and "limit is 1000" in r.json()["error"]["message"]
        r = c.post("/v1/generate", content=b'{"prompt": "x", "temperature": NaN}', headers={
            **h, "Content-Type": "application/json"})
        assert r.status_code == 422 and "temperature" in r.json()["error"]["message"]
        assert c.get("/metrics", headers=h).status_code == 200


def test_answers_stream_as_server_sent_events(client, image):
    r = client.post("/v1/answer", json={"image": png_b64(image), "question": "q", "stream": True,
                                        "max_new_tokens": 4})
    events = [line.removeprefix("event: ") for line in r.text.splitlines() if line.startswith("event:")]
    assert events[-1] == "result" and events.count("token") >= 1
    data = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data:")]
    assert data[-1]["answer"] == data[-2]["token"]  # the last token event is the whole answer


def _slow(monkeypatch, predictor, seconds):
    real = predictor.run

    def slow(*a, **k):
        time.sleep(seconds)
        return real(*a, **k)

    monkeypatch.setattr(predictor, "run", slow)


def test_full_queue_is_503_and_a_late_request_504(predictor, monkeypatch):
    _slow(monkeypatch, predictor, 0.6)
    cfg = ServeConfig(max_batch=1, queue_size=1, max_wait_ms=0)
    with TestClient(create_app(predictor, cfg)) as c:
        codes = []

        def go():
            codes.append(c.post("/v1/generate", json={"prompt": "x"}).status_code)

        threads = [threading.Thread(target=go) for _ in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        assert 200 in codes and 503 in codes, codes
        r = c.post("/v1/generate", json={"prompt": "x", "timeout_s": 0.2})
        assert r.status_code == 504 and "deadline" in r.json()["error"]["message"]
        time.sleep(0.8)
        assert c.post("/v1/generate", json={"prompt": "x"}).status_code == 200  # slot was freed


def test_metrics_count_requests_batches_and_tokens(client, image):
    client.post("/v1/generate", json={"prompt": "x"})
    client.post("/v1/generate", json={"prompt": "x", "temperature": -1})
    text = client.get("/metrics").text
    assert 'utamoe_requests_total{endpoint="/v1/generate",status="200"} 1.0' in text
    assert 'utamoe_requests_total{endpoint="/v1/generate",status="422"} 1.0' in text
    assert "utamoe_batch_size_count 1.0" in text and "utamoe_queue_depth" in text
    assert "utamoe_generated_tokens_total" in text and "utamoe_request_seconds_bucket" in text
