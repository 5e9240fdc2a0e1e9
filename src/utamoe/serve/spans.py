"""Task spans in the server's answers, executed: what `utamoe chat` does on a terminal, for the web
page and any client that asks (`"execute_spans": true` on /v1/chat/completions).

A UnifiedMLLM model answers with task spans (`<edit>make it blue<box>[...]</box></edit>`); the
span router (utamoe.tasks_exec) hands each to the executor of its tag (the defaults: t2i, edit,
seg, layout on the unified model), whose images and masks come back as PNG base64 and whose
failures come back as the span's error, never as the request's. Executors that run the model go
through the Predictor's own calls (its lock), in a worker thread so the event loop keeps
serving; they see the conversation's user images, oldest first (the latest is what an edit
changes).
"""

from __future__ import annotations

import asyncio

import numpy as np

from utamoe.serve.handlers import _png
from utamoe.tasks_exec import ExecContext, SpanOutcome, SpanRouter, executors_from_config


class SpanRunner:
    def __init__(self, predictor):
        self.predictor = predictor
        self._router: SpanRouter | None = None

    @property
    def router(self) -> SpanRouter:
        if self._router is None:  # built on first use: most servers never see a span
            self._router = SpanRouter(executors_from_config(None, ExecContext(self.predictor)))
        return self._router

    async def run(self, text: str, images: list[np.ndarray]) -> list[dict]:
        """Every span and parse error of `text`, executed, as JSON."""
        _, outcomes = await asyncio.to_thread(self.router.run, text, images)
        return [outcome_json(o) for o in outcomes]


def outcome_json(o: SpanOutcome) -> dict:
    out = {"tag": o.tag, "text": o.text, "start": o.start, "end": o.end,
           "executor": o.executor, "seconds": round(o.seconds, 3), "error": None,
           "images": [], "masks": [], "result_text": None}
    if o.error is not None:
        out["error"] = {"kind": o.error.kind, "message": o.error.message}
        return out
    out["images"] = [_png(img) for img in o.result.images]
    out["masks"] = [_png(np.stack([m] * 3, axis=-1)) for m in o.result.masks]
    out["result_text"] = o.result.text
    return out
