"""Dynamic batching: concurrent requests grouped into one mixed decoding batch.

Requests wait in a bounded queue; one worker thread takes the first, keeps
collecting until `max_batch` requests or `max_wait_ms` have passed, drops those
whose deadline already passed (their slot is freed and their caller told), and runs
the rest as one `Predictor.run` call (the predictor's own door, with its lock): understanding
and generation requests in the same forward passes, the TA-MoE layers routing each row to
its group, each request drawing from its own generator (utamoe.infer.engine). A full queue
refuses at once (`QueueFull`, the server's 503). A batch that fails is run again request by
request, so one bad request fails alone. `close()` stops taking requests and finishes the
ones already queued.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from utamoe.infer.engine import Request


class QueueFull(RuntimeError):
    """The queue holds `queue_size` requests already."""


class DeadlinePassed(RuntimeError):
    """The request waited past its deadline; it was not run."""


@dataclass
class Job:
    request: Request
    deadline: float  # time.monotonic() seconds
    trace: bool = False  # the caller wants the routing trace in its response
    on_step: Callable[[tuple], None] | None = None
    future: Future = field(default_factory=Future)
    queued: bool = field(default=False, repr=False)  # holds a queue slot (DynamicBatcher)


class DynamicBatcher:
    def __init__(self, predictor, max_batch: int = 16, max_wait_ms: float = 10.0,
                 queue_size: int = 64, on_batch: Callable[[int], None] | None = None):
        self.predictor, self.max_batch, self.max_wait = predictor, max_batch, max_wait_ms / 1000
        # Unbounded underneath (so the stop sentinel never blocks); `submit` enforces the size.
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.queue_size = queue_size
        # Jobs waiting for the worker that nobody gave up on: a cancelled job (its client gave
        # up or went away) frees its slot at once, not when the worker reaches it.
        self._waiting = 0
        self._submit_lock = threading.Lock()
        self.on_batch = on_batch
        self._closing = threading.Event()
        self._worker = threading.Thread(target=self._loop, name="utamoe-batcher", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        return self._waiting

    def submit(self, job: Job) -> Future:
        with self._submit_lock:
            if self._closing.is_set():
                raise QueueFull("the server is shutting down")
            if self._waiting >= self.queue_size:
                raise QueueFull(f"{self.queue_size} requests are waiting")
            self._waiting, job.queued = self._waiting + 1, True
            self.jobs.put_nowait(job)
        job.future.add_done_callback(lambda _, job=job: self._release(job))
        return job.future

    def _release(self, job: Job) -> None:
        """The job's slot is free: the worker took it, or its caller cancelled it."""
        with self._submit_lock:
            if job.queued:
                self._waiting, job.queued = self._waiting - 1, False

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the worker."""
        self._closing.set()
        self.jobs.put(None)
        self._worker.join(timeout)

    def _collect(self, first: Job) -> list[Job]:
        batch, end = [first], time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            left = end - time.monotonic()
            try:
                job = self.jobs.get(timeout=max(left, 0)) if left > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:  # close(): run this batch, then stop
                self.jobs.put(None)
                break
            batch.append(job)
        return batch

    def _loop(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            now = time.monotonic()
            live = []
            for job in self._collect(first):
                self._release(job)
                # A cancelled job (its caller gave up) is dropped; from here on a job cannot be
                # cancelled any more, so its result can always be set.
                if not job.future.set_running_or_notify_cancel():
                    continue
                if job.deadline < now:
                    job.future.set_exception(DeadlinePassed("waited past its deadline"))
                    continue
                live.append(job)
            if live:
                self._run(live)

    def _run(self, jobs: list[Job]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(jobs))
        def on_step(i, event):
            if jobs[i].on_step is not None:
                jobs[i].on_step(event)

        try:
            # Always traced: the routing of each token feeds the per-group token metrics.
            results = self.predictor.run([j.request for j in jobs], trace=True, on_step=on_step)
        except Exception as err:  # the worker never dies; a bad request fails alone
            if len(jobs) == 1:
                jobs[0].future.set_exception(err)
                return
            for job in jobs:  # each alone: the others of the batch get their results
                self._run([job])
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)
