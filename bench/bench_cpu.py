"""CPU benchmark harness (issue 5): mole.cpp MoLE next to the same model dense, llama.cpp on an equal-FLOPs
dense llama twin, and the PyTorch model, side by side in one run (A B A B, each run in its own subprocess),
with medians, ratios, decode bandwidth fraction, peak RSS, LUT bytes per token and warm vs cold LUT.

    PYTHONPATH=python:converter python bench/bench_cpu.py --shape d512 --repeats 3         # quick shape
    PYTHONPATH=python:converter python bench/bench_cpu.py --shape 160m-4e 160m-16e 410m-4e --json out.json
    PYTHONPATH=python:converter python bench/bench_cpu.py --model M.gguf --dense D.gguf --quick

Models of the paper's shapes are built once into --workdir (bench_speed.build_model); the llama twin is
written beside them. Prints markdown tables (and --json FILE).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import common  # noqa: E402,F401  (puts the source tree's packages on sys.path when none is installed)

import numpy as np  # noqa: E402

from mole import gguf_names as G  # noqa: E402

RUNTIMES = ("mole", "llama", "torch")
ORDER = ("mole", "dense", "llama", "torch", "mole-cold")   # one repeat runs these in this order
LABELS = {"mole": "mole.cpp MoLE (LUT warm)", "mole-cold": "mole.cpp MoLE (LUT evicted)",
          "dense": "mole.cpp dense (N=0)", "llama": "llama.cpp dense twin (SwiGLU)",
          "torch": "PyTorch MoLE (fp32, KV cache)"}


# ---- file facts -------------------------------------------------------------------------------

def gguf_layout(path: str | pathlib.Path, weights_f32: bool = False) -> dict:
    """Bytes that one decode step reads from a GGUF (every matrix once, one embedding row, one LUT row),
    and where the LUT lies in the file (lut_offset = 0 when there is none). weights_f32: count every tensor
    but the LUT at 4 bytes a value, as a runtime that dequantizes the weights at load (the PyTorch peer) reads."""
    import gguf

    r = gguf.GGUFReader(str(path))
    out = {"file_bytes": os.path.getsize(path), "lut_offset": 0, "lut_bytes": 0, "lut_row_bytes": 0}
    per_token = 0
    for t in r.tensors:
        rows = int(t.shape[1]) if len(t.shape) > 1 else 1
        if t.name == G.TENSOR_LUT:
            out.update(lut_offset=int(t.data_offset), lut_bytes=int(t.n_bytes), lut_row_bytes=int(t.n_bytes) // rows)
            per_token += int(t.n_bytes) // rows
        elif t.name == G.TENSOR_TOKEN_EMBD:    # llama's name too
            per_token += (4 * int(t.n_elements) if weights_f32 else int(t.n_bytes)) // rows
            out["embd_bytes"] = int(t.n_bytes)
        else:
            per_token += 4 * int(t.n_elements) if weights_f32 else int(t.n_bytes)
    out["bytes_per_token"] = per_token
    arch = r.fields[G.KEY_ARCHITECTURE].contents()
    f = {k: int(r.fields[f"{arch}.{k}"].contents()) for k in ("block_count", "embedding_length",
                                                               "attention.head_count", "attention.head_count_kv")}
    kv_dim = f["embedding_length"] // f["attention.head_count"] * f["attention.head_count_kv"]
    out["kv_values_per_pos"] = 2 * f["block_count"] * kv_dim     # K and V, every layer
    out["dense_weight_bytes"] = out["file_bytes"] - out["lut_bytes"]
    return out


def evict(path: str | pathlib.Path, offset: int) -> None:
    """Drops the file's pages from offset to its end from the page cache (written back first: dirty pages of
    a freshly converted file cannot be dropped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, offset, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_libc = None


def resident_bytes(path: str | pathlib.Path, offset: int, length: int) -> int:
    """Bytes of the file's range [offset, offset+length) that are in the page cache (mincore on a fresh
    read-only mapping, which touches no page)."""
    global _libc
    if length <= 0:
        return 0
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_long]
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = mmap.PAGESIZE
    start = offset - offset % page
    n = offset + length - start
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, n, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} for mincore failed")
        try:
            vec = (ctypes.c_ubyte * ((n + page - 1) // page))()
            if _libc.mincore(addr, n, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore on {path} failed")
            return int(np.count_nonzero(np.frombuffer(vec, dtype=np.uint8) & 1)) * page
        finally:
            _libc.munmap(addr, n)
    finally:
        os.close(fd)


# ---- machine facts ----------------------------------------------------------------------------

def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "loadavg": os.getloadavg()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        info["cpu"] = m.group(1).strip() if m else info["cpu"]
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        info["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "runtime", "bench"],
                               capture_output=True, text=True).stdout.strip()
        info["commit"] += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = "unknown"
    return info


def read_bandwidth(threads: int, mb: int = 1024) -> dict:
    """Memory read bandwidth in GB/s with `threads` threads: the runtime's bench_ops stream-read when it is
    built (beside $MOLE_LIB, else in build/), else numpy sums over an `mb` MB array split between threads."""
    lib = os.environ.get("MOLE_LIB")   # the build the runs use, when given
    tool = (pathlib.Path(lib).parent if lib else REPO / "build") / "bench_ops"
    if tool.exists():
        try:
            out = subprocess.run([str(tool), "--types", "q8_0", "--isa", "portable", "--threads", str(threads),
                                  "--S", "1", "--shapes", "attn", "--reps", "5", "--cold-mb", str(mb),
                                  "--max-s", "0.2"],
                                 capture_output=True, text=True, timeout=120, check=True).stdout
            m = re.search(rf"stream-read {threads} thread\(s\): ([\d.]+) GB/s", out)
            if m:
                return {"gbs": float(m.group(1)), "how": f"bench_ops stream-read, {threads} threads, {mb} MB"}
        except (OSError, subprocess.SubprocessError):
            pass
    from concurrent.futures import ThreadPoolExecutor

    a = np.ones(mb * (1 << 20) // 8, dtype=np.float64)
    parts = np.array_split(a, threads)
    times = []
    with ThreadPoolExecutor(threads) as ex:
        for _ in range(5):
            t0 = time.perf_counter()
            list(ex.map(np.sum, parts))
            times.append(time.perf_counter() - t0)
    return {"gbs": a.nbytes / statistics.median(times) / 1e9, "how": f"numpy sum, {threads} threads, {mb} MB"}


# ---- one run, in its own process --------------------------------------------------------------

def _proc_io() -> int:
    with open("/proc/self/io") as f:
        return int(re.search(r"read_bytes:\s*(\d+)", f.read()).group(1))


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s*(\d+) kB", f.read()).group(1)) * 1024


def _run_mole(path: str, prompt: list[int], n_gen: int, threads: int) -> dict:
    import mole

    t0 = time.perf_counter()
    m = mole.Model(path, n_ctx=len(prompt) + n_gen + 16, n_threads=threads)
    load_s = time.perf_counter() - t0
    m.reset_stats()
    t0 = time.perf_counter()
    m.eval(prompt)                 # last position's logits only, as a prompt pass needs
    t_prompt = time.perf_counter() - t0
    s_prompt = m.stats()
    m.reset()
    short = prompt[:8]
    tok = int(np.argmax(m.eval(short)))
    s0 = m.stats()
    ids, steps = list(short), []
    for _ in range(n_gen):
        ids.append(tok)
        t0 = time.perf_counter()
        tok = int(np.argmax(m.eval([tok])))
        steps.append(time.perf_counter() - t0)
    s1 = m.stats()
    kv_type = m.kv_type
    m.close()
    return {"kv_type": kv_type, "load_s": load_s, "prompt_s": t_prompt, "step_s": steps, "ids": ids,
            "lut_bytes_prompt": s_prompt["lut_bytes_fetched"], "lut_rows_prompt": s_prompt["lut_rows_fetched"],
            "lut_bytes_decode": s1["lut_bytes_fetched"] - s0["lut_bytes_fetched"],
            "lut_rows_decode": s1["lut_rows_fetched"] - s0["lut_rows_fetched"],
            "lut_hits_decode": s1["lut_cache_hits"] - s0["lut_cache_hits"], "lut_row_bytes": s1["lut_row_bytes"]}


def pair_worker(path: str, dense: str, n_steps: int, threads: int, seed: int) -> dict:
    """MoLE and its dense twin loaded in one process, decode steps alternating between them (the order
    flips every step), so both see the same machine state step by step: the MoLE / dense step-time ratio
    without the run-to-run swings of separate processes. The tokens are fixed random ids, each new to
    the run (not greedy), so every MoLE step looks up a row no earlier step fetched."""
    import gguf
    import mole

    r = gguf.GGUFReader(path)
    V = int(r.fields[G.KEY_VOCAB_SIZE].contents())
    del r
    ids = np.random.default_rng(seed).choice(np.arange(1, V), size=8 + n_steps, replace=False).tolist()
    models = [mole.Model(p, n_ctx=len(ids) + 16, n_threads=threads) for p in (path, dense)]
    steps = [[], []]
    for m in models:
        m.eval(ids[:8])
    for i, t in enumerate(ids[8:]):
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            models[j].eval([t])
            steps[j].append(time.perf_counter() - t0)
    rows = models[0].stats()["lut_rows_fetched"]
    for m in models:
        m.close()
    return {"mole_steps": steps[0], "dense_steps": steps[1], "lut_rows_fetched": rows}


def worker(runtime: str, path: str, prompt_len: int, n_gen: int, threads: int, seed: int) -> dict:
    """One measured run of one runtime (call in a fresh process: peak RSS and I/O counters are per process)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (one of {RUNTIMES})")
    import gguf

    r = gguf.GGUFReader(path)
    key = G.KEY_VOCAB_SIZE if G.KEY_VOCAB_SIZE in r.fields else "llama.vocab_size"   # a mole file or the llama twin
    V = int(r.fields[key].contents())
    del r
    prompt = np.random.default_rng(seed).integers(1, V, size=prompt_len).tolist()
    io0 = _proc_io()
    if runtime == "mole":
        res = _run_mole(path, prompt, n_gen, threads)
    elif runtime == "llama":
        import llama_peer
        res = llama_peer.run(path, prompt, n_gen, threads)
    else:
        import torch_peer
        res = torch_peer.run(path, prompt, n_gen, threads)
    res["disk_read_bytes"] = _proc_io() - io0
    res["peak_rss_bytes"] = _vm_hwm()
    res["distinct_tokens"] = len(set(prompt) | set(res["ids"]))
    return res


def run_in_subprocess(runtime: str, path: str | pathlib.Path, prompt_len: int, n_gen: int, threads: int,
                      seed: int = 0, timeout: float = 1800) -> dict:
    env = dict(os.environ)   # the worker finds the same packages this process found (bench/common.py)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    cmd = [sys.executable, str(BENCH / "bench_cpu.py"), "--worker", runtime, "--model", str(path),
           "--prompt", str(prompt_len), "--gen", str(n_gen), "--threads", str(threads), "--seed", str(seed)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{runtime} run on {path} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1])


def pair_in_subprocess(path, dense, n_steps: int, threads: int, seed: int = 0, timeout: float = 1800) -> dict:
    env = dict(os.environ)
    cmd = [sys.executable, str(BENCH / "bench_cpu.py"), "--worker", "pair", "--model", str(path), "--dense", str(dense),
           "--gen", str(n_steps), "--threads", str(threads), "--seed", str(seed)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"interleaved run on {path} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1])


# ---- the harness core -------------------------------------------------------------------------

def bench_model(path: str | pathlib.Path, *, dense: str | pathlib.Path | None = None,
                llama: str | pathlib.Path | None = None, torch: bool = False, cold: bool = True,
                threads: int = 2, prompt: int = 512, gen: int = 64, repeats: int = 3, bandwidth: dict | None = None,
                log=None) -> dict:
    """Benchmarks one MoLE GGUF against the peers given (each None/False is skipped): every variant runs once
    untimed (warm-up), then `repeats` rounds of mole, dense, llama, torch, mole-cold, each in a subprocess.
    Returns {"variants": {name: summary}, "ratios": {...}, "layout": {...}, ...}; see summarize()."""
    log = log or (lambda s: print(s, file=sys.stderr))
    path = str(path)
    files = {"mole": path}
    if dense:
        files["dense"] = str(dense)
    if llama:
        files["llama"] = str(llama)
    if torch:
        files["torch"] = path
    layouts = {name: gguf_layout(f, weights_f32=name == "torch") for name, f in files.items()}
    lay = layouts["mole"]
    if cold and lay["lut_bytes"]:
        files["mole-cold"] = path
        layouts["mole-cold"] = lay
    runtime = {"mole": "mole", "dense": "mole", "mole-cold": "mole", "llama": "llama", "torch": "torch"}
    order = [v for v in ORDER if v in files]
    runs = {v: [] for v in order}

    def one(v: str) -> dict:
        extra = {}
        if v == "mole-cold":
            evict(path, lay["lut_offset"])
            extra["resident_before"] = resident_bytes(path, lay["lut_offset"], lay["lut_bytes"])
        r = run_in_subprocess(runtime[v], files[v], prompt, gen, threads)
        if v == "mole-cold":
            extra["resident_after"] = resident_bytes(path, lay["lut_offset"], lay["lut_bytes"])
        r.update(extra)
        return r

    for v in order:
        if v != "mole-cold":
            log(f"warm-up: {v}")
            one(v)
    for rep in range(repeats):
        for v in order:            # A B A B ...
            r = one(v)
            runs[v].append(r)
            log(f"round {rep + 1}/{repeats} {v}: prompt {prompt / r['prompt_s']:.1f} tok/s, decode "
                f"{len(r['step_s']) / sum(r['step_s']):.1f} tok/s")
    pairs = {}
    if dense:   # MoLE / dense step time with both in one process, steps interleaved
        n_steps = 2 * gen
        pair_in_subprocess(path, dense, n_steps, threads)   # untimed: the run's rows into the page cache
        for mode in ("warm", "cold") if cold and lay["lut_bytes"] else ("warm",):
            pairs[mode] = []
            for rep in range(repeats):
                if mode == "cold":
                    evict(path, lay["lut_offset"])
                r = pair_in_subprocess(path, dense, n_steps, threads)
                pairs[mode].append(r)
                log(f"interleaved {mode} {rep + 1}/{repeats}: MoLE {1e3 * statistics.median(r['mole_steps']):.2f} ms, "
                    f"dense {1e3 * statistics.median(r['dense_steps']):.2f} ms per step")
    bw = bandwidth or read_bandwidth(threads)   # right after the rounds: the load they saw
    res = summarize(runs, layouts, bw, prompt, gen, pairs)
    res["interleaved"] = {mode: [{"mole_step_ms": 1e3 * statistics.median(r["mole_steps"]),
                                  "dense_step_ms": 1e3 * statistics.median(r["dense_steps"]),
                                  "steps": len(r["mole_steps"]), "lut_rows_fetched": r["lut_rows_fetched"]} for r in rs]
                          for mode, rs in pairs.items()}
    res.update(files=files, threads=threads, prompt=prompt, gen=gen, repeats=repeats, bandwidth=bw)
    return res


def summarize(runs: dict, layouts: dict, bw: dict, prompt: int, gen: int, pairs: dict | None = None) -> dict:
    """Medians per variant and the issue's ratios."""
    out = {}
    for v, rs in runs.items():
        lay = layouts[v]
        step = statistics.median(statistics.median(r["step_s"]) for r in rs)   # s per decode token
        s = {"label": LABELS[v], "runs": len(rs),
             "prompt_tps": statistics.median(prompt / r["prompt_s"] for r in rs),
             "decode_tps": statistics.median(len(r["step_s"]) / sum(r["step_s"]) for r in rs),
             "step_ms_median": step * 1e3,
             "bytes_per_token": lay["bytes_per_token"],
             "bw_fraction": lay["bytes_per_token"] / (bw["gbs"] * 1e9) / step,
             "peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in rs),
             "file_bytes": lay["file_bytes"], "dense_weight_bytes": lay["dense_weight_bytes"],
             "lut_row_bytes": lay["lut_row_bytes"],
             "disk_read_bytes": statistics.median(r["disk_read_bytes"] for r in rs),
             "distinct_tokens": rs[-1]["distinct_tokens"]}
        if "lut_bytes_decode" in rs[0]:
            s["lut_bytes_per_decode_token"] = statistics.median(r["lut_bytes_decode"] / len(r["step_s"]) for r in rs)
            s["lut_bytes_per_prompt_token"] = statistics.median(r["lut_bytes_prompt"] / prompt for r in rs)
        if "resident_after" in rs[0]:
            s["resident_before"] = max(r["resident_before"] for r in rs)
            s["lut_bytes_in_per_distinct"] = statistics.median(
                (r["resident_after"] - r["resident_before"]) / r["distinct_tokens"] for r in rs)
            s["disk_bytes_per_distinct"] = statistics.median(r["disk_read_bytes"] / r["distinct_tokens"] for r in rs)
        out[v] = s
    ratios = {}
    m = out["mole"]
    if "dense" in out:
        ratios["mole_over_dense_step_warm"] = m["step_ms_median"] / out["dense"]["step_ms_median"]
        if "mole-cold" in out:
            ratios["mole_over_dense_step_cold"] = out["mole-cold"]["step_ms_median"] / out["dense"]["step_ms_median"]
        kv_type = ratios["kv_type"] = runs["mole"][0]["kv_type"]   # the cache the runs had (the library's default)
        kv = layouts["mole"]["kv_values_per_pos"] * (2 if kv_type == "f16" else 4) * (prompt + gen + 16)   # n_ctx
        ratios["rss_budget_bytes"] = out["dense"]["dense_weight_bytes"] + kv + 128 * 2**20
        ratios["rss_over_budget"] = m["peak_rss_bytes"] / ratios["rss_budget_bytes"]
    for mode, rs in (pairs or {}).items():   # per run: median MoLE step / median dense step; median over runs
        ratios[f"interleaved_{mode}"] = statistics.median(
            statistics.median(r["mole_steps"]) / statistics.median(r["dense_steps"]) for r in rs)
        ratios[f"interleaved_{mode}_runs"] = [statistics.median(r["mole_steps"]) / statistics.median(r["dense_steps"])
                                              for r in rs]
    if "llama" in out:
        ratios["decode_vs_llama"] = m["decode_tps"] / out["llama"]["decode_tps"]
    if "torch" in out:
        ratios["decode_vs_torch"] = m["decode_tps"] / out["torch"]["decode_tps"]
    best = [out[p]["prompt_tps"] for p in ("llama", "torch") if p in out]
    if best:
        ratios["prompt_vs_best_peer"] = m["prompt_tps"] / max(best)
    return {"variants": out, "ratios": ratios}


# ---- reporting --------------------------------------------------------------------------------

def table(res: dict) -> str:
    """The results of bench_model as markdown."""
    MB = 1e6
    lines = ["| runtime | prompt tok/s | decode tok/s | ms/token | MB read/token | % of bandwidth floor | "
             "peak RSS MB | LUT B fetched/token (decode) | LUT B in / distinct token (cold) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in res["variants"].values():
        lut = f"{s['lut_bytes_per_decode_token']:.0f}" if "lut_bytes_per_decode_token" in s else "–"
        cold = (f"{s['lut_bytes_in_per_distinct']:.0f} (row {s['lut_row_bytes']})" if "lut_bytes_in_per_distinct" in s
                else "–")
        lines.append(f"| {s['label']} | {s['prompt_tps']:.1f} | {s['decode_tps']:.1f} | {s['step_ms_median']:.2f} | "
                     f"{s['bytes_per_token'] / MB:.1f} | {100 * s['bw_fraction']:.0f}% | "
                     f"{s['peak_rss_bytes'] / MB:.0f} | {lut} | {cold} |")
    r = res["ratios"]
    notes = []
    if "mole_over_dense_step_warm" in r:
        cold = f", LUT evicted {r['mole_over_dense_step_cold']:.3f}" if "mole_over_dense_step_cold" in r else ""
        notes.append(f"MoLE / dense step time: warm {r['mole_over_dense_step_warm']:.3f}{cold}")
    if "interleaved_warm" in r:
        def runs(m):
            return ", ".join(f"{x:.3f}" for x in r[f"interleaved_{m}_runs"])
        notes.append(f"MoLE / dense step time, both models in one process with decode steps interleaved (median step "
                     f"each, median of {len(r['interleaved_warm_runs'])} runs): warm {r['interleaved_warm']:.3f} "
                     f"({runs('warm')})" + (f", LUT evicted {r['interleaved_cold']:.3f} ({runs('cold')})"
                                             if "interleaved_cold" in r else ""))
    if "decode_vs_llama" in r:
        notes.append(f"decode vs llama.cpp: {r['decode_vs_llama']:.2f}x")
    if "decode_vs_torch" in r:
        notes.append(f"decode vs PyTorch: {r['decode_vs_torch']:.2f}x")
    if "prompt_vs_best_peer" in r:
        notes.append(f"prompt vs the better peer: {r['prompt_vs_best_peer']:.2f}x")
    if "rss_budget_bytes" in r:
        notes.append(f"peak RSS MoLE {res['variants']['mole']['peak_rss_bytes'] / MB:.0f} MB vs budget (dense weights "
                     f"+ {r['kv_type']} KV cache + 128 MB) {r['rss_budget_bytes'] / MB:.0f} MB")
    if "mole-cold" in res["variants"]:
        c = res["variants"]["mole-cold"]
        notes.append(f"cold: LUT resident before the run {c['resident_before']} B; process disk reads "
                     f"{c['disk_bytes_per_distinct']:.0f} B per distinct token ({c['distinct_tokens']} distinct)")
    notes += res.get("notes", [])
    bw = res["bandwidth"]
    notes.append(f"bandwidth {bw['gbs']:.1f} GB/s ({bw['how']})")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def _header(mach: dict, a) -> str:
    return (f"machine: {mach['cpu']}, {mach['cores']} cores; commit {mach['commit']}; load average at start "
            f"{mach['loadavg'][0]:.2f}, at end {os.getloadavg()[0]:.2f}; {a.threads} threads, prompt {a.prompt}, "
            f"decode {a.gen}, median of {a.repeats}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", nargs="+", default=None, help="paper shapes to build and run (bench_speed.SHAPES)")
    p.add_argument("--model", default=None, help="a MoLE .gguf instead of --shape")
    p.add_argument("--dense", default=None, help="with --model: its dense (N=0) twin .gguf")
    p.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/mole-bench"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--gen", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", default="", help="comma list of peers to leave out: dense,llama,torch,cold")
    p.add_argument("--quick", action="store_true", help="prompt 32, decode 8, 1 repeat (smoke runs)")
    p.add_argument("--json", type=pathlib.Path)
    p.add_argument("--worker", choices=RUNTIMES + ("pair",), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker == "pair":
        print(json.dumps(pair_worker(a.model, a.dense, a.gen, a.threads, a.seed)))
        return 0
    if a.worker:
        print(json.dumps(worker(a.worker, a.model, a.prompt, a.gen, a.threads, a.seed)))
        return 0
    if a.quick:
        a.prompt, a.gen, a.repeats = 32, 8, 1
    skip = {s for s in a.skip.split(",") if s}
    if skip - {"dense", "llama", "torch", "cold"}:
        p.error(f"--skip: unknown peers {sorted(skip - {'dense', 'llama', 'torch', 'cold'})}")
    if (a.model is None) == (a.shape is None):
        p.error("give --shape or --model (not both)")
    mach = machine()
    import llama_peer

    llama_note = llama_peer.available() if "llama" not in skip else "llama.cpp skipped (--skip)"
    jobs = []
    if a.model:
        jobs.append((pathlib.Path(a.model).name, a.model, a.dense))
    else:
        from bench_speed import build_model
        a.workdir.mkdir(parents=True, exist_ok=True)
        for shape in a.shape:
            jobs.append((shape, build_model(a.workdir, shape, False, "q8_0", "q8_0"),
                         None if "dense" in skip else build_model(a.workdir, shape, True, "q8_0", "q8_0")))
    results = {}
    for name, path, dense in jobs:
        llama = None
        if llama_note is None:
            twin = (a.workdir if a.shape else pathlib.Path(path).parent) / f"llama-twin-{pathlib.Path(path).stem}.gguf"
            llama = llama_peer.write_llama_gguf(path, twin)
        res = bench_model(path, dense=None if "dense" in skip else dense, llama=llama, torch="torch" not in skip,
                          cold="cold" not in skip, threads=a.threads, prompt=a.prompt, gen=a.gen, repeats=a.repeats)
        res["notes"] = [llama_note] if llama_note else []
        results[name] = res
        print(f"\n### {name}\n\n{_header(mach, a)}\n\n{table(res)}\n", flush=True)
    mach["loadavg_end"] = os.getloadavg()
    if a.json:
        a.json.write_text(json.dumps({"machine": mach, "command": " ".join([sys.executable] + sys.argv),
                                      "args": {k: str(v) for k, v in vars(a).items()}, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
