"""`mole serve` under concurrent streams: aggregate tokens/s at 1, 4, 8, 16 concurrent streaming requests, with each
stream's time to first token and time per output token (medians over the streams), the decode-only aggregate and the
server's CPU time per generated token.

    python bench/bench_serve.py --model demo
    python bench/bench_serve.py --shape 160m-4e          # bench/common.py's random-weight 160M-4E, built once

The server runs in its own process (`python -m mole serve --parallel MAX --port 0`); the clients are threads of
this process reading the event streams off raw sockets (little CPU of their own, but on the same machine: on a
2-core VM they compete with the server for it). Every request is a streamed /v1/completions of --prompt random
token ids and --gen tokens (ignore_eos: each stream generates exactly --gen). A round starts all streams at once;
aggregate = tokens of all streams / the round's wall time; decode = streams / median time per output token (the
prompts left out); server CPU = the server process's user + system time over the round / its tokens, which a busy
machine changes least. The levels take turns, round after round, so a change in the machine's load falls on all of
them; medians of --repeats rounds. --reference adds Model.generate_batch in this process (no HTTP). Prints a
markdown table (and --json FILE).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import statistics
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import common  # noqa: E402,F401  (puts the source tree's packages on sys.path when none is installed)

import numpy as np  # noqa: E402

from mole.server.process import ServerProcess  # noqa: E402


# ---- a stream client ------------------------------------------------------------------------------

def stream(port: int, body: dict, path: str = "/v1/completions", timeout: float = 600) -> dict:
    """One streamed request over a raw socket: the time of each content event and the usage of the last chunk.
    Returns {"t_send", "times": [...], "usage": {...} | None, "error": str | None}."""
    body = dict(body, stream=True, stream_options={"include_usage": True})
    data = json.dumps(body).encode()
    t_send = time.perf_counter()
    times, usage, buf, err = [], None, b"", None
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1 << 16)
            if not chunk:
                return {"t_send": t_send, "times": [], "usage": None, "error": "connection closed"}
            head += chunk
        now = time.perf_counter()
        head, _, buf = head.partition(b"\r\n\r\n")   # the first events may have come with the headers
        status = int(head.split()[1])
        if status != 200:
            rest = buf + b"".join(iter(lambda: s.recv(1 << 16), b""))
            return {"t_send": t_send, "times": [], "usage": None, "error": f"{status} {rest[:300]!r}"}
        done = False
        while True:
            while b"\n\n" in buf:
                event, _, buf = buf.partition(b"\n\n")
                i = event.find(b"data: ")
                if i < 0:
                    continue
                payload = event[i + 6:]
                if payload.startswith(b"[DONE]"):
                    done = True
                    break
                # Only the usage chunk and errors are parsed (the client's CPU is the server's too on a small VM).
                if b'"usage":{' in payload or b'"error":' in payload:
                    obj = json.loads(payload)
                    usage = obj.get("usage") or usage
                    err = (obj.get("error") or {}).get("message", err)
                if (b'"text":"' in payload and b'"text":""' not in payload) or \
                        (b'"content":"' in payload and b'"content":""' not in payload):
                    times.append(now)
            if done:
                break
            chunk = s.recv(1 << 16)
            if not chunk:
                if err is None and usage is None:
                    err = "the stream ended without its usage chunk or [DONE]"
                break
            now = time.perf_counter()
            buf += chunk
    return {"t_send": t_send, "times": times, "usage": usage, "error": err}


# ---- the benchmark ----------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (/proc/PID/stat; Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(port: int, prompts: list[list[int]], gen: int, pid: int) -> dict:
    results = [None] * len(prompts)

    def run(i):
        results[i] = stream(port, {"prompt": prompts[i], "max_tokens": gen, "temperature": 0, "ignore_eos": True})
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - c0
    errors = [r["error"] for r in results if r["error"]]
    if errors:
        raise RuntimeError(f"{len(errors)} streams failed: {errors[0]}")
    tokens = sum(r["usage"]["completion_tokens"] for r in results)
    ttft = [r["times"][0] - r["t_send"] for r in results]
    tpot = [(r["times"][-1] - r["times"][0]) / max(1, r["usage"]["completion_tokens"] - 1) for r in results]
    # decode-only aggregate: the streams over their median time per output token (a fast model's tokens can arrive
    # in one read, so a stream's own span may be 0)
    mid = statistics.median(tpot)
    return {"wall_s": wall, "tokens": tokens, "aggregate_tps": tokens / wall, "cpu_ms_per_token": 1e3 * cpu / tokens,
            "decode_tps": len(results) / mid if mid > 0 else float("nan"),
            "ttft_s": statistics.median(ttft), "tpot_s": statistics.median(tpot),
            "ttft_max_s": max(ttft), "tpot_max_s": max(tpot)}


def in_process(path: str, prompts: list[list[int]], gen: int, threads: int, n_ctx: int) -> float:
    """Aggregate tokens/s of Model.generate_batch over the same prompts (the decode loop without HTTP)."""
    import mole
    with mole.Model(path, n_ctx=n_ctx, n_threads=threads, n_seq_max=len(prompts)) as m:
        m.generate_batch(prompts, max_tokens=4, temperature=0, ignore_eos=True)   # warm: LUT pages, caches
        t0 = time.perf_counter()
        m.generate_batch(prompts, max_tokens=gen, temperature=0, ignore_eos=True)
        return len(prompts) * gen / (time.perf_counter() - t0)


def bench(path: str, streams: list[int], prompt: int, gen: int, threads: int, repeats: int,
          reference: bool) -> dict:
    import mole
    with mole.Model(path, n_ctx=64, n_threads=1) as m:
        vocab = m.n_vocab
    rng = np.random.default_rng(0)
    n_ctx = prompt + gen + 8
    srv = ServerProcess(path, "--parallel", max(streams), "--ctx", n_ctx, "-t", threads, "--queue", 0,
                        start_timeout=600)
    runs: dict[int, list] = {c: [] for c in streams}
    try:
        warm = [rng.integers(1, vocab, size=prompt).tolist() for _ in range(max(streams))]
        one_round(srv.port, warm, 8, srv.proc.pid)                      # LUT pages and row cache warm
        for r in range(repeats):   # the levels in turn, round after round: a change in the machine's load hits all
            for c in streams:
                prompts = [rng.integers(1, vocab, size=prompt).tolist() for _ in range(c)]
                runs[c].append(one_round(srv.port, prompts, gen, srv.proc.pid))
                print(f"  round {r + 1}, {c:>2} streams: {runs[c][-1]['aggregate_tps']:.1f} tok/s", file=sys.stderr)
        rss = srv.metrics().get("mole_process_resident_memory_bytes", 0)
    finally:
        srv.close()
    rows = {}
    for c in streams:
        rows[c] = row = {k: statistics.median(r[k] for r in runs[c]) for k in runs[c][0]}
        row["runs"] = runs[c]
        if reference:
            prompts = [rng.integers(1, vocab, size=prompt).tolist() for _ in range(c)]
            row["in_process_tps"] = in_process(path, prompts, gen, threads, n_ctx)
    base = rows[streams[0]] if streams[0] == 1 else None
    for row in rows.values():
        row["vs_1"] = row["aggregate_tps"] / base["aggregate_tps"] if base else None
        row["decode_vs_1"] = row["decode_tps"] / base["decode_tps"] if base else None
        row["cpu_vs_1"] = base["cpu_ms_per_token"] / row["cpu_ms_per_token"] if base else None
    return {"model": path, "streams": rows, "server_rss_bytes": rss}


def table(res: dict, reference: bool) -> str:
    def x(v):
        return f"{v:.2f}" if v else "-"
    out = ["| streams | aggregate tok/s | x 1 stream | decode tok/s (streams / TPOT) | x 1 stream | server CPU ms per "
           "token | x 1 stream | TTFT median (max) ms | TPOT median (max) ms |"
           + (" in-process generate_batch tok/s |" if reference else ""),
           "|---|---|---|---|---|---|---|---|---|" + ("---|" if reference else "")]
    for c, r in res["streams"].items():
        line = (f"| {c} | {r['aggregate_tps']:.1f} | {x(r['vs_1'])} | {r['decode_tps']:.1f} | {x(r['decode_vs_1'])} | "
                f"{r['cpu_ms_per_token']:.2f} | {x(r['cpu_vs_1'])} | {1e3 * r['ttft_s']:.0f} "
                f"({1e3 * r['ttft_max_s']:.0f}) | {1e3 * r['tpot_s']:.1f} ({1e3 * r['tpot_max_s']:.1f}) |")
        if reference:
            line += f" {r['in_process_tps']:.1f} |"
        out.append(line)
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a .gguf, or 'demo' for the bundled demo model")
    p.add_argument("--shape", default=None, choices=sorted(common.SHAPES),
                   help="a random-weight model of the paper's shapes, built once into --workdir")
    p.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/mole-bench"))
    p.add_argument("--streams", default="1,4,8,16", help="concurrency levels (default 1,4,8,16)")
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens per stream (default 32)")
    p.add_argument("--gen", type=int, default=64, help="tokens generated per stream (default 64)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reference", action="store_true",
                   help="also time Model.generate_batch in this process (no HTTP) on the same numbers of prompts")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if (a.model is None) == (a.shape is None):
        p.error("give --model or --shape")
    if a.shape:
        path = str(common.build_model(a.workdir, a.shape, dense=False, lut_type="q8_0", weight_type="q8_0"))
    elif a.model == "demo":
        import mole
        path = mole.demo_model_path()
    else:
        path = a.model
    from bench_cpu import machine

    mach = machine()
    streams = [int(x) for x in a.streams.split(",")]
    res = bench(path, streams, a.prompt, a.gen, a.threads, a.repeats, a.reference)
    res["machine"] = mach
    res["args"] = vars(a) | {"workdir": str(a.workdir)}
    print(f"model {path}\n{mach['cpu']}, {mach['cores']} cores, commit {mach['commit']}, load average at start "
          f"{mach['loadavg'][0]:.2f}; server {a.threads} threads, prompt {a.prompt} tokens, {a.gen} tokens per "
          f"stream, median of {a.repeats} rounds\n")
    print(table(res, a.reference))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
