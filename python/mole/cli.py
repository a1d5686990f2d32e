"""The `mole` command: convert, inspect, run, chat, train, perplexity, bench, serve.

Exit codes: 0 success, 1 an error (message on stderr), 2 bad usage (argparse's message: an unknown flag or a bad
value such as `-n -5`), 130 interrupted (Ctrl-C), 141 stdout closed early (as a Unix tool killed by SIGPIPE:
`mole inspect FILE | head` prints no error).
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time

from . import _ffi, errors

# How the converter's dependencies are installed (README): from the clone, with the constraints file, which keeps
# pip from pulling the multi-GB CUDA build of torch.
CONVERT_INSTALL = 'pip install -c tests/constraints.txt ".[convert]"'
SERVER_INSTALL = 'pip install ".[server]"'


def _needs_converter(what: str, e: ImportError) -> errors.MoleError:
    return errors.MoleError(f"{what} needs the converter's dependencies ({e}); install them from the root of the "
                            f"mole.cpp clone with: {CONVERT_INSTALL}")


def _is_dependency(e: ImportError) -> bool:
    """A module outside this project is missing (a dependency), not one of ours that is broken."""
    name = getattr(e, "name", None) or ""
    return isinstance(e, ModuleNotFoundError) and name.split(".")[0] not in ("mole", "mole_convert")


def _library_defaults() -> tuple[dict, dict]:
    """(sampling, context) defaults of the C library, which owns them; empty when libmole does not load
    (--help still works, and running a model then reports why)."""
    try:
        return _ffi.sampler_defaults(), _ffi.context_defaults()
    except errors.LibraryError:
        return {}, {}


def _default(defaults: dict, key: str) -> str:
    """The library's default for --help ("from libmole" when the library did not load)."""
    return _ffi.show(defaults[key]) if key in defaults else "from libmole"


def _add_model_args(p: argparse.ArgumentParser, ctx: dict, ctx_default: int | None = None) -> None:
    """Model and context options; None (the default) leaves a value to the library (ctx: its defaults)."""
    p.add_argument("-m", "--model", default=None, help="model .gguf (default: the bundled demo model)")
    p.add_argument("-c", "--ctx", type=_positive, default=ctx_default,
                   help=f"context length (default {ctx_default})" if ctx_default is not None
                   else "context length (default: the model's training context, mole.context_length)")
    p.add_argument("-t", "--threads", type=_positive, default=None, help="CPU threads (default: one per physical core)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="compute device (default cpu)")
    p.add_argument("--lut-cache-mb", type=_non_negative, default=None,
                   help="LUT row cache size in MB, 0 disables (default: the backend's choice, 64 on the CPU)"
                   if ctx.get("lut_cache_mb") == -1 else
                   f"LUT row cache size in MB, 0 disables (default {_default(ctx, 'lut_cache_mb')})")
    p.add_argument("--kv-type", default=None, choices=["f16", "f32"],
                   help="KV cache element type (default: the backend's, f16 on the CPU, f32 on CUDA)")


def _add_sampling_args(p: argparse.ArgumentParser, d: dict) -> None:
    """Sampling options; each default is None, which Model turns into the library's value (shown from d)."""
    p.add_argument("--temp", type=_float_in(0), default=None,
                   help=f"temperature; 0 = greedy (default {_default(d, 'temperature')})")
    p.add_argument("--top-k", type=_non_negative, default=None, help=f"top-k, 0 = off (default {_default(d, 'top_k')})")
    p.add_argument("--top-p", type=_float_in(0, 1), default=None,
                   help=f"top-p, 1 = off (default {_default(d, 'top_p')})")
    p.add_argument("--min-p", type=_float_in(0, 1), default=None,
                   help=f"min-p, 0 = off (default {_default(d, 'min_p')})")
    p.add_argument("--repeat-penalty", type=_float_in(0), default=None,
                   help=f"repetition penalty, 1 = off (default {_default(d, 'repeat_penalty')})")
    p.add_argument("--repeat-last-n", type=_non_negative, default=None,
                   help=f"tokens the penalty looks back over (default {_default(d, 'repeat_last_n')})")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")


def _sampling(a) -> dict:
    return dict(temperature=a.temp, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                repeat_penalty=a.repeat_penalty, repeat_last_n=a.repeat_last_n, seed=a.seed)


def _open_model(a):
    from . import Model, demo_model_path
    path = a.model or demo_model_path()
    return Model(path, n_ctx=a.ctx, n_threads=a.threads, device=a.device, lut_cache_mb=a.lut_cache_mb,
                 kv_type=a.kv_type)


# ---- subcommands ------------------------------------------------------------------------------

def cmd_run(a) -> int:
    prompt = a.prompt if a.prompt is not None else sys.stdin.read()
    if not prompt:
        a.parser.error("the prompt is empty: give -p TEXT or text on stdin")
    with _open_model(a) as m:
        # The arguments are checked (and the prompt tokenized) here, before anything is written to stdout.
        pieces = m.generate(prompt, max_tokens=a.n_predict, stream=True, ignore_eos=a.ignore_eos, **_sampling(a))
        sys.stdout.write(prompt)
        sys.stdout.flush()
        t0 = time.perf_counter()
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if a.verbose:
            dt = time.perf_counter() - t0
            s = m.stats()
            print(f"[{s['tokens_evaluated']} tokens evaluated in {dt:.2f} s; LUT rows fetched "
                  f"{s['lut_rows_fetched']}, cache hits {s['lut_cache_hits']}]", file=sys.stderr)
    return 0


# `mole chat`'s commands: a line that is one of these is not sent to the model.
CHAT_COMMANDS = {
    "/help": "list these commands",
    "/reset": "start over: clear the conversation and the counters /stats shows",
    "/stats": "show the counters: tokens evaluated, context use, LUT rows fetched and cache hits",
    "/quit": "leave (Ctrl-D too)",
}


def format_stats(s: dict) -> str:
    """Model.stats() for people: labelled, rounded, with units."""
    from .inspect import _size

    ms, tokens, steps = s["t_eval_ms"], s["tokens_evaluated"], s["steps"]
    lookups = s["lut_rows_fetched"] + s["lut_cache_hits"]
    speed = f", {tokens / (ms / 1000):.1f} tokens/s" if ms > 0 else ""
    hits = f" ({100 * s['lut_cache_hits'] / lookups:.1f}% of lookups)" if lookups else ""
    rows = [("tokens evaluated", f"{tokens} in {steps} steps, {ms:.1f} ms{speed}"),
            ("context", f"{s['tokens_in_context']} of {s['n_ctx']} tokens"),
            ("LUT rows fetched", f"{s['lut_rows_fetched']} ({_size(s['lut_bytes_fetched'])}), "
                                 f"{s['t_lut_ms']:.1f} ms"),
            ("LUT cache hits", f"{s['lut_cache_hits']}{hits}"),
            ("LUT cache holds", _size(s["lut_cache_bytes"]))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':<{width + 1}}  {v}" for k, v in rows)


def cmd_chat(a) -> int:
    from .chat import trim_history

    with _open_model(a) as m:
        history = [{"role": "system", "content": a.system}] if a.system else []
        # The oldest turns go once the chat passes the context the model was trained at (past it, quality falls)
        # or the context made, whichever is smaller.
        trained = int(m.info["n_ctx_train"])
        limit = min(trained, m.n_ctx)
        why = "was trained at" if trained <= m.n_ctx else "has room for (-c)"
        interactive = sys.stdin.isatty()
        if interactive:
            print(f"mole chat: {m!r}\n/help lists the commands; /quit or Ctrl-D leaves.", file=sys.stderr)
        while True:
            if interactive:
                sys.stderr.write("> ")
                sys.stderr.flush()
            line = sys.stdin.readline()
            if not line:
                if interactive:
                    sys.stderr.write("\n")   # Ctrl-D: the shell's prompt starts on a line of its own
                break
            text, line = line.rstrip("\n"), line.strip()
            if not line:
                continue
            if line == "/quit":
                break
            if line == "/help":
                width = max(map(len, CHAT_COMMANDS))
                print("\n".join(f"{c:<{width}}  {what}" for c, what in CHAT_COMMANDS.items()))
                continue
            if line == "/reset":
                history = history[:1] if a.system else []
                m.reset()
                m.reset_stats()
                print("(history and counters cleared)", file=sys.stderr)
                continue
            if line == "/stats":
                print(format_stats(m.stats()))
                continue
            if line.startswith("/") and " " not in line:
                print(f"(unknown command {line}; /help lists the commands)", file=sys.stderr)
                continue
            history.append({"role": "user", "content": text})
            history, dropped = trim_history(history, m, limit, reserve=min(a.n_predict, limit // 4))
            if dropped:
                print(f"(dropped the {dropped} oldest message{'s' if dropped > 1 else ''}: the conversation passed "
                      f"the {limit} tokens the model {why})", file=sys.stderr)
            reply = []
            try:
                for chunk in m.chat(history, stream=True, max_tokens=a.n_predict, **_sampling(a)):
                    piece = chunk["choices"][0]["delta"].get("content", "")
                    reply.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            except errors.ContextFullError:
                print("\n(the conversation no longer fits in the context; /reset to start over)", file=sys.stderr)
                history.pop()
                continue
            except KeyboardInterrupt:
                print("\n(interrupted)", file=sys.stderr)
            sys.stdout.write("\n")
            sys.stdout.flush()
            history.append({"role": "assistant", "content": "".join(reply).strip()})
    return 0


def cmd_perplexity(a) -> int:
    from .perplexity import perplexity

    with open(a.file, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if a.chars:
        text = text[: a.chars]
    with _open_model(a) as m:
        t0 = time.perf_counter()
        try:
            r = perplexity(m, text, a.ctx, progress=lambda done, total: _progress(done, total, t0, "tokens"))
        except ValueError as e:
            raise errors.InvalidArgumentError(f"{a.file}: {e}") from None
        sys.stderr.write("\n")
        # ± one standard error of the mean over the scored tokens (as llama.cpp's perplexity prints it)
        print(f"tokens {r.n_tokens}  ppl {r.ppl:.4f} ± {r.ppl_se:.4f}  nll/token {r.nll:.4f} ± {r.nll_se:.4f}  "
              f"bits/byte {r.bits_per_byte:.4f} ± {r.bits_per_byte_se:.4f}")
    return 0


def cmd_bench(a) -> int:
    """Runs bench/bench_cpu.py's core (bench_model) on one model: prompt and decode speed, bandwidth fraction,
    peak RSS, LUT bytes per token, LUT warm vs evicted, and the peers asked for (--dense, --llama, --torch).
    Without the source tree's harness, or without its dependencies (gguf), it measures the model alone."""
    from pathlib import Path

    if os.environ.get("MOLE_BENCH_DIR"):      # where the harness is (a folder without it: the simple bench)
        candidates = [Path(os.environ["MOLE_BENCH_DIR"])]
    else:
        candidates = [Path(__file__).resolve().parents[2] / "bench", Path.cwd() / "bench"]
    bench_dir = next((d for d in candidates if (d / "bench_cpu.py").is_file()), None)
    if bench_dir is None:
        if a.dense or a.llama or a.torch:
            raise errors.MoleError("--dense/--llama/--torch need bench/bench_cpu.py of a mole.cpp source tree "
                                   "(run from the checkout, or set MOLE_BENCH_DIR); looked in "
                                   + ", ".join(map(str, candidates)))
        return _bench_simple(a)
    try:   # the harness reads files with the gguf package, and --torch runs the PyTorch model
        importlib.import_module("gguf")
        if a.torch:
            importlib.import_module("torch")
    except ImportError as e:
        if not _is_dependency(e):
            raise
        if a.dense or a.llama or a.torch:
            raise _needs_converter(f"mole bench --dense/--llama/--torch (the harness {bench_dir / 'bench_cpu.py'})",
                                   e) from None
        print(f"mole bench: the harness {bench_dir / 'bench_cpu.py'} needs the converter's dependencies ({e}; "
              f"install them from the clone with: {CONVERT_INSTALL}); measuring the model alone", file=sys.stderr)
        return _bench_simple(a)
    if str(bench_dir) not in sys.path:
        sys.path.insert(0, str(bench_dir))
    bench_cpu = importlib.import_module("bench_cpu")
    from . import demo_model_path

    model = a.model or demo_model_path()
    for name, path in (("model", model), ("dense model", a.dense)):
        if path is not None and not Path(path).is_file():
            raise errors.ModelFileNotFoundError(f"{name} file not found: {path}")
    notes, llama = [], None
    if a.llama:
        import llama_peer

        why = llama_peer.available()
        if why:
            notes.append(why + "; llama.cpp column skipped")
        else:
            llama = llama_peer.write_llama_gguf(model, Path(model).with_name(f"llama-twin-{Path(model).stem}.gguf"))
    res = bench_cpu.bench_model(model, dense=a.dense, llama=llama, torch=a.torch, cold=not a.no_cold,
                                threads=a.threads, prompt=a.prompt_tokens, gen=a.gen_tokens, repeats=a.repeats)
    res["notes"] = notes
    print(f"model {model}\n{a.threads} threads, prompt {a.prompt_tokens} tokens, decode {a.gen_tokens} tokens, "
          f"median of {a.repeats}\n\n{bench_cpu.table(res)}")
    if a.json:
        import json
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


def _bench_simple(a) -> int:
    """Prompt and decode speed of one model with the package alone (no source tree): medians of repeats."""
    import statistics

    import numpy as np

    from . import Model, demo_model_path

    n_ctx = max(a.prompt_tokens, 8 + a.gen_tokens) + 8
    with Model(a.model or demo_model_path(), n_ctx=n_ctx, n_threads=a.threads) as m:
        prompt = np.random.default_rng(0).integers(1, m.n_vocab, size=max(a.prompt_tokens, 8 + a.gen_tokens)).tolist()
        pp, tg = [], []
        for _ in range(a.repeats):
            m.reset()
            t0 = time.perf_counter()
            m.eval(prompt[:a.prompt_tokens])
            pp.append(a.prompt_tokens / (time.perf_counter() - t0))
            m.reset()
            m.eval(prompt[:8])
            t0 = time.perf_counter()
            for t in prompt[8:8 + a.gen_tokens]:
                m.eval([t])
            tg.append(a.gen_tokens / (time.perf_counter() - t0))
        s = m.stats()
        print(f"model {m!r}\n{m.n_threads} threads (the harness with peers needs the source tree's bench/ and "
              f".[convert])\n"
              f"prompt {a.prompt_tokens} tokens: {statistics.median(pp):.1f} tokens/s (median of {a.repeats})\n"
              f"decode {a.gen_tokens} tokens: {statistics.median(tg):.1f} tokens/s\n"
              f"LUT rows fetched {s['lut_rows_fetched']}, bytes {s['lut_bytes_fetched']}, "
              f"cache hits {s['lut_cache_hits']}")
    return 0


def cmd_serve(a) -> int:
    """The OpenAI-compatible server (mole/server/): needs the `server` extra (Starlette, uvicorn)."""
    try:
        from .server import app
    except ImportError as e:
        if not _is_dependency(e):
            raise
        raise errors.MoleError(f"mole serve needs the server's dependencies ({e}); install them from the root of "
                               f"the mole.cpp clone with: {SERVER_INSTALL}") from None
    batch = a.batch if a.batch is not None else _ffi.context_defaults()["n_batch"]
    if a.parallel > batch:
        a.parser.error(f"--parallel {a.parallel} is more than --batch {batch}: every sequence's next token must fit "
                       "in one step")
    if a.ctx_total is not None:   # the user asks to split one budget of positions (llama-server's -c with -np)
        if a.ctx is not None:
            a.parser.error("give --ctx (positions per sequence) or --ctx-total (positions split over --parallel), "
                           "not both")
        if a.ctx_total < a.parallel:
            a.parser.error(f"--ctx-total {a.ctx_total} is less than --parallel {a.parallel}: each sequence needs at "
                           "least one position")
        a.ctx = a.ctx_total // a.parallel
    return app.serve(a)


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or n < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return n
    return parse


_positive, _non_negative = _int_at_least(1), _int_at_least(0)


def _port(text: str) -> int:
    n = _non_negative(text)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got {text!r}")
    return n


def _float_in(low: float, high: float | None = None):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not (v >= low and (high is None or v <= high)) or math.isinf(v):
            raise argparse.ArgumentTypeError(f"must be a number >= {low:g}{f' and <= {high:g}' if high else ''}, "
                                             f"got {text!r}")
        return v
    return parse


def _progress(done: int, total: int, t0: float, unit: str) -> None:
    frac = done / max(1, total)
    el = time.perf_counter() - t0
    eta = el / frac - el if frac > 0 else 0
    bar = "#" * int(30 * frac)
    sys.stderr.write(f"\r[{bar:<30}] {done}/{total} {unit} {done / max(el, 1e-9):.0f}/s ETA {eta:.0f}s")
    sys.stderr.flush()


def _run_converter(command: str, argv: list[str]) -> int:
    """`mole convert` / `mole train`: the arguments are parsed first by mole_convert.args, which needs no torch
    (--help and usage errors work on the base install), then the converter is imported; when its dependencies
    are missing, the error says how to install them."""
    module, fn = _CONVERTER[command]
    try:
        from mole_convert import args as converter_args

        if command == "convert":
            converter_args.convert_parser().parse_args(argv)
        else:
            converter_args.parse_train_args(argv)
        main_fn = getattr(importlib.import_module(f"mole_convert.{module}"), fn)
    except ImportError as e:
        if not _is_dependency(e):
            raise
        raise _needs_converter(f"mole {command}", e) from None
    return int(main_fn(argv) or 0)


# ---- entry point ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mole", description="Run and convert Mixture-of-Lookup-Experts models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sampling, ctx = _library_defaults()

    sub.add_parser("convert", help="convert an HF MoLE checkpoint directory to .gguf", add_help=False)
    sub.add_parser("inspect", help="show a .gguf file's metadata, tensors and LUT size", add_help=False)
    sub.add_parser("train", help="train a MoLE (or dense) model on text files", add_help=False)

    r = sub.add_parser("run", help="complete one prompt, streamed")
    _add_model_args(r, ctx)
    r.add_argument("-p", "--prompt", default=None, help="prompt text (default: read stdin)")
    r.add_argument("-n", "--n-predict", type=_non_negative, default=128, help="tokens to generate (default 128)")
    r.add_argument("-v", "--verbose", action="store_true", help="print counters to stderr")
    r.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-text tokens")
    _add_sampling_args(r, sampling)
    r.set_defaults(fn=cmd_run, parser=r)

    c = sub.add_parser("chat", help="interactive chat (reads lines from stdin)")
    _add_model_args(c, ctx)
    c.add_argument("-n", "--n-predict", type=_non_negative, default=256, help="most tokens per reply (default 256)")
    c.add_argument("--system", default=None, help="system message")
    _add_sampling_args(c, sampling)
    c.set_defaults(fn=cmd_chat)

    q = sub.add_parser("perplexity", help="perplexity and bits per byte of a text file, with standard errors",
                       description="Perplexity, nats per token and bits per byte of a text file, each with its "
                       "standard error (± one standard error of the mean over the scored tokens). Windows of --ctx "
                       "tokens advance by half a window; every token after the first is scored once.")
    _add_model_args(q, ctx, ctx_default=512)   # perplexity's evaluation window, as llama.cpp's
    q.add_argument("-f", "--file", required=True, help="text file")
    q.add_argument("--chars", type=_positive, default=None, help="only the first N characters")
    q.set_defaults(fn=cmd_perplexity)

    b = sub.add_parser("bench", help="prompt and decode speed of a model, side by side with its peers")
    b.add_argument("-m", "--model", default=None, help="MoLE .gguf (default: the bundled demo model)")
    b.add_argument("-t", "--threads", type=_positive, default=2, help="CPU threads (default 2)")
    b.add_argument("--dense", default=None, help="the same model dense (num_experts 0), .gguf, run alongside")
    b.add_argument("--llama", action="store_true", help="also time llama.cpp (llama-cpp-python) on an equal-FLOPs "
                   "dense llama twin written beside the model")
    b.add_argument("--torch", action="store_true", help="also time the PyTorch model (needs the converter)")
    b.add_argument("--no-cold", action="store_true", help="skip the run with the LUT evicted from the page cache")
    b.add_argument("--prompt-tokens", type=_positive, default=512)
    b.add_argument("--gen-tokens", type=_positive, default=64)
    b.add_argument("--repeats", type=_positive, default=3)
    b.add_argument("--json", default=None, help="also write the results to this JSON file")
    b.set_defaults(fn=cmd_bench)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching (needs .[server])",
                       description="OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions (streamed "
                       "over server-sent events or not), /v1/models, /health, /metrics (Prometheus). Concurrent "
                       "requests decode together in one forward step over --parallel sequences, each of the full "
                       "context. Needs the server extra: " + SERVER_INSTALL)
    _add_model_args(s, ctx)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0: any free port, printed)")
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route but /health "
                   "(default: the MOLE_API_KEY environment variable; unset: no key)")
    s.add_argument("--parallel", "-np", type=_positive, default=4,
                   help="sequences decoded together, each with the full context of --ctx positions (default 4; the "
                   "KV cache grows with parallel x ctx)")
    s.add_argument("--ctx-total", type=_positive, default=None,
                   help="split this many positions evenly over the --parallel sequences instead (each gets "
                   "ctx-total / parallel; llama-server's -c with -np). Without it nothing is split: every sequence "
                   "has the full --ctx")
    s.add_argument("--queue", type=_non_negative, default=64,
                   help="sequences that may wait for a free one; past that a request gets 503 (default 64)")
    s.add_argument("--batch", type=_positive, default=None,
                   help=f"most tokens per forward step: a new prompt is read in chunks of what the running "
                   f"sequences leave of it (default {_default(ctx, 'n_batch')})")
    s.add_argument("--max-tokens", type=_positive, default=None,
                   help="most tokens one choice may ask for (default: the context length)")
    s.add_argument("--max-body-kb", type=_positive, default=1024, help="largest request body in KiB (default 1024)")
    s.add_argument("--alias", default=None, help="model id in the API (default: the file's name)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default info: one line per request on stderr)")
    s.set_defaults(fn=cmd_serve, parser=s)
    return p


_CONVERTER = {"convert": ("convert", "main_convert"), "train": ("train", "main")}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rc = _dispatch(argv)
        sys.stdout.flush()   # a reader that went away shows up here, not as a message at interpreter exit
        return rc
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (errors.MoleError, OSError, ValueError) as e:
        print(f"mole: error: {e}", file=sys.stderr)
        return 1


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in _CONVERTER:
        return _run_converter(argv[0], argv[1:])
    if argv and argv[0] == "inspect":
        from .inspect import main_inspect
        return main_inspect(argv[1:])
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "fn", None):
        parser.print_help()
        return 2
    return a.fn(a)


def _stdout_closed() -> int:
    """The reader of stdout is gone (`mole inspect FILE | head`): no message, the exit status of a Unix tool killed
    by SIGPIPE (128 + 13), and stdout pointed at /dev/null so that the interpreter's last flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
