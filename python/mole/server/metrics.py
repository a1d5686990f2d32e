"""The server's counters, histograms and recent-window rates, and their Prometheus text (/metrics).

Handlers and the engine thread record into a Metrics under a lock held for microseconds; /metrics renders them
with the engine's latest snapshot (what the context and its sequences held after the last step), so it never
waits for a decode step. Memory is bounded: fixed histogram buckets, and recent windows of per-second buckets.
"""
from __future__ import annotations

import math
import os
import threading
import time

WINDOW_S = 60   # the recent-window rates and means cover this many seconds

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += v
        self.n += 1


class Window:
    """Sums and counts over the last WINDOW_S seconds, in one-second buckets (a ring: constant memory)."""

    def __init__(self, seconds: int = WINDOW_S):
        self.seconds = seconds
        self.sums = [0.0] * seconds
        self.counts = [0] * seconds
        self.stamp = [-1] * seconds     # the second each bucket holds
        self.t0 = time.monotonic()

    def add(self, v: float, now: float | None = None) -> None:
        sec = int(now if now is not None else time.monotonic())
        i = sec % self.seconds
        if self.stamp[i] != sec:
            self.stamp[i], self.sums[i], self.counts[i] = sec, 0.0, 0
        self.sums[i] += v
        self.counts[i] += 1

    def _live(self, now: float):
        sec = int(now)
        return [i for i in range(self.seconds) if sec - self.seconds < self.stamp[i] <= sec]

    def rate(self, now: float | None = None) -> float:
        """Sum per second over the window (over the time since start while that is shorter)."""
        now = now if now is not None else time.monotonic()
        span = min(self.seconds, max(1.0, now - self.t0))
        return sum(self.sums[i] for i in self._live(now)) / span

    def mean(self, now: float | None = None) -> float:
        now = now if now is not None else time.monotonic()
        live = self._live(now)
        n = sum(self.counts[i] for i in live)
        return sum(self.sums[i] for i in live) / n if n else math.nan


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.t_start = time.monotonic()
        self.requests: dict[tuple[str, int], int] = {}              # (endpoint, status) -> count
        self.sequences_finished: dict[str, int] = {}                # finish reason -> count
        self.prompt_tokens = self.prompt_tokens_cached = self.completion_tokens = 0
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.tpot = Histogram(TOKEN_BUCKETS)
        self.duration = Histogram(LATENCY_BUCKETS)
        self.queue_wait = Histogram(LATENCY_BUCKETS)
        self.w_prompt, self.w_completion, self.w_requests = Window(), Window(), Window()
        self.w_ttft, self.w_tpot, self.w_step_rows = Window(), Window(), Window()
        self.w_lut_rows, self.w_lut_hits = Window(), Window()

    def request(self, endpoint: str, status: int, seconds: float | None = None) -> None:
        with self.lock:
            k = (endpoint, status)
            self.requests[k] = self.requests.get(k, 0) + 1
            self.w_requests.add(1)
            if seconds is not None:
                self.duration.observe(seconds)

    def sequence_done(self, job, t_request: float) -> None:
        """A finished job (one choice): its tokens and latencies (t_request: when its HTTP request arrived)."""
        with self.lock:
            r = job.finish_reason or "unknown"
            self.sequences_finished[r] = self.sequences_finished.get(r, 0) + 1
            evaluated = max(0, job.n_past - job.n_cached)
            self.prompt_tokens += evaluated
            self.prompt_tokens_cached += job.n_cached
            self.completion_tokens += job.n_generated
            if job.t_start:
                self.queue_wait.observe(max(0.0, job.t_start - t_request))
            if job.t_first:
                ttft = max(0.0, job.t_first - t_request)
                self.ttft.observe(ttft)
                self.w_ttft.add(ttft)
            if job.n_generated > 1 and job.t_first:
                tpot = (job.t_done - job.t_first) / (job.n_generated - 1)
                self.tpot.observe(tpot)
                self.w_tpot.add(tpot)

    def step(self, rows: int, prompt_tokens: int, generated: int, lut_rows: int, lut_hits: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.w_step_rows.add(rows, now)
            if prompt_tokens:
                self.w_prompt.add(prompt_tokens, now)
            if generated:
                self.w_completion.add(generated, now)
            self.w_lut_rows.add(lut_rows, now)
            self.w_lut_hits.add(lut_hits, now)

    # ---- Prometheus text ---------------------------------------------------------------------

    def render(self, snap: dict) -> str:
        out: list[str] = []

        def metric(name, kind, help_, samples):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            for labels, v in samples:
                lab = ",".join(f'{k}="{_escape(str(x))}"' for k, x in labels.items())
                out.append(f"{name}{{{lab}}} {_num(v)}" if lab else f"{name} {_num(v)}")

        def hist(name, help_, h: Histogram):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} histogram")
            acc = 0
            for b, c in zip(h.buckets, h.counts[:-1], strict=True):
                acc += c
                out.append(f'{name}_bucket{{le="{_num(b)}"}} {acc}')
            out.append(f'{name}_bucket{{le="+Inf"}} {h.n}')
            out.append(f"{name}_sum {_num(h.sum)}")
            out.append(f"{name}_count {h.n}")

        with self.lock:
            now = time.monotonic()
            w = {"window": f"{WINDOW_S}s"}
            metric("mole_requests_total", "counter", "HTTP requests answered, by endpoint and status code",
                   [({"endpoint": e, "code": c}, v) for (e, c), v in sorted(self.requests.items())])
            metric("mole_sequences_finished_total", "counter",
                   "generated sequences (choices) ended, by reason: stop, length, cancelled (client gone), error",
                   [({"reason": r}, v) for r, v in sorted(self.sequences_finished.items())])
            metric("mole_prompt_tokens_total", "counter", "prompt tokens evaluated", [({}, self.prompt_tokens)])
            metric("mole_prompt_tokens_cached_total", "counter", "prompt tokens reused from the prefix cache",
                   [({}, self.prompt_tokens_cached)])
            metric("mole_completion_tokens_total", "counter", "tokens generated", [({}, self.completion_tokens)])
            metric("mole_recent_prompt_tokens_per_second", "gauge", "prompt tokens evaluated per second, recent window",
                   [(w, self.w_prompt.rate(now))])
            metric("mole_recent_completion_tokens_per_second", "gauge", "tokens generated per second, recent window",
                   [(w, self.w_completion.rate(now))])
            metric("mole_recent_requests_per_second", "gauge", "HTTP requests answered per second, recent window",
                   [(w, self.w_requests.rate(now))])
            metric("mole_recent_time_to_first_token_seconds", "gauge",
                   "mean time from request to first token, recent window (NaN: none)", [(w, self.w_ttft.mean(now))])
            metric("mole_recent_time_per_output_token_seconds", "gauge",
                   "mean time per output token after the first, recent window (NaN: none)",
                   [(w, self.w_tpot.mean(now))])
            metric("mole_recent_batch_rows", "gauge", "mean tokens per decode step, recent window (NaN: no step)",
                   [(w, self.w_step_rows.mean(now))])
            rows, hits = self.w_lut_rows.rate(now), self.w_lut_hits.rate(now)
            metric("mole_recent_lut_cache_hit_ratio", "gauge", "LUT lookups served by the row cache, recent window",
                   [(w, hits / (rows + hits) if rows + hits else math.nan)])
            hist("mole_time_to_first_token_seconds", "time from request to first token", self.ttft)
            hist("mole_time_per_output_token_seconds", "time per output token after the first, per sequence",
                 self.tpot)
            hist("mole_queue_wait_seconds", "time from request to a free sequence", self.queue_wait)
            hist("mole_request_duration_seconds", "time to answer a request (streams: to the last byte)",
                 self.duration)
        c = snap.get("stats", {})
        metric("mole_queue_length", "gauge", "sequences (choices) waiting for a free sequence", [({}, snap["waiting"])])
        metric("mole_requests_running", "gauge", "requests being answered", [({}, snap["requests"])])
        metric("mole_sequences_active", "gauge", "sequences generating or reading a prompt", [({}, snap["active"])])
        metric("mole_sequences_max", "gauge", "sequences the context holds (--parallel)", [({}, snap["n_seq"])])
        metric("mole_kv_tokens_used", "gauge", "KV cache positions held by active sequences", [({}, snap["kv_used"])])
        metric("mole_kv_tokens_cached", "gauge", "KV cache positions held by free sequences (prefix cache)",
               [({}, snap["kv_cached"])])
        metric("mole_kv_tokens_capacity", "gauge", "KV cache positions: sequences x n_ctx",
               [({}, snap["n_seq"] * snap["n_ctx"])])
        metric("mole_kv_usage_ratio", "gauge", "active KV positions over capacity",
               [({}, snap["kv_used"] / max(1, snap["n_seq"] * snap["n_ctx"]))])
        for key, name, help_ in (("lut_rows_fetched", "mole_lut_rows_fetched_total", "LUT rows read from the file"),
                                 ("lut_bytes_fetched", "mole_lut_bytes_fetched_total", "bytes of those rows"),
                                 ("lut_cache_hits", "mole_lut_cache_hits_total", "LUT rows served by the row cache"),
                                 ("tokens_evaluated", "mole_tokens_evaluated_total", "tokens through the forward pass"),
                                 ("steps", "mole_decode_steps_total", "forward steps")):
            metric(name, "counter", help_, [({}, c.get(key, 0))])
        metric("mole_lut_cache_bytes", "gauge", "bytes the LUT row cache holds", [({}, c.get("lut_cache_bytes", 0))])
        metric("mole_decode_seconds_total", "counter", "time inside mole_decode", [({}, c.get("t_eval_ms", 0) / 1e3)])
        metric("mole_lut_seconds_total", "counter", "of which gathering LUT rows", [({}, c.get("t_lut_ms", 0) / 1e3)])
        metric("mole_engine_up", "gauge", "1 while the decode loop runs", [({}, 1 if snap["alive"] else 0)])
        metric("mole_process_resident_memory_bytes", "gauge", "resident memory of the server", [({}, _rss_bytes())])
        metric("mole_uptime_seconds", "gauge", "seconds since start", [({}, time.monotonic() - self.t_start)])
        return "\n".join(out) + "\n"


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))
