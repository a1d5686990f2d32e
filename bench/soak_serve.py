"""Soak test of `mole serve`: thousands of mixed requests, per-token latency and the server's memory per window.

    python bench/soak_serve.py --requests 20000 --window 2000      # the bundled demo model

--concurrency client threads send --requests requests in all to one server (`mole serve --parallel P`): completions
and chat in turn, streamed and not, 16 to 48 tokens, sampled with per-request seeds, every 20th a client that
disconnects after its first tokens, every 25th a bad request (400). For each window of --window requests the table
gives the median and 90th percentile time per output token of the streamed requests, the aggregate tokens/s, and
the server's resident memory at the window's end with the part of it that is the LUT row cache (both from its
/metrics: the cache fills, up to its --lut-cache-mb, as new tokens are seen), and the requests that failed (the
first ten are named at the end). Flat columns are the pass: the server keeps nothing per request and does not slow
down. Bounded: it stops after --requests or --max-seconds.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import socket
import statistics
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import common  # noqa: E402,F401

from bench_serve import stream  # noqa: E402

from mole.server.process import ServerProcess, request  # noqa: E402

PROMPTS = ["It is a truth universally acknowledged", "The king said", "And God said", "Elizabeth was",
           "To be, or not to be", "My lord, the queen", "In the beginning", "She looked at him and"]


def post(port: int, path: str, body: dict, timeout: float = 300) -> tuple[int, dict]:
    status, _, raw = request(port, "POST", path, body, timeout=timeout)
    return status, json.loads(raw) if raw else {}


def disconnect_early(port: int, body: dict) -> None:
    data = json.dumps(dict(body, stream=True)).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        got = b""
        while got.count(b"data: ") < 3:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk


def one(port: int, i: int) -> dict:
    """Request i of the mix: what it measured."""
    t0 = time.perf_counter()
    n = (16, 32, 48)[i % 3]
    opts = {"max_tokens": n, "temperature": 0.7, "seed": i}
    if i % 25 == 0:
        status, out = post(port, "/v1/completions", {"prompt": "x", "temperature": 9})
        return {"kind": "bad", "ok": status == 400, "why": f"{status} {out}"}
    if i % 20 == 0:
        disconnect_early(port, dict(opts, prompt=PROMPTS[i % 8], max_tokens=200))
        return {"kind": "disconnect", "ok": True}
    chat = i % 2 == 0
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = dict(opts, messages=[{"role": "user", "content": PROMPTS[i % 8]}]) if chat else \
        dict(opts, prompt=PROMPTS[i % 8])
    if (i // 2) % 2 == 0:
        r = stream(port, body, path)
        toks = r["usage"]["completion_tokens"] if r["usage"] else 0
        tpot = (r["times"][-1] - r["times"][0]) / (toks - 1) if toks > 1 and len(r["times"]) > 1 else None
        return {"kind": "stream", "ok": r["error"] is None and r["usage"] is not None, "tokens": toks, "tpot": tpot,
                "ttft": r["times"][0] - r["t_send"] if r["times"] else None,
                "why": f"{path} stream: error {r['error']!r}, usage {r['usage']!r}, {len(r['times'])} events"}
    status, out = post(port, path, body)
    return {"kind": "whole", "ok": status == 200, "tokens": out.get("usage", {}).get("completion_tokens", 0),
            "seconds": time.perf_counter() - t0, "why": f"{path}: {status} {out.get('error')}"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo", help="a .gguf, or 'demo' (default) for the bundled demo model")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--window", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=3600)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    import mole
    from bench_cpu import machine

    path = mole.demo_model_path() if a.model == "demo" else a.model
    mach = machine()
    srv = ServerProcess(path, "--parallel", a.parallel, "-t", a.threads, "--ctx", 512, "--queue", 64)
    results: list[dict | None] = [None] * a.requests
    windows = []
    lock = threading.Lock()
    next_i = [0]
    t_start = time.perf_counter()
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= a.requests or time.perf_counter() - t_start > a.max_seconds:
                return
            try:
                r = one(srv.port, i)
            except Exception as e:   # a client-side failure (timeout, reset) is a failed request, not a lost one
                r = {"kind": "exception", "ok": False, "why": f"{type(e).__name__}: {e}"}
            r["t_end"] = time.perf_counter()
            results[i] = r

    try:
        threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
        for t in threads:
            t.start()
        done_windows = 0
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            finished = next((k for k, r in enumerate(results) if r is None), a.requests)
            while finished >= (done_windows + 1) * a.window:
                m = srv.metrics()
                windows.append({"end": (done_windows + 1) * a.window, "t": time.perf_counter() - t_start,
                                "rss": m["mole_process_resident_memory_bytes"], "lut": m["mole_lut_cache_bytes"]})
                done_windows += 1
        for t in threads:
            t.join()
        m = srv.metrics()
        end_state = {k: m[k] for k in ("mole_sequences_active", "mole_queue_length", "mole_requests_running",
                                       "mole_kv_tokens_used", "mole_process_resident_memory_bytes")}
    finally:
        stop.set()
        srv.close()
    done = [r for r in results if r is not None]
    rows = []
    prev_t = 0.0
    for k, w in enumerate(windows):
        chunk = [r for r in results[k * a.window:w["end"]] if r is not None]
        tp = sorted(r["tpot"] for r in chunk if r.get("tpot"))
        toks = sum(r.get("tokens", 0) for r in chunk)
        rows.append({"requests": f"{k * a.window + 1}-{w['end']}", "tpot_median_ms": 1e3 * statistics.median(tp),
                     "tpot_p90_ms": 1e3 * tp[int(0.9 * (len(tp) - 1))], "tok_s": toks / (w["t"] - prev_t),
                     "rss_mb": w["rss"] / 2**20, "lut_cache_mb": w["lut"] / 2**20,
                     "failed": sum(not r["ok"] for r in chunk)})
        prev_t = w["t"]
    print(f"model {path}\n{mach['cpu']}, {mach['cores']} cores, commit {mach['commit']}, load average at start "
          f"{mach['loadavg'][0]:.2f}; {len(done)} requests, {a.concurrency} clients, --parallel {a.parallel}, "
          f"{a.threads} threads, {time.perf_counter() - t_start:.0f} s\n")
    print("| requests | TPOT median ms | TPOT p90 ms | aggregate tok/s | server RSS MiB | of which LUT row cache MiB | "
          "RSS - cache MiB | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['requests']} | {r['tpot_median_ms']:.2f} | {r['tpot_p90_ms']:.2f} | {r['tok_s']:.0f} | "
              f"{r['rss_mb']:.1f} | {r['lut_cache_mb']:.1f} | {r['rss_mb'] - r['lut_cache_mb']:.1f} | {r['failed']} |")
    print(f"\nat the end: {json.dumps(end_state)}")
    failures = [(i, r) for i, r in enumerate(results) if r is not None and not r["ok"]]
    for i, r in failures[:10]:
        print(f"failed: request {i} ({r['kind']}): {r['why']}")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps({"machine": mach, "args": vars(a), "windows": rows,
                                                    "end": end_state}, indent=1, default=str))
    return 0 if all(r["ok"] for r in done) else 1


if __name__ == "__main__":
    sys.exit(main())
