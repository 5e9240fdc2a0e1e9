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
    GET  /v1/models, POST /v1/chat/completions, /v1/images/generations, /v1/images/edits
                         OpenAI-compatible (serve/openai_routes.py)

`"stream": true` turns a response into server-sent events: `token` events (the answer
so far) or `progress` events (codes done of the grid), then one `result` event.
Every request goes through the dynamic batcher (serve/batcher.py). Errors are JSON
`{"error": {"message", "fields"}}` with a 4xx status naming the field (unknown paths,
methods and unparsable bodies too); a full queue is 503 with Retry-After; a request past its
deadline is 504, and one whose client went away is dropped: either way its queue slot is
freed. No request names a file: images travel in the body. Requests with a body need a
Content-Length within `max_body_bytes` and must send it within `body_timeout_s` (408). The
request metrics are labelled by route (`other` for any other path).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from utamoe.serve.batcher import DynamicBatcher
from utamoe.serve.errors import APIError, error_response
from utamoe.serve.guard import Guard
from utamoe.serve.handlers import Handlers
from utamoe.serve.metrics import ServeMetrics
from utamoe.serve.openai_routes import add_openai_routes
from utamoe.serve.schemas import AnswerRequest, EditRequest, GenerateRequest

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
    body_timeout_s: float = 30.0  # a request body must arrive within this
    api_key: str | None = None


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

    _guard_and_report_errors(app, config, metrics)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        tasks = predictor.tasks
        return {"status": "ok", "model": model_dir, "queue": state["batcher"].depth,
                "tasks": {"text": [t for t, out in tasks.items() if out == "text"],
                          "image": [t for t, out in tasks.items() if out == "image"]}}

    @app.get("/metrics")
    async def prometheus():
        metrics.queue_depth.set(state["batcher"].depth)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    h = Handlers(predictor, config, metrics, state)

    @app.post("/v1/answer")
    async def answer_json(body: AnswerRequest, request: Request):
        return await h.answer(body, await h.decode_image(body.image, "image"), request)

    @app.post("/v1/generate")
    async def generate_json(body: GenerateRequest, request: Request):
        return await h.images(body, "t2i", body.prompt, "prompt", None, request)

    @app.post("/v1/edit")
    async def edit_json(body: EditRequest, request: Request):
        return await h.images(body, "edit", body.instruction, "instruction",
                              await h.decode_image(body.image, "image"), request)

    @app.post("/v1/upload/answer")
    async def answer_upload(image: Annotated[UploadFile, File()], question: Annotated[str, Form()],
                            request: Request, task: Annotated[str, Form()] = "vqa",
                            options: Annotated[str, Form()] = "{}"):
        body = _form_body(AnswerRequest, {"image": "-", "question": question, "task": task}, options)
        return await h.answer(body, await h.decode_image(await image.read(), "image"), request)

    @app.post("/v1/upload/edit")
    async def edit_upload(image: Annotated[UploadFile, File()], instruction: Annotated[str, Form()],
                          request: Request, options: Annotated[str, Form()] = "{}"):
        body = _form_body(EditRequest, {"image": "-", "instruction": instruction}, options)
        return await h.images(body, "edit", body.instruction, "instruction",
                              await h.decode_image(await image.read(), "image"), request)

    add_openai_routes(app, h, predictor)  # /v1/models, /v1/chat/completions, /v1/images/*
    return app


def _guard_and_report_errors(app: FastAPI, config: ServeConfig, metrics: ServeMetrics) -> None:
    """Every request checked (API key, body size and arrival) and timed (serve/guard.py); every
    error answered as JSON with its status and the fields at fault."""

    routes: set[str] = set()

    def known() -> set[str]:
        if not routes:
            routes.update(getattr(r, "path", "") for r in app.routes)
        return routes

    app.add_middleware(Guard, config=config, metrics=metrics, routes=known)

    @app.exception_handler(APIError)
    async def api_error(request, err: APIError):
        return error_response(err.status, err.message, err.fields, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, err: StarletteHTTPException):  # 404, 405, unparsable bodies
        return error_response(err.status_code, str(err.detail), headers=getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, err: RequestValidationError):
        fields = [{"field": ".".join(str(x) for x in e["loc"] if x != "body"), "message": e["msg"]}
                  for e in err.errors()]
        names = ", ".join(f["field"] for f in fields)
        return error_response(422, f"invalid request: {names} (see fields; the schema is at /docs)",
                              fields)


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
