"""Every request checked and timed before the app sees it: the API key, the body's declared and
actual size, a body that must arrive within `body_timeout_s`, and one Prometheus observation
labelled by route. A plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which hides a
client's disconnect from the routes: the server could not free the queue slots of a client
that went away)."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request

from utamoe.serve.errors import APIError, error_response


class Guard:
    def __init__(self, app, config, metrics, routes):
        # `routes()`: the app's own paths, the only values of the endpoint label (a label per
        # distinct path would let anyone grow /metrics, and memory, without bound).
        self.app, self.config, self.metrics, self.routes = app, config, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), {"code": 500}
        endpoint = scope["path"] if scope["path"] in self.routes() else "other"

        async def sent(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            request = Request(scope)
            check_request(request, self.config)
            if request.method in ("POST", "PUT"):
                receive = await self._body(receive)
                if receive is None:  # the client went away while sending
                    status["code"] = 499
                    return
            await self.app(scope, receive, sent)
        except APIError as err:
            await error_response(err.status, err.message, err.fields, err.headers)(scope, receive, sent)
        finally:
            self.metrics.observe(endpoint, status["code"], time.perf_counter() - start)

    async def _body(self, receive):
        """The whole body, read within the deadline; then a `receive` that gives it to the app
        once and the client's own messages (a disconnect) after."""
        chunks, size, end = [], 0, time.monotonic() + self.config.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(end - time.monotonic(), 0))
            except asyncio.TimeoutError:
                raise APIError(408, f"the request body did not arrive within "
                               f"{self.config.body_timeout_s:g} s") from None
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.config.max_body_bytes:
                raise APIError(413, f"the body is over the limit of {self.config.max_body_bytes} bytes")
            if not message.get("more_body", False):
                break
        body, given = b"".join(chunks), False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


def check_request(request: Request, config) -> None:
    # The key comes as X-API-Key or, as OpenAI's clients send it, `Authorization: Bearer KEY`.
    bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if config.api_key and request.url.path.startswith(("/v1/", "/metrics")) \
            and config.api_key not in (request.headers.get("x-api-key"), bearer):
        raise APIError(401, "missing or wrong API key (send X-API-Key: KEY or "
                       "Authorization: Bearer KEY)")
    if request.method in ("POST", "PUT"):
        length = request.headers.get("content-length")
        if length is None:
            raise APIError(411, "send a Content-Length header (chunked bodies are not accepted)")
        if not length.isdigit() or int(length) > config.max_body_bytes:
            raise APIError(413, f"the body is {length} bytes; the limit is {config.max_body_bytes}")
