"""The HTTP API (FastAPI): answer, generate and edit, health, Prometheus metrics, the web page.

    GET  /               the web page (serve/static/index.html; no build step)
    GET  /health         liveness, model, tasks, queue depth (never needs the API key)
    GET  /metrics        Prometheus text format
    POST /v1/answer      {"image": base64, "question": ..., "task": "vqa", ...}
    POST /v1/generate    {"prompt": ..., "num_images": 1, "temperature", "top_k", "cfg_scale", "seed",
                          "trace": false}
    POST /v1/edit        {"image": base64, "instruction": ..., same sampling fields}
    POST /v1/upload/answer, /v1/upload/edit   the same as multipart forms with an image file
    GET  /docs           OpenAPI docs (FastAPI's), /openapi.json the schema

`"stream": true` turns a response into server-sent events: `token` events (the answer
so far) or `progress` events (codes done of the grid), then one `result` event.
Every request goes through the dynamic batcher (serve/batcher.py). Errors are JSON
`{"error": {"message", "fields"}}` with a 4xx status naming the field; a full queue is
503 with Retry-After; a request past its deadline is 504 and its queue slot is freed.
No request names a file: images travel in the body. Requests with a body need a
Content-Length within `max_body_bytes`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from utamoe.model.generation import SamplingConfig
from utamoe.model.mixed_generation import Request as GenRequest
from utamoe.serve.batcher import DeadlinePassed, DynamicBatcher, Job, QueueFull
from utamoe.serve.metrics import ServeMetrics
from utamoe.serve.schemas import AnswerRequest, EditRequest, GenerateRequest
from utamoe.tasks import get_task, is_task

STATIC = Path(__file__).resolve().parent / "static"


@dataclass
class ServeConfig:
    max_batch: int = 16
    max_wait_ms: float = 10.0
    queue_size: int = 64
    timeout_s: float = 120.0  # default deadline of a request (a body may ask for less)
    max_body_bytes: int = 8_000_000
    max_image_pixels: int = 4_000_000
    max_prompt_chars: int = 1000
    api_key: str | None = None


class APIError(Exception):
    def __init__(self, status: int, message: str, fields: list[dict] | None = None,
                 headers: dict | None = None):
        self.status, self.message, self.fields, self.headers = status, message, fields or [], headers


def _error(status: int, message: str, fields=None, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "fields": fields or []}}, status_code=status,
                        headers=headers)


def _png(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def create_app(predictor, config: ServeConfig | None = None, model_dir: str = "") -> FastAPI:
    config = config or ServeConfig()
    metrics = ServeMetrics()
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app):
        state["batcher"] = DynamicBatcher(predictor, config.max_batch, config.max_wait_ms,
                                          config.queue_size, on_batch=metrics.batch_size.observe)
        yield
        await asyncio.to_thread(state["batcher"].close)  # finish what is queued (SIGTERM too)

    app = FastAPI(title="utamoe", version="1", lifespan=lifespan,
                  description="Unified understanding and generation with task-aware MoE.")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        start, path = time.perf_counter(), request.url.path
        endpoint = path if path.startswith(("/v1/", "/health", "/metrics")) else "other"
        try:
            _check_request(request, config)
            response = await call_next(request)
        except APIError as err:
            response = _error(err.status, err.message, err.fields, err.headers)
        metrics.observe(endpoint, response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(APIError)
    async def api_error(request, err: APIError):
        return _error(err.status, err.message, err.fields, err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, err: RequestValidationError):
        fields = [{"field": ".".join(str(x) for x in e["loc"] if x != "body"), "message": e["msg"]}
                  for e in err.errors()]
        names = ", ".join(f["field"] for f in fields)
        return _error(422, f"invalid request: {names} (see fields; the schema is at /docs)", fields)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_dir, "queue": state["batcher"].depth,
                "tasks": {"text": [t for t in predictor.encoder.special.tasks
                                   if is_task(t) and get_task(t).output == "text"],
                          "image": [t for t in predictor.encoder.special.tasks
                                    if is_task(t) and get_task(t).output == "image"]}}

    @app.get("/metrics")
    async def prometheus():
        metrics.queue_depth.set(state["batcher"].depth)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    def decode_image(data: bytes | str, field: str) -> np.ndarray:
        from utamoe.serve.images import decode

        return decode(data, field, config.max_image_pixels, predictor.processor)

    def prompt(text: str, field: str) -> str:
        if not text.strip():
            raise APIError(422, f"{field} is empty", [{"field": field, "message": "give some text"}])
        if len(text) > config.max_prompt_chars:
            raise APIError(422, f"{field} is {len(text)} characters; the limit is "
                           f"{config.max_prompt_chars}", [{"field": field, "message": "too long"}])
        return text.strip()

    async def run(gen: list[GenRequest], body, stream: bool, shape):
        timeout = min(body.timeout_s or config.timeout_s, config.timeout_s)
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        jobs = [Job(r, deadline, trace=getattr(body, "trace", False),
                    on_step=(lambda e, k=k: loop.call_soon_threadsafe(events.put_nowait, (k, e)))
                    if stream else None) for k, r in enumerate(gen)]
        futures = []
        try:
            for job in jobs:
                futures.append(asyncio.wrap_future(state["batcher"].submit(job)))
        except QueueFull as err:
            for f in futures:
                f.cancel()
            raise APIError(503, f"busy: {err}; retry shortly", headers={"Retry-After": "1"}) from None

        async def results():
            _, pending = await asyncio.wait(futures, timeout=timeout)
            if pending:
                for job in jobs:
                    job.future.cancel()  # still queued: the batcher skips it and frees the slot
                raise APIError(504, f"no result within {timeout:g} s (the request's deadline)")
            try:
                done = [f.result() for f in futures]
            except DeadlinePassed:
                raise APIError(504, "the request waited past its deadline in the queue") from None
            metrics.count_tokens(done)
            return shape(done)

        if not stream:
            return await results()
        return StreamingResponse(_sse(events, results()), media_type="text/event-stream")

    def sampling(body, text: bool) -> SamplingConfig:
        return SamplingConfig(temperature=body.temperature, top_k=body.top_k, seed=body.seed,
                              cfg_scale=1.0 if text else body.cfg_scale,
                              max_new_tokens=getattr(body, "max_new_tokens", 32))

    async def answer(body: AnswerRequest, image: np.ndarray):
        if not is_task(body.task) or get_task(body.task).output != "text" \
                or body.task not in predictor.encoder.special.tasks:
            raise APIError(422, f"task {body.task!r} is not a text task this model knows",
                           [{"field": "task", "message": "use one of /health's tasks.text"}])
        question = prompt(body.question, "question")
        gen = [GenRequest(body.task, question, image, sampling(body, True))]
        return await run(gen, body, body.stream, lambda r: {"answer": r[0].text, "task": body.task})

    async def images(body, task: str, text: str, field: str, image: np.ndarray | None):
        text = prompt(text, field)
        base = sampling(body, False)
        gen = [GenRequest(task, text, image, SamplingConfig(**{**base.__dict__, "seed": base.seed + j}))
               for j in range(body.num_images)]  # image j uses seed + j, as `utamoe generate`

        def shape(res):
            out = {"images": [_png(r.image) for r in res], "seeds": [base.seed + j for j in range(len(res))]}
            if body.trace:
                out["trace"] = [r.trace for r in res]
                out["groups"] = list(predictor.model.config.moe.group_names) \
                    if predictor.model.config.moe is not None else []
            return out

        return await run(gen, body, body.stream, shape)

    @app.post("/v1/answer")
    async def answer_json(body: AnswerRequest):
        return await answer(body, decode_image(body.image, "image"))

    @app.post("/v1/generate")
    async def generate_json(body: GenerateRequest):
        return await images(body, "t2i", body.prompt, "prompt", None)

    @app.post("/v1/edit")
    async def edit_json(body: EditRequest):
        return await images(body, "edit", body.instruction, "instruction",
                            decode_image(body.image, "image"))

    @app.post("/v1/upload/answer")
    async def answer_upload(image: Annotated[UploadFile, File()], question: Annotated[str, Form()],
                            task: Annotated[str, Form()] = "vqa",
                            options: Annotated[str, Form()] = "{}"):
        body = _form_body(AnswerRequest, {"image": "-", "question": question, "task": task}, options)
        return await answer(body, decode_image(await image.read(), "image"))

    @app.post("/v1/upload/edit")
    async def edit_upload(image: Annotated[UploadFile, File()], instruction: Annotated[str, Form()],
                          options: Annotated[str, Form()] = "{}"):
        body = _form_body(EditRequest, {"image": "-", "instruction": instruction}, options)
        return await images(body, "edit", body.instruction, "instruction",
                            decode_image(await image.read(), "image"))

    return app


def _form_body(model, fields: dict, options: str):
    """A multipart form as the JSON body it stands for (`options`: the other fields as JSON)."""
    try:
        extra = json.loads(options or "{}")
        if not isinstance(extra, dict):
            raise ValueError("options must be a JSON object")
        return model(**{**extra, **fields})
    except (ValueError, ValidationError) as err:
        fields_ = [{"field": ".".join(str(x) for x in e["loc"]), "message": e["msg"]}
                   for e in err.errors()] if isinstance(err, ValidationError) else \
            [{"field": "options", "message": str(err)}]
        raise APIError(422, "invalid form: " + ", ".join(f["field"] for f in fields_), fields_) from None


def _check_request(request: Request, config: ServeConfig) -> None:
    if config.api_key and request.url.path.startswith(("/v1/", "/metrics")) \
            and request.headers.get("x-api-key") != config.api_key:
        raise APIError(401, "missing or wrong X-API-Key header")
    if request.method in ("POST", "PUT"):
        length = request.headers.get("content-length")
        if length is None:
            raise APIError(411, "send a Content-Length header (chunked bodies are not accepted)")
        if not length.isdigit() or int(length) > config.max_body_bytes:
            raise APIError(413, f"the body is {length} bytes; the limit is {config.max_body_bytes}")


async def _sse(events: asyncio.Queue, result):
    """Server-sent events: every step event as it comes, then the result (or the error)."""
    task = asyncio.ensure_future(result)
    while True:
        getter = asyncio.ensure_future(events.get())
        done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            k, (kind, value) = getter.result()
            yield f"event: {kind}\ndata: {json.dumps({'index': k, kind: value})}\n\n"
            continue
        getter.cancel()
        while not events.empty():
            k, (kind, value) = events.get_nowait()
            yield f"event: {kind}\ndata: {json.dumps({'index': k, kind: value})}\n\n"
        try:
            yield f"event: result\ndata: {json.dumps(task.result())}\n\n"
        except APIError as err:
            yield f"event: error\ndata: {json.dumps({'status': err.status, 'message': err.message})}\n\n"
        return
