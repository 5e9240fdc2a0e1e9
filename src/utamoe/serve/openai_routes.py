"""OpenAI-compatible endpoints beside the server's own API, through the same checks, the same
dynamic batcher and the same predictor (serve/handlers.py), so the official `openai` clients and
the harnesses built on them (lmms-eval's `openai_compatible`) use a utamoe model unchanged.

    GET  /v1/models                 `utamoe` and `utamoe:TASK` for each task of the model
    POST /v1/chat/completions       messages with text and image_url parts (data URLs or base64),
                                    multi-turn, temperature / top_p / top_k / max_tokens / n /
                                    seed / stop, `stream` as OpenAI's chunks, usage counts
    POST /v1/images/generations     prompt, n, size (the model's own), response_format b64_json
    POST /v1/images/edits           multipart: image file, prompt, n, size

Which task answers a chat: the model id's (`utamoe:vqa`), else `dialog` when the model has
conversations, else `vqa`. One user message is the task's prompt, exactly as /v1/answer takes it
(the same tokens: a single-turn conversation is the task's prompt layout); several messages are a
conversation (Predictor.conversation_request). System messages are put in front of the first
user message's text. Choice j samples with seed + j (seed 0 when none is given), as the images
do. `usage` counts the prompt's tokens once (markers and image slots included) and every
generated token (an answer's <eos> included; an image's codes). Errors are OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}` (plus `fields`), 400 for a bad request.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from functools import wraps

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from utamoe import __version__
from utamoe.data.conversations import Turn
from utamoe.infer import InputError, SamplingConfig
from utamoe.serve.errors import APIError
from utamoe.serve.handlers import _png
from utamoe.serve.openai_schemas import (
    ChatRequest,
    ImageEditOptions,
    ImageGenerationRequest,
    ImagePart,
    Message,
)
from utamoe.serve.spans import SpanRunner

MODEL_ID = "utamoe"
FINGERPRINT = f"utamoe-{__version__}"


@dataclasses.dataclass
class _RunOptions:
    """What Handlers.run reads of a body besides the requests."""

    timeout_s: float | None = None
    trace: bool = False


def add_openai_routes(app: FastAPI, h, predictor) -> None:
    """The OpenAI-compatible routes on `app`, built on the app's Handlers `h`."""
    spans = SpanRunner(predictor)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(m) for m in model_ids(predictor)]}

    @app.get("/v1/models/{model_id}")
    @_openai_errors
    async def model(model_id: str):
        if model_id not in model_ids(predictor):
            raise _not_found(model_id)
        return _model_card(model_id)

    @app.post("/v1/chat/completions")
    @_openai_errors
    async def chat(request: Request):
        body = _validated(ChatRequest, await _json(request))
        return await chat_completion(h, predictor, body, spans, request)

    @app.post("/v1/images/generations")
    @_openai_errors
    async def generations(request: Request):
        body = _validated(ImageGenerationRequest, await _json(request))
        return await _images(h, predictor, body, "t2i", None, request)

    @app.post("/v1/images/edits")
    @_openai_errors
    async def edits(request: Request):
        fields, image = await _edit_form(request)
        body = _validated(ImageEditOptions, fields)
        return await _images(h, predictor, body, "edit", await h.decode_image(image, "image"),
                             request)


# ---------------------------------------------------------------------- models


def model_ids(predictor) -> list[str]:
    return [MODEL_ID, *(f"{MODEL_ID}:{t}" for t in predictor.tasks)]


def _model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "utamoe"}


def _not_found(model_id) -> APIError:
    err = APIError(404, f"the model {model_id!r} does not exist here; GET /v1/models lists "
                   f"{MODEL_ID!r} and {MODEL_ID}:TASK for the model's tasks",
                   [{"field": "model", "message": "not served here"}])
    err.code = "model_not_found"
    return err


def chat_task(predictor, model_id: str) -> str:
    """The text task a chat model id names (see the module docstring)."""
    tasks = predictor.tasks
    if model_id == MODEL_ID:
        return predictor.default_text_task
    name, _, task = model_id.partition(":")
    if name != MODEL_ID or task not in tasks:
        raise _not_found(model_id)
    if tasks[task] != "text":
        raise APIError(400, f"{model_id} draws images; use /v1/images/generations or "
                       "/v1/images/edits", [{"field": "model", "message": "not a text task"}])
    return task


# ---------------------------------------------------------------------- chat


async def chat_completion(h, predictor, body: ChatRequest, spans: SpanRunner | None = None,
                          client=None):
    task = chat_task(predictor, body.model)
    if body.stream and (body.trace or body.execute_spans):
        raise _bad("stream", "trace and execute_spans come with the whole answer; leave stream "
                   "out to use them")
    turns = await _turns(h, body.messages)
    max_tokens = body.max_completion_tokens or body.max_tokens or 32
    base = SamplingConfig(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                          seed=body.seed or 0, max_new_tokens=max_tokens)
    gen = [_chat_request(h, predictor, task, turns, dataclasses.replace(base, seed=base.seed + j))
           for j in range(body.n)]
    prompt_tokens = predictor.prompt_tokens(gen[0])

    def shape(results):
        return {"texts": [r.text for r in results], "tokens": [r.tokens for r in results],
                "stopped": [r.stopped for r in results], "traces": [r.trace for r in results]}

    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    native = await h.run(gen, _RunOptions(trace=body.trace), body.stream, shape, client)
    if body.stream:
        return StreamingResponse(_chunks(native.body_iterator, body, cid, created, prompt_tokens),
                                 media_type="text/event-stream")
    choices = []
    for j, (text, stopped) in enumerate(zip(native["texts"], native["stopped"])):
        text, hit = _cut(text, body.stop)
        choices.append({"index": j, "message": {"role": "assistant", "content": text,
                                                "refusal": None},
                        "logprobs": None, "finish_reason": _finish(stopped or hit)})
        if body.trace:
            choices[-1]["trace"] = native["traces"][j]
        if body.execute_spans and spans is not None:
            images = [t.image for t in turns if t.image is not None]
            choices[-1]["spans"] = await spans.run(text, images)
    out = {"id": cid, "object": "chat.completion", "created": created, "model": body.model,
           "system_fingerprint": FINGERPRINT, "choices": choices,
           "usage": _usage(prompt_tokens, sum(native["tokens"]))}
    if body.trace:
        out["groups"] = predictor.group_names
    return out


async def _turns(h, messages: list[Message]) -> list[Turn]:
    """The conversation as utamoe turns: system text in front of the first user message, one
    image at most per user message, none on an assistant's."""
    system, turns = [], []
    for i, m in enumerate(messages):
        parts = [m.content] if isinstance(m.content, str) else m.content
        text = " ".join(p if isinstance(p, str) else p.text for p in parts
                        if not isinstance(p, ImagePart)).strip()
        images = [(k, p) for k, p in enumerate(parts) if isinstance(p, ImagePart)]
        if m.role in ("system", "developer"):
            if images:
                raise _bad(f"messages.{i}.content", "a system message carries no image")
            system.append(text)
            continue
        if len(images) > 1 or (images and m.role == "assistant"):
            raise _bad(f"messages.{i}.content", "give at most one image per user message (and "
                       "none in an assistant's): the model reads one image per turn")
        image = None
        if images:
            k, part = images[0]
            image = await h.decode_image(part.image_url.url, f"messages.{i}.content.{k}.image_url.url")
        if m.role == "user" and not any(t.role == "user" for t in turns) and system:
            text = " ".join([*system, text]).strip()
        turns.append(Turn(m.role, text, image))
    if not turns or turns[-1].role != "user":
        raise _bad("messages", "the last message must be the user's (the model answers it)")
    h.prompt(turns[-1].text, f"messages.{len(messages) - 1}.content")
    return turns


def _chat_request(h, predictor, task: str, turns: list[Turn], sampling: SamplingConfig):
    if len(turns) == 1:  # the task's prompt, as /v1/answer takes it
        return h.request(task, turns[0].text, "messages", turns[0].image, sampling)
    try:
        return predictor.conversation_request(turns, task, sampling)
    except InputError as err:
        raise _bad("messages", str(err)) from None


def _cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to its first stop string, and whether one was found."""
    cuts = [text.find(s) for s in stops if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


def _finish(stopped: bool) -> str:
    return "stop" if stopped else "length"


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


async def _chunks(native, body: ChatRequest, cid: str, created: int, prompt_tokens: int):
    """The server's own events (serve/handlers.py: `token` with the text so far, then `result`
    or `error`) as OpenAI's chat.completion.chunk events, ending with `data: [DONE]`. With stop
    strings, the last characters that could begin one are held back until they cannot."""
    hold = max((len(s) for s in body.stop), default=1) - 1
    sent, ended = [""] * body.n, [False] * body.n

    def chunk(delta: dict, index: int, finish: str | None = None) -> str:
        return _data({"id": cid, "object": "chat.completion.chunk", "created": created,
                      "model": body.model, "system_fingerprint": FINGERPRINT,
                      "choices": [{"index": index, "delta": delta, "logprobs": None,
                                   "finish_reason": finish}]})

    def more(k: int, text: str, final: bool) -> str | None:
        text, hit = _cut(text, body.stop)
        ended[k] = ended[k] or hit
        shown = text if final or hit else text[:max(len(text) - hold, 0)]
        if not shown.startswith(sent[k]) or shown == sent[k]:
            return None  # nothing new (or a re-tokenised prefix that changed: wait for more)
        new, sent[k] = shown[len(sent[k]):], shown
        return chunk({"content": new}, k)

    for k in range(body.n):
        yield chunk({"role": "assistant", "content": ""}, k)
    async for raw in native:
        kind, data = _event(raw)
        if kind == "token" and not ended[data["index"]]:
            out = more(data["index"], data["token"], False)
            if out:
                yield out
        elif kind == "result":
            for k, (text, stopped) in enumerate(zip(data["texts"], data["stopped"])):
                out = more(k, text, True)
                if out:
                    yield out
                yield chunk({}, k, _finish(stopped or ended[k]))
            if body.stream_options and body.stream_options.include_usage:
                yield _data({"id": cid, "object": "chat.completion.chunk", "created": created,
                             "model": body.model, "system_fingerprint": FINGERPRINT,
                             "choices": [], "usage": _usage(prompt_tokens, sum(data["tokens"]))})
        elif kind == "error":
            yield _data(_error_body(data["status"], data["message"]))
    yield "data: [DONE]\n\n"


def _event(raw: str) -> tuple[str, dict]:
    kind, data = "", "{}"
    for line in raw.splitlines():
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            data = line[len("data: "):]
    return kind, json.loads(data)


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


# ---------------------------------------------------------------------- images


async def _images(h, predictor, body, task: str, image, client=None):
    if body.model not in (None, MODEL_ID, f"{MODEL_ID}:{task}"):
        if body.model in model_ids(predictor):
            raise _bad("model", f"{body.model} is not the {task} task this endpoint runs; "
                       f"use {MODEL_ID} or {MODEL_ID}:{task}")
        raise _not_found(body.model)
    side = predictor.processor.size
    if body.size not in (None, "auto", f"{side}x{side}"):
        raise _bad("size", f"this model draws {side}x{side} images; ask for size "
                   f"{side}x{side} (or leave size out)")
    prompt = h.prompt(body.prompt, "prompt")
    base = SamplingConfig(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                          cfg_scale=body.cfg_scale, seed=body.seed)
    gen = [h.request(task, prompt, "prompt", image, dataclasses.replace(base, seed=body.seed + j))
           for j in range(body.n)]
    prompt_tokens = predictor.prompt_tokens(gen[0])

    def shape(results):
        out = {"created": int(time.time()),
               "data": [{"b64_json": _png(r.image), "revised_prompt": None} for r in results],
               "usage": {"input_tokens": prompt_tokens,
                         "output_tokens": sum(r.tokens for r in results),
                         "total_tokens": prompt_tokens + sum(r.tokens for r in results)},
               "seeds": [body.seed + j for j in range(len(results))]}
        if body.trace:
            out["trace"] = [r.trace for r in results]
            out["groups"] = predictor.group_names
        return out

    return await h.run(gen, _RunOptions(trace=body.trace), False, shape, client)


async def _edit_form(request: Request) -> tuple[dict, bytes]:
    """The multipart form of /v1/images/edits: its fields, and the image file's bytes."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise _bad("image", "send the image as a multipart/form-data file field `image`")
    form = await request.form()
    files = [v for k, v in form.multi_items() if k in ("image", "image[]") and hasattr(v, "read")]
    if "mask" in form:
        raise _bad("mask", "masks are not supported; say in the prompt what to change")
    if len(files) != 1:
        raise _bad("image", f"give exactly one image file (got {len(files)})")
    fields = {k: v for k, v in form.multi_items() if k not in ("image", "image[]")}
    bad = [k for k, v in fields.items() if not isinstance(v, str)]
    if bad:
        raise _bad(bad[0], "a file where a text field belongs")
    return fields, await files[0].read()


# ---------------------------------------------------------------------- bodies and errors


async def _json(request: Request) -> dict:
    try:
        data = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _bad(None, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise _bad(None, "the body must be a JSON object")
    return data


def _validated(model: type[BaseModel], data: dict):
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        fields = [{"field": ".".join(str(x) for x in e["loc"]), "message": e["msg"]}
                  for e in err.errors()]
        raise APIError(400, f"{field}: {first['msg']}", fields) from None


def _bad(field: str | None, message: str) -> APIError:
    return APIError(400, f"{field}: {message}" if field else message,
                    [{"field": field, "message": message}] if field else [])


def _error_body(status: int, message: str, param: str | None = None, code: str | None = None,
                fields: list | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind, code = "authentication_error", code or "invalid_api_key"
    return {"error": {"message": message, "type": kind, "param": param, "code": code,
                      "fields": fields or []}}


def openai_error(err: APIError) -> JSONResponse:
    """An APIError in OpenAI's shape (a 422 of the shared checks is OpenAI's 400)."""
    status = 400 if err.status == 422 else err.status
    param = err.fields[0]["field"] if err.fields else None
    return JSONResponse(_error_body(status, err.message, param, getattr(err, "code", None),
                                    err.fields), status_code=status, headers=err.headers)


def _openai_errors(route):
    @wraps(route)
    async def wrapped(*args, **kwargs):
        try:
            return await route(*args, **kwargs)
        except APIError as err:
            return openai_error(err)
    return wrapped
