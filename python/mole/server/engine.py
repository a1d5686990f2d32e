"""The decode loop of `mole serve`: one thread owns the model's context and runs a mole.batch.Batcher over its
sequences; HTTP handlers submit jobs and get their deltas on their own asyncio queues.

Only this thread touches the context. What /health and /metrics show of it is a snapshot the thread publishes
after each step, so they answer while a step runs. A request is admitted while the sequences running and waiting
stay within --parallel + --queue; past that it gets 503 with Retry-After.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import threading
import time
import traceback

from ..batch import Batcher, Delta, Job
from .metrics import Metrics

log = logging.getLogger("mole.server")

# Test hooks, run before each decode step, inside the step (the context busy): sleep this many seconds (tests hold
# sequences running long enough to disconnect or fill the queue), and wait while this file exists (a test asks
# /metrics and /health while a step cannot finish).
STEP_DELAY_ENV = "MOLE_SERVE_TEST_STEP_DELAY"
STEP_GATE_ENV = "MOLE_SERVE_TEST_STEP_GATE"


def _test_hook():
    delay = float(os.environ.get(STEP_DELAY_ENV) or 0)
    gate = os.environ.get(STEP_GATE_ENV) or None
    if delay <= 0 and gate is None:
        return None

    def hook(n_tokens: int) -> None:
        if delay > 0:
            time.sleep(delay)
        while gate is not None and os.path.exists(gate):
            time.sleep(0.01)
    return hook


class Overloaded(Exception):
    def __init__(self, retry_after: int, message: str):
        super().__init__(message)
        self.retry_after = retry_after


class Handle:
    """One HTTP request's jobs and the deltas that arrived for them (in step order), read on its event loop."""

    def __init__(self, engine: Engine, jobs: list[Job], loop: asyncio.AbstractEventLoop):
        self.engine, self.jobs, self.loop = engine, jobs, loop
        self._buf: list[Delta] = []
        self._waiter: asyncio.Future | None = None
        self.t0 = time.perf_counter()

    def _deliver(self, deltas: list[Delta]) -> None:   # on the event loop
        self._buf += deltas
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def cancel(self) -> None:
        """The client is gone: every job of the request stops at the next step and frees its sequence."""
        for j in self.jobs:
            j.cancel()
        self.engine.wake()

    async def next(self, timeout: float | None = None) -> list[Delta] | None:
        """The deltas that arrived since the last call, waiting for some (None: none within timeout seconds)."""
        if not self._buf:
            self._waiter = w = self.loop.create_future()
            timer = None
            if timeout is not None:   # the timer ends the wait the way a delivery does, with nothing delivered
                timer = self.loop.call_later(timeout, lambda: w.done() or w.set_result(None))
            try:
                await w
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._buf:
                return None
        out, self._buf = self._buf, []
        return out


def _deliver_all(pairs) -> None:
    for h, ds in pairs:
        h._deliver(ds)


class Engine:
    def __init__(self, model, parallel: int, queue_size: int, metrics: Metrics, step_tokens: int | None = None):
        self.model = model
        self.metrics = metrics
        self.parallel, self.queue_size = parallel, queue_size
        hook = _test_hook()

        def before_decode(n_tokens: int) -> None:
            self.snapshot = self._snapshot()   # what the step holds, visible while it runs
            if hook is not None:
                hook(n_tokens)
        self.batcher = Batcher(model, n_seq=parallel, step_tokens=step_tokens, before_decode=before_decode)
        self._cv = threading.Condition()
        self._inbox: collections.deque[tuple[Handle, Job]] = collections.deque()
        self._live = 0                 # jobs admitted and not finished
        self._handles: dict[int, Handle] = {}   # id(job) -> its request, while the job lives
        self._stopping = False
        self.error: str | None = None  # why the loop died (it should not)
        self._thread = threading.Thread(target=self._run, name="mole-engine", daemon=True)
        self._last_stats = {}
        self.snapshot = self._snapshot()

    # ---- the handlers' side -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> Handle:
        """Queues a request's jobs, or raises Overloaded when running + waiting would pass --parallel + --queue."""
        h = Handle(self, jobs, loop)
        with self._cv:
            cap = self.parallel + self.queue_size
            if self._stopping or self.error:
                raise Overloaded(5, "the server is shutting down" if self._stopping else "the decode loop stopped")
            if self._live + len(jobs) > cap:
                raise Overloaded(self._retry_after(), f"the server is busy: {self._live} sequences running or "
                                 f"waiting, {len(jobs)} more would pass the limit of {cap} (--parallel "
                                 f"{self.parallel} + --queue {self.queue_size}); retry later")
            self._live += len(jobs)
            for j in jobs:
                self._inbox.append((h, j))
            self._cv.notify()
        return h

    def _retry_after(self) -> int:
        """Seconds until a sequence is likely free, 1..60: the fewest tokens a running sequence has left, at the
        recent per-sequence rate (read from the last snapshot: the Batcher belongs to the decode thread)."""
        snap = self.snapshot
        rate = self.metrics.w_completion.rate()
        if rate <= 0 or not snap["active"]:
            return 1
        return int(min(60, max(1, math.ceil(snap["min_tokens_left"] / (rate / snap["active"])))))

    def wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    # ---- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:   # a bug outside the step: say so in /health, fail what is left, stop admitting
            log.error("the decode loop stopped:\n%s", traceback.format_exc())
            self.error = f"the decode loop stopped: {type(e).__name__}: {e}"
            with contextlib.suppress(Exception):
                self._publish(self._fail_all(RuntimeError(self.error)))
            self.snapshot = dict(self.snapshot, alive=False)

    def _loop(self) -> None:
        b = self.batcher
        while True:
            with self._cv:
                while not self._stopping and not self._inbox and not b.busy:
                    self._cv.wait(timeout=1.0)
                if self._stopping:
                    break
                incoming = list(self._inbox)
                self._inbox.clear()
            out: list[Delta] = []
            for h, j in incoming:
                self._handles[id(j)] = h
                try:
                    b.submit(j)
                except Exception as e:   # checked by the parser already: a job the Batcher refuses fails alone
                    j.error, j.finish_reason, j.status = e, "error", "done"
                    out.append(Delta(j, finish="error"))
            before = self._last_stats
            try:
                out += b.step()
            except Exception:            # a bug: every live job fails, the loop goes on with clean sequences
                log.error("decode step failed:\n%s", traceback.format_exc())
                out += self._fail_all(RuntimeError("internal error in the decode loop"))
            self._publish(out)
            self.snapshot = snap = self._snapshot()
            st = snap["stats"]
            self.metrics.step(b.last_step_rows, b.last_step_prompt, b.last_step_sampled,
                              st.get("lut_rows_fetched", 0) - before.get("lut_rows_fetched", 0),
                              st.get("lut_cache_hits", 0) - before.get("lut_cache_hits", 0))
            self._last_stats = st
        # stopping: every job still queued or running ends as cancelled
        for j in list(b.waiting) + b.running:
            j.cancel()
        out = b.step() if b.busy else []
        self._publish(out)
        b.close()

    def _fail_all(self, err: Exception) -> list[Delta]:
        b = self.batcher
        out = []
        for j in list(b.waiting) + b.running:
            j.error = err
            out.append(b._finish(j, "error"))
        b.waiting.clear()
        for s in b.slots:
            s.tokens.clear()
            self.model._lib.mole_seq_truncate(self.model._ctx, s.seq, 0)
        return out

    def _publish(self, out: list[Delta]) -> None:
        """Sends each request its deltas (one call per request per step) and counts the jobs that ended."""
        by_handle: dict[int, tuple[Handle, list[Delta]]] = {}
        done = 0
        for d in out:
            h = self._handles.get(id(d.job))
            if h is None:
                continue
            by_handle.setdefault(id(h), (h, []))[1].append(d)
            if d.finish is not None:
                done += 1
                del self._handles[id(d.job)]
                self.metrics.sequence_done(d.job, h.t0)
        by_loop: dict[int, list] = {}
        for h, ds in by_handle.values():
            by_loop.setdefault(id(h.loop), [h.loop]).append((h, ds))
        for loop, *pairs in by_loop.values():   # one wake-up of each event loop per step
            try:
                loop.call_soon_threadsafe(_deliver_all, pairs)
            except RuntimeError:     # the event loop is closed (shutdown)
                pass
        if done:
            with self._cv:
                self._live -= done

    def _snapshot(self) -> dict:
        b = self.batcher
        used, cached = b.kv_tokens()
        stats = {}
        if self.model._ctx is not None:
            s = self.model._L.ffi.new("struct mole_stats *")
            if self.model._lib.mole_context_get_stats(self.model._ctx, s) == 0:
                stats = {k: getattr(s, k) for k in ("lut_rows_fetched", "lut_bytes_fetched", "lut_cache_hits",
                                                    "tokens_evaluated", "steps", "lut_cache_bytes", "t_eval_ms",
                                                    "t_lut_ms")}
        running = b.running
        left = [max(0, j.max_tokens - j.n_generated) for j in running]
        return {"alive": self.error is None, "n_seq": b.n_seq, "n_ctx": b.n_ctx, "active": len(running),
                "min_tokens_left": min(left, default=0),
                "waiting": len(b.waiting) + len(self._inbox), "kv_used": used, "kv_cached": cached,
                "requests": len({id(h) for h in list(self._handles.values())}),
                "stats": stats}

    # ---- shutdown -----------------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """Cancels what runs (a step in progress stops early through mole_context_cancel) and joins the loop."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self.model._ctx is not None:
            self.model._lib.mole_context_cancel(self.model._ctx)
        if self._thread.is_alive():
            self._thread.join(timeout)
