"""What the API's routes do once a request is parsed: check its prompt and image, turn it into
checked generation requests (the predictor's `request`, the same checks as every other caller's)
for the dynamic batcher, wait for the results within the request's
deadline (or stream their progress as server-sent events), and shape the response.
serve/app.py holds the routes, the middleware and the error handlers; one `Handlers` per app."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import numpy as np
from fastapi.responses import StreamingResponse

from utamoe.infer import InputError, Request, SamplingConfig
from utamoe.serve.batcher import DeadlinePassed, Job, QueueFull
from utamoe.serve.errors import APIError
from utamoe.serve.images import decode
from utamoe.serve.schemas import AnswerRequest


class Handlers:
    """The request logic shared by the JSON and the upload routes of one app; `state` holds
    the app's batcher once the app's lifespan has started it."""

    def __init__(self, predictor, config, metrics, state: dict):
        self.predictor, self.config, self.metrics, self.state = predictor, config, metrics, state

    async def decode_image(self, data: bytes | str, field: str) -> np.ndarray:
        """The request's image, decoded in a worker thread: decoding takes time (and a large
        image memory), and on the event loop it would hold every other request, /health too."""
        return await asyncio.to_thread(decode, data, field, self.config.max_image_pixels,
                                       self.predictor.processor)

    def prompt(self, text: str, field: str) -> str:
        if not text.strip():
            raise APIError(422, f"{field} is empty", [{"field": field, "message": "give some text"}])
        if len(text) > self.config.max_prompt_chars:
            raise APIError(422, f"{field} is {len(text)} characters; the limit is "
                           f"{self.config.max_prompt_chars}", [{"field": field, "message": "too long"}])
        return text.strip()

    def request(self, task: str, text: str, field: str, image, sampling) -> Request:
        """A generation request, checked by the predictor as any other caller's (its task, its
        length against the model's positions, its sampling); a failure is a 422 on `field`."""
        try:
            return self.predictor.request(task, text, image, sampling)
        except InputError as err:
            raise APIError(422, f"{field}: {err}", [{"field": field, "message": str(err)}]) from None

    async def run(self, gen: list[Request], body, stream: bool, shape, client=None):
        """Queue the requests, wait for their results within the deadline (freeing their slots
        if it passes or `client`, the HTTP request, disconnects) and shape them."""
        batcher = self.state["batcher"]
        if len(gen) > batcher.queue_size:  # would be refused at any load: not "retry shortly"
            raise APIError(422, f"{len(gen)} images is more than this server queues at once "
                           f"({batcher.queue_size}, --queue-size); ask for fewer",
                           [{"field": "num_images", "message": f"at most {batcher.queue_size}"}])
        timeout = min(body.timeout_s or self.config.timeout_s, self.config.timeout_s)
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        jobs = [Job(r, deadline, trace=getattr(body, "trace", False),
                    on_step=(lambda e, k=k: loop.call_soon_threadsafe(events.put_nowait, (k, e)))
                    if stream else None) for k, r in enumerate(gen)]
        futures = []
        try:
            for job in jobs:
                futures.append(asyncio.wrap_future(batcher.submit(job)))
        except QueueFull as err:
            for f in futures:
                f.cancel()
            raise APIError(503, f"busy: {err}; retry shortly", headers={"Retry-After": "1"}) from None

        async def results():
            try:
                pending = await _wait(futures, timeout, client)
            finally:  # a timeout, a client gone, a cancelled handler: free the queued slots
                if not all(f.done() for f in futures):
                    for job in jobs:
                        job.future.cancel()  # still queued: the batcher skips it
            if pending:
                raise APIError(504, f"no result within {timeout:g} s (the request's deadline)")
            try:
                done = [f.result() for f in futures]
            except DeadlinePassed:
                raise APIError(504, "the request waited past its deadline in the queue") from None
            self.metrics.count_tokens(done)
            return shape(done)

        if not stream:
            return await results()
        return StreamingResponse(_sse(events, results()), media_type="text/event-stream")

    def sampling(self, body, text: bool) -> SamplingConfig:
        return SamplingConfig(temperature=body.temperature, top_k=body.top_k, seed=body.seed,
                              cfg_scale=1.0 if text else body.cfg_scale,
                              max_new_tokens=getattr(body, "max_new_tokens", 32))

    async def answer(self, body: AnswerRequest, image: np.ndarray, client=None):
        if self.predictor.tasks.get(body.task) != "text":
            raise APIError(422, f"task {body.task!r} is not a text task this model knows",
                           [{"field": "task", "message": "use one of /health's tasks.text"}])
        question = self.prompt(body.question, "question")
        gen = [self.request(body.task, question, "question", image, self.sampling(body, True))]
        return await self.run(gen, body, body.stream,
                              lambda r: {"answer": r[0].text, "task": body.task}, client)

    async def images(self, body, task: str, text: str, field: str, image: np.ndarray | None,
                     client=None):
        text = self.prompt(text, field)
        base = self.sampling(body, False)
        gen = [self.request(task, text, field, image,
                            SamplingConfig(**{**base.__dict__, "seed": base.seed + j}))
               for j in range(body.num_images)]  # image j uses seed + j, as `utamoe generate`

        def shape(res):
            out = {"images": [_png(r.image) for r in res], "seeds": [base.seed + j for j in range(len(res))]}
            if body.trace:
                out["trace"] = [r.trace for r in res]
                out["groups"] = self.predictor.group_names
            return out

        return await self.run(gen, body, body.stream, shape, client)


async def _wait(futures: list, timeout: float, client) -> set:
    """Wait for `futures` until `timeout`; returns those still pending. A client that goes away
    (checked every 0.25 s) ends the wait (499, nginx's "client closed request": nobody reads it)."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        step = left if client is None else min(left, 0.25)
        _, pending = await asyncio.wait(futures, timeout=max(step, 0))
        if not pending or left <= step:
            return pending
        if await client.is_disconnected():
            raise APIError(499, "the client disconnected before its result was ready")


def _png(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def _sse(events: asyncio.Queue, result):
    """Server-sent events: every step event as it comes, then the result (or the error). A
    client that goes away closes this generator: the result's wait is cancelled with it, which
    frees the request's queue slots."""
    task = asyncio.ensure_future(result)
    try:
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
                yield (f"event: error\ndata: "
                       f"{json.dumps({'status': err.status, 'message': err.message})}\n\n")
            return
    finally:
        task.cancel()
