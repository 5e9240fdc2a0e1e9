"""The span router: parse a model's answer into task spans and run each through the executor of
its tag (not to be confused with TA-MoE's group router, utamoe.moe.routers, which routes tokens).

    from utamoe.tasks_exec import ExecContext, SpanRouter, executors_from_config
    router = SpanRouter(executors_from_config({"edit": "box_edit"}, ExecContext(predictor)))
    parsed, outcomes = router.run(answer_text, images=[image])
    for o in outcomes:
        print(o.tag, o.error.message if o.error else o.result.images)

Every span and every parse error becomes one `SpanOutcome`, in the order they appear in
the text: an executor that raises, returns something that is not an `ExecResult`, or
returns one that breaks the contract (wrong dtype, no output) becomes an outcome whose
`error` says which tag, which span text and what went wrong, so one bad span never stops
the others, and nothing the model asked for is dropped without a word; one that runs past
`timeout_s` becomes a `timeout` outcome and the caller goes on. KeyboardInterrupt and
SystemExit still stop the caller: they are not the executor's failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from utamoe.tasks_exec.executors import ExecInputError, ExecRequest, ExecResult, Executor
from utamoe.text.spans import ParsedResponse, SpanError, TaskSpan, parse_response


@dataclass
class SpanOutcome:
    """What became of one span (or one parse error): `result` when it ran, `error` when it did
    not; `tag`, `text` and [start, end) say which span it is."""

    tag: str | None
    text: str
    start: int
    end: int
    result: ExecResult | None = None
    error: SpanError | None = None
    executor: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class SpanRouter:
    def __init__(self, executors: Mapping[str, Executor], timeout_s: float | None = 300.0):
        bad = [t for t, ex in executors.items() if not callable(ex)]
        if bad:
            raise TypeError(f"executors for {bad} are not callable; build them with "
                            "utamoe.tasks_exec.executors_from_config")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds or None, got {timeout_s}")
        self.executors = dict(executors)
        # An executor that runs longer is reported as a `timeout` outcome and the caller goes
        # on (the chat stays open); Python cannot stop a thread, so it finishes in the background.
        self.timeout_s = timeout_s

    @property
    def tags(self) -> tuple[str, ...]:
        """The tags this router has executors for: the tag tokens its parser knows."""
        return tuple(self.executors)

    def parse(self, text: str) -> ParsedResponse:
        return parse_response(text, self.tags)

    def run(self, text: str, images: Sequence[np.ndarray] = ()) -> tuple[ParsedResponse, list[SpanOutcome]]:
        """Parse and dispatch in one call."""
        parsed = self.parse(text)
        return parsed, self.dispatch(parsed, images)

    def dispatch(self, parsed: ParsedResponse, images: Sequence[np.ndarray] = ()) -> list[SpanOutcome]:
        """One outcome per span and per parse error, in text order."""
        frozen, problem = _read_only(images)
        items: list[TaskSpan | SpanError] = [*parsed.spans, *parsed.errors]
        items.sort(key=lambda x: (x.start, isinstance(x, TaskSpan)))
        out = []
        for item in items:
            if isinstance(item, SpanError):
                out.append(SpanOutcome(item.tag, item.text, item.start, item.end, error=item))
            elif problem:
                out.append(_failed(item, "bad_input", problem))
            else:
                out.append(self._execute(item, frozen))
        return out

    def _execute(self, span: TaskSpan, images: tuple[np.ndarray, ...]) -> SpanOutcome:
        ex = self.executors.get(span.tag)
        if ex is None:
            return _failed(span, "no_executor", f"no executor for <{span.tag}> (this router has "
                           f"{', '.join(self.tags) or 'none'}); configure one under "
                           f"executors.{span.tag}")
        name = getattr(ex, "name", type(ex).__name__)
        t0 = time.perf_counter()
        try:
            result = _within(self.timeout_s, ex, ExecRequest.of(span, images))
        except TimeoutError:
            return _failed(span, "timeout", f"executor {name!r} did not finish <{span.tag}> "
                           f"{span.text!r} within {self.timeout_s:g} s", executor=name)
        except ExecInputError as err:
            return _failed(span, "executor_error", f"executor {name!r} cannot run <{span.tag}> "
                           f"{span.text!r}: {err}", err, name)
        except Exception as err:  # any executor failure is reported, never raised
            return _failed(span, "executor_error", f"executor {name!r} failed on <{span.tag}> "
                           f"{span.text!r}: {type(err).__name__}: {err}", err, name)
        seconds = time.perf_counter() - t0
        if not isinstance(result, ExecResult):
            return _failed(span, "bad_result", f"executor {name!r} returned a "
                           f"{type(result).__name__} for <{span.tag}> {span.text!r}, not an "
                           "ExecResult", executor=name)
        problems = result.problems()
        if problems:
            return _failed(span, "bad_result", f"executor {name!r} returned a bad result for "
                           f"<{span.tag}> {span.text!r}: {'; '.join(problems)}", executor=name)
        return SpanOutcome(span.tag, span.text, span.start, span.end, result=result,
                           executor=name, seconds=seconds)


def _within(timeout_s: float | None, fn, *args):
    """fn(*args), or TimeoutError after `timeout_s` (the call goes on in a daemon thread)."""
    if timeout_s is None:
        return fn(*args)
    box: dict = {}

    def call() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as err:  # handed to the caller as it is
            box["error"] = err

    worker = threading.Thread(target=call, name="utamoe-executor", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["result"]


def _failed(span: TaskSpan, kind: str, message: str, err: BaseException | None = None,
            executor: str = "") -> SpanOutcome:
    detail = f"{type(err).__name__}: {err}" if err is not None else ""
    error = SpanError(kind, message, span.start, span.end, span.tag, span.text, detail)
    return SpanOutcome(span.tag, span.text, span.start, span.end, error=error, executor=executor)


def _read_only(images: Sequence[np.ndarray]) -> tuple[tuple[np.ndarray, ...], str]:
    """Read-only views of the conversation's images (an executor cannot change them), or a
    message saying which one breaks the HxWx3 uint8 contract."""
    out = []
    for k, img in enumerate(images or ()):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 \
                or img.shape[2] != 3:
            what = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            return (), (f"conversation image {k} is {what}; executors take HxWx3 uint8 arrays "
                        "(convert it with utamoe.vision.processor.to_rgb)")
        view = img.view()
        view.flags.writeable = False
        out.append(view)
    return tuple(out), ""
