"""mole.Model: a loaded model plus one context: tokenize, logits, generate (streaming), chat, stats."""
from __future__ import annotations

import json
import math
import numbers
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from . import _ffi, errors
from . import gguf_names as G
from .chat import render_chat
from .stops import StopMatcher

_INT32_MAX = 2**31 - 1
_DEVICES = {"cpu": "MOLE_DEVICE_CPU", "cuda": "MOLE_DEVICE_CUDA"}   # device= -> the header's enum mole_device name
_KV_TYPES = {"f16": "MOLE_TYPE_F16", "f32": "MOLE_TYPE_F32"}         # kv_type= -> the header's enum mole_type name


class Model:
    """A MoLE (or dense) model in a .gguf file, ready to evaluate.

    One Model holds one context (KV cache) and must be used by one thread at a time. The context holds n_seq_max
    sequences (default 1), each of n_ctx positions: generate_batch decodes that many prompts at once.

    Every None means the C library's default (mole_context_default_params): n_ctx None is the model's
    training context length (the file's mole.context_length); n_threads None is one thread per physical
    core; n_batch None is 512 tokens per forward step; lut_cache_mb None is the backend's choice of LUT row
    cache (64 MB on the CPU; on CUDA the whole LUT when it fits in half the free VRAM; 0 turns it off).
    kv_type None is the backend's KV cache type ("f16" on the CPU, half the memory and the bytes a step reads;
    "f32" on CUDA); "f32" on the CPU gives the unrounded cache.
    The context actually made is in .n_ctx, .n_threads, .n_batch and .kv_type.
    """

    def __init__(self, path, n_ctx: int | None = None, n_threads: int | None = None, device: str = "cpu",
                 *, n_batch: int | None = None, lut_cache_mb: int | None = None, n_seq_max: int | None = None,
                 kv_type: str | None = None):
        path = os.fspath(path)
        for name, v in (("n_ctx", n_ctx), ("n_threads", n_threads), ("n_batch", n_batch), ("n_seq_max", n_seq_max)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise errors.InvalidArgumentError(f"{name} must be a positive integer or None, got {v!r}")
            if v is not None and v > _INT32_MAX:   # the C field is an int32_t: say so, not cffi's OverflowError
                raise errors.InvalidArgumentError(f"{name} = {v} is more than libmole's limit of {_INT32_MAX}")
        if lut_cache_mb is not None and (not isinstance(lut_cache_mb, int) or isinstance(lut_cache_mb, bool)
                                         or not 0 <= lut_cache_mb < 2**63):
            raise errors.InvalidArgumentError(f"lut_cache_mb must be >= 0 or None, got {lut_cache_mb!r}")
        if kv_type is not None and kv_type not in _KV_TYPES:
            raise errors.InvalidArgumentError(f"kv_type must be one of {sorted(_KV_TYPES)} or None, got {kv_type!r}")
        if device not in _DEVICES:
            raise errors.InvalidArgumentError(f"device must be one of {sorted(_DEVICES)}, got {device!r}")
        if not Path(path).exists():
            raise errors.ModelFileNotFoundError(f"model file not found: {path}")
        self._model = None
        self._ctx = None
        self._batcher = None   # a mole.batch.Batcher that owns the context's sequences, while one is open
        self.path = path
        L = _ffi.get()
        self._L, ffi, lib = L, L.ffi, L.lib

        mparams = ffi.new("struct mole_model_params *")
        lib.mole_model_default_params(mparams)
        mparams.device = getattr(lib, _DEVICES[device])
        out = ffi.new("struct mole_model **")
        _ffi.check(lib.mole_model_load(path.encode(), mparams, out), f"loading {path}")
        self._model = out[0]

        info = ffi.new("struct mole_model_info *")
        _ffi.check(lib.mole_model_get_info(self._model, info))
        self._info = {k: getattr(info, k) for k in dir(info)}

        cparams = ffi.new("struct mole_context_params *")
        lib.mole_context_default_params(cparams)
        for name, v in (("n_ctx", n_ctx), ("n_threads", n_threads), ("n_batch", n_batch),
                        ("lut_cache_mb", lut_cache_mb), ("n_seq_max", n_seq_max)):
            if v is not None:
                setattr(cparams, name, v)
        if kv_type is not None:
            cparams.type_kv = getattr(lib, _KV_TYPES[kv_type])
        cout = ffi.new("struct mole_context **")
        try:
            _ffi.check(lib.mole_context_new(self._model, cparams, cout), "creating context")
        except BaseException:
            lib.mole_model_free(self._model)
            self._model = None
            raise
        self._ctx = cout[0]
        got = ffi.new("struct mole_context_params *")
        _ffi.check(lib.mole_context_get_params(self._ctx, got))
        self.n_ctx = int(got.n_ctx)
        self.n_threads = int(got.n_threads)
        self.n_batch = int(got.n_batch)
        self.n_seq_max = int(got.n_seq_max)
        self.kv_type = next(k for k, v in _KV_TYPES.items() if getattr(lib, v) == got.type_kv)
        self.device = device
        self._tokens: list[int] = []   # what sequence 0 of the context holds now
        self._metadata = None
        self._logits_buf = np.empty(self.n_vocab, dtype=np.float32)

    # ---- properties ----------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return int(self._info["n_vocab"])

    @property
    def n_layer(self) -> int:
        return int(self._info["n_layer"])

    @property
    def n_expert(self) -> int:
        return int(self._info["n_expert"])

    @property
    def n_embd(self) -> int:
        return int(self._info["n_embd"])

    @property
    def info(self) -> dict:
        """Hyperparameters and sizes (struct mole_model_info as a dict)."""
        return dict(self._info)

    @property
    def metadata(self) -> dict:
        """Every GGUF metadata key of the file, with its value."""
        if self._metadata is None:
            buf, n = _ffi.call_sized(self._lib.mole_model_metadata_json, self._live_model(), initial=1 << 20)
            self._metadata = json.loads(self._L.ffi.unpack(buf, n).decode("utf-8", "replace"))
        return self._metadata

    @property
    def _lib(self):
        return self._L.lib

    def _live_model(self):
        if self._model is None:
            raise errors.MoleError("the model is closed")
        return self._model

    def _live_ctx(self):
        if self._ctx is None:
            raise errors.MoleError("the model is closed")
        return self._ctx

    # ---- tokens ----------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        """Text to token ids. special=True maps special-token text like <|endoftext|> to its id."""
        if not isinstance(text, str):
            raise errors.InvalidArgumentError(f"tokenize expects str, got {type(text).__name__}")
        data = text.encode("utf-8", "surrogatepass")
        buf, n = _ffi.call_sized(self._lib.mole_tokenize, self._live_model(), data, len(data), int(add_bos),
                                 int(special), initial=len(data) + 8, kind="int32_t")
        return list(self._L.ffi.unpack(buf, n))

    def detokenize(self, ids, skip_special: bool = False) -> str:
        """Token ids to text (invalid UTF-8 becomes U+FFFD)."""
        return self.detokenize_bytes(ids, skip_special).decode("utf-8", "replace")

    def detokenize_bytes(self, ids, skip_special: bool = False) -> bytes:
        arr = self._check_ids(ids)
        ptr = self._L.ffi.from_buffer("int32_t[]", arr)
        buf, n = _ffi.call_sized(self._lib.mole_detokenize, self._live_model(), ptr, len(arr), int(skip_special),
                                 initial=len(arr) * 8 + 16)
        return bytes(self._L.ffi.buffer(buf, n))

    def token_is_eog(self, token: int) -> bool:
        return bool(self._lib.mole_token_is_eog(self._live_model(), int(token)))

    def _check_ids(self, ids) -> np.ndarray:
        """ids as int32 [n]; InvalidArgumentError for anything but integers in [0, n_vocab) (a float, a bool or a
        string is not silently made a token id; an int too big for int64 is just out of range)."""
        try:
            arr = np.asarray(ids).reshape(-1)
        except (TypeError, ValueError) as e:
            raise errors.InvalidArgumentError(f"token ids must be a sequence of integers: {e}") from None
        if arr.dtype == object:   # Python ints past int64, or a mix of types
            bad = next((t for t in arr.tolist() if isinstance(t, bool) or not isinstance(t, numbers.Integral)), None)
            if bad is not None:
                raise errors.InvalidArgumentError(f"token ids must be integers, got {bad!r}")
            out = [t for t in arr.tolist() if not 0 <= t < self.n_vocab]
            if out:
                raise errors.InvalidArgumentError(f"token id {out[0]} out of range [0, {self.n_vocab})")
            arr = arr.astype(np.int64)
        elif arr.size and arr.dtype.kind not in "iu":
            raise errors.InvalidArgumentError(f"token ids must be integers, got {arr.dtype} values such as "
                                              f"{arr[0]!r}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_vocab):
            bad = int(arr[(arr < 0) | (arr >= self.n_vocab)][0])
            raise errors.InvalidArgumentError(f"token id {bad} out of range [0, {self.n_vocab})")
        return np.ascontiguousarray(arr, dtype=np.int32)

    # ---- evaluation ------------------------------------------------------------------------

    def _claim(self, batcher) -> None:
        """A Batcher takes the context's sequences: they are cleared, and sequence 0's bookkeeping with them."""
        if self._batcher is not None:
            raise errors.MoleError("the context is already in use by a batch (generate_batch or mole serve)")
        ctx = self._live_ctx()
        for s in range(self.n_seq_max):
            _ffi.check(self._lib.mole_seq_truncate(ctx, s, 0))
        self._tokens.clear()
        self._batcher = batcher

    def _release(self, batcher) -> None:
        if self._batcher is batcher:
            self._batcher = None

    def _own_ctx(self):
        if self._batcher is not None:
            raise errors.MoleError("the context is in use by a batch (generate_batch or mole serve); close it first")
        return self._live_ctx()

    def _truncate(self, n_keep: int) -> None:
        self._own_ctx()
        _ffi.check(self._lib.mole_seq_truncate(self._live_ctx(), 0, n_keep))
        del self._tokens[n_keep:]

    def _eval(self, ids: np.ndarray, out: np.ndarray | None) -> None:
        """Appends ids to sequence 0 in n_batch chunks (Ctrl-C is seen between chunks; the context
        keeps the chunks done). out: [len(ids), V] for every position's logits, or [V] for the
        last position only, or None."""
        lib, ctx = self._lib, self._own_ctx()
        if len(self._tokens) + len(ids) > self.n_ctx:
            raise errors.ContextFullError(
                f"{len(self._tokens) + len(ids)} tokens do not fit in the context (n_ctx = {self.n_ctx})")
        try:
            self._eval_chunks(ids, out)
        except BaseException:
            # Ctrl-C or an error may land between a finished step and our bookkeeping: start clean.
            lib.mole_seq_truncate(ctx, 0, 0)
            self._tokens.clear()
            raise

    def _eval_chunks(self, ids: np.ndarray, out: np.ndarray | None) -> None:
        ffi, lib, ctx = self._L.ffi, self._lib, self._ctx
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start:start + self.n_batch]
            last = start + len(chunk) == len(ids)
            if out is not None and out.ndim == 2:
                want = ffi.NULL
                dst = out[start:start + len(chunk)]
            elif out is not None and last:
                flags = np.zeros(len(chunk), dtype=np.int8)
                flags[-1] = 1
                want = ffi.from_buffer("int8_t[]", flags)
                dst = out
            else:
                flags = np.zeros(len(chunk), dtype=np.int8)
                want = ffi.from_buffer("int8_t[]", flags)
                dst = None
            dptr = ffi.from_buffer("float[]", dst) if dst is not None else ffi.NULL
            cap = dst.size if dst is not None else 0
            _ffi.check(lib.mole_decode(ctx, len(chunk), ffi.from_buffer("int32_t[]", chunk), ffi.NULL, want,
                                       dptr, cap))
            self._tokens.extend(int(t) for t in chunk)

    def logits(self, ids) -> np.ndarray:
        """Fresh evaluation of ids from position 0: float32 logits [len(ids), n_vocab]."""
        arr = self._check_ids(ids)
        if arr.size == 0:
            raise errors.InvalidArgumentError("logits needs at least one token")
        if arr.size > self.n_ctx:
            raise errors.ContextFullError(f"{arr.size} tokens do not fit in the context (n_ctx = {self.n_ctx})")
        self._truncate(0)
        out = np.empty((arr.size, self.n_vocab), dtype=np.float32)
        self._eval(arr, out)
        return out

    def eval(self, ids) -> np.ndarray:
        """Appends ids to the context (after what it holds) and returns the last position's logits
        [n_vocab] (a copy). Only that row of logits is computed."""
        arr = self._check_ids(ids)
        if arr.size == 0:
            raise errors.InvalidArgumentError("eval needs at least one token")
        out = np.empty(self.n_vocab, dtype=np.float32)
        self._eval(arr, out)
        return out

    def _prefill(self, ids: np.ndarray) -> np.ndarray:
        """Makes sequence 0 hold ids, reusing the longest common prefix already in the cache;
        returns the logits after the last id."""
        common = 0
        limit = min(len(self._tokens), len(ids) - 1)   # always re-evaluate at least the last token
        while common < limit and self._tokens[common] == int(ids[common]):
            common += 1
        self._truncate(common)
        self._eval(ids[common:], self._logits_buf)
        return self._logits_buf

    # ---- generation ------------------------------------------------------------------------

    def generate(self, prompt, max_tokens: int = 128, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stop=None, stream: bool = False,
                 *, min_p: float | None = None, repeat_penalty: float | None = None,
                 repeat_last_n: int | None = None, add_bos: bool = False, ignore_eos: bool = False):
        """Completes prompt (str or token ids). temperature=0 is greedy. stop: a string or list of
        strings that end the text (not included). ignore_eos: keep going past end-of-text tokens.
        Returns the text, or with stream=True an iterator of text pieces.

        A sampling option left None takes the C library's default (mole_sampler_default_params):
        temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.0 (off), repeat_last_n 64.
        seed None is a random seed."""
        it = self._generate_iter(prompt, max_tokens, temperature, top_k, top_p, seed, stop, min_p,
                                 repeat_penalty, repeat_last_n, add_bos, ignore_eos)
        if stream:
            return (piece for piece, _ in it if piece)
        return "".join(piece for piece, _ in it)

    def generate_batch(self, prompts, max_tokens: int = 128, temperature: float | None = None,
                       top_k: int | None = None, top_p: float | None = None, seed: int | None = None, stop=None,
                       *, min_p: float | None = None, repeat_penalty: float | None = None,
                       repeat_last_n: int | None = None, add_bos: bool = False, ignore_eos: bool = False) -> list[str]:
        """Completes several prompts (each a str or token ids) together: the context's n_seq_max sequences decode
        in the same forward steps (mole.batch: continuous batching; a prompt takes the sequence of one that
        finished). Returns the texts in the order of the prompts. The options are generate()'s, for every prompt;
        with a seed, each prompt's text is the one generate(prompt, seed=seed, ...) gives, since a sequence's logits
        do not depend on the others in its step. Without one, each prompt gets a random seed."""
        from .batch import Batcher, Job

        if isinstance(prompts, str) or not hasattr(prompts, "__iter__"):
            raise errors.InvalidArgumentError("generate_batch expects a list of prompts (str or token ids)")
        jobs = []
        for i, p in enumerate(prompts):
            ids = self.tokenize(p, add_bos=add_bos) if isinstance(p, str) else p
            jobs.append(Job(ids, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed, stop=stop,
                            ignore_eos=ignore_eos, tag=i))
        self._sampler(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, 0)   # options checked once
        texts: list[list[str]] = [[] for _ in jobs]
        with Batcher(self) as b:
            for j in jobs:
                b.submit(j)
            while b.busy:
                for d in b.step():
                    if d.job.error is not None:
                        raise d.job.error
                    texts[d.job.tag].append(d.text)
        return ["".join(t) for t in texts]

    def _sampler(self, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed):
        """A sampler from the library's default params, with the options that are not None set."""
        ffi, lib = self._L.ffi, self._lib
        for name, v, hi in (("temperature", temperature, None), ("top_p", top_p, 1), ("min_p", min_p, 1),
                            ("repeat_penalty", repeat_penalty, None)):
            if v is not None and (not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v)
                                  or v < 0 or (hi and v > hi)):
                raise errors.InvalidArgumentError(f"{name} must be a finite number >= 0"
                                                  f"{f' and <= {hi}' if hi else ''}, got {v!r}")
        for name, v in (("top_k", top_k), ("repeat_last_n", repeat_last_n)):
            if v is not None and (not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0):
                raise errors.InvalidArgumentError(f"{name} must be an integer >= 0, got {v!r}")
        # Past int32 both mean "every token": the same as the largest value the C field holds.
        top_k = None if top_k is None else min(int(top_k), _INT32_MAX)
        repeat_last_n = None if repeat_last_n is None else min(int(repeat_last_n), _INT32_MAX)
        if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool)):
            raise errors.InvalidArgumentError(f"seed must be an integer or None, got {seed!r}")
        p = ffi.new("struct mole_sampler_params *")
        lib.mole_sampler_default_params(p)
        for name, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("min_p", min_p),
                        ("repeat_penalty", repeat_penalty), ("repeat_last_n", repeat_last_n)):
            if v is not None:
                setattr(p, name, v)
        p.seed = int.from_bytes(os.urandom(8), "little") if seed is None else int(seed) & (2**64 - 1)
        out = ffi.new("struct mole_sampler **")
        _ffi.check(lib.mole_sampler_new(p, out))
        return ffi.gc(out[0], lib.mole_sampler_free)

    def _generate_iter(self, prompt, max_tokens, temperature, top_k, top_p, seed, stop, min_p,
                       repeat_penalty, repeat_last_n, add_bos, ignore_eos=False) -> Iterator[tuple[str, str | None]]:
        """Yields (text piece, None) and finally ("", finish_reason) where finish_reason is
        "stop" (EOS or a stop string) or "length"."""
        if not isinstance(max_tokens, numbers.Integral) or isinstance(max_tokens, bool) or max_tokens < 0:
            raise errors.InvalidArgumentError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
        ids = self._check_ids(self.tokenize(prompt, add_bos=add_bos) if isinstance(prompt, str) else prompt)
        if ids.size == 0:
            raise errors.InvalidArgumentError("the prompt is empty: give at least one token")
        if ids.size > self.n_ctx:
            raise errors.ContextFullError(f"the prompt has {ids.size} tokens; the context holds {self.n_ctx}")
        sampler = self._sampler(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        return self._generate_steps(ids, max_tokens, sampler, StopMatcher(stop), ignore_eos)

    def _generate_steps(self, ids, max_tokens, sampler, stops: StopMatcher, ignore_eos: bool):
        ffi, lib = self._L.ffi, self._lib
        for t in ids:
            lib.mole_sampler_accept(sampler, int(t))
        dec = ffi.new("struct mole_decoder **")
        _ffi.check(lib.mole_decoder_new(self._live_model(), dec))
        decoder = ffi.gc(dec[0], lib.mole_decoder_free)
        logits = self._prefill(ids)
        tok = ffi.new("int32_t *")
        finish = "length"
        for i in range(max_tokens):
            _ffi.check(lib.mole_sampler_sample(sampler, ffi.from_buffer("float[]", logits), self.n_vocab, tok))
            t = int(tok[0])
            if not ignore_eos and lib.mole_token_is_eog(self._model, t):
                finish = "stop"
                break
            buf, n = _ffi.call_sized(lib.mole_decoder_push, decoder, t, initial=64)
            piece, hit = stops.feed(ffi.unpack(buf, n).decode("utf-8", "replace"))
            if piece:
                yield piece, None
            if hit:
                finish = "stop"
                break
            if i + 1 == max_tokens:
                break
            if len(self._tokens) >= self.n_ctx:
                break   # finish "length": the context is full
            self._eval(np.array([t], dtype=np.int32), logits)
        if finish != "stop":
            buf, n = _ffi.call_sized(lib.mole_decoder_flush, decoder, initial=64)
            piece, _ = stops.feed(ffi.unpack(buf, n).decode("utf-8", "replace"))
            if piece:
                yield piece, None
        tail = stops.flush() if finish != "stop" or not stops.matched else ""
        if tail:
            yield tail, None
        yield "", finish

    # ---- chat ------------------------------------------------------------------------------

    def chat(self, messages, stream: bool = False, max_tokens: int = 256, **sampling):
        """OpenAI-shaped chat completion over the file's chat template (or a plain default). sampling: the
        options of generate() (temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, stop);
        those not given take the C library's defaults."""
        template = self.metadata.get(G.KEY_CHAT_TEMPLATE)
        prompt, default_stops = render_chat(messages, template, self)
        stop = sampling.pop("stop", None)
        stops = ([stop] if isinstance(stop, str) else list(stop or [])) + default_stops
        prompt_ids = self.tokenize(prompt, add_bos=False, special=True)
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        model_name = Path(self.path).name
        opt = {k: sampling.pop(k, None) for k in ("temperature", "top_k", "top_p", "seed", "min_p",
                                                  "repeat_penalty", "repeat_last_n")}
        it = self._generate_iter(prompt_ids, max_tokens, opt["temperature"], opt["top_k"], opt["top_p"], opt["seed"],
                                 stops, opt["min_p"], opt["repeat_penalty"], opt["repeat_last_n"], False)
        if sampling:
            raise errors.InvalidArgumentError(f"unknown chat option(s): {', '.join(sorted(sampling))}")
        if stream:
            return self._chat_chunks(it, cid, created, model_name)
        text, finish = [], "length"
        for piece, fin in it:
            text.append(piece)
            if fin is not None:
                finish = fin
        content = "".join(text)
        n_out = len(self.tokenize(content)) if content else 0
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": n_out,
                      "total_tokens": len(prompt_ids) + n_out},
        }

    @staticmethod
    def _chat_chunks(it, cid, created, model_name):
        def chunk(delta, finish=None):
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        yield chunk({"role": "assistant"})
        for piece, fin in it:
            if fin is not None:
                yield chunk({}, fin)
            elif piece:
                yield chunk({"content": piece})

    # ---- bookkeeping -----------------------------------------------------------------------

    def stats(self) -> dict:
        """LUT and evaluation counters of this model's context."""
        s = self._L.ffi.new("struct mole_stats *")
        _ffi.check(self._lib.mole_context_get_stats(self._live_ctx(), s))
        out = {k: getattr(s, k) for k in ("lut_rows_fetched", "lut_bytes_fetched", "lut_cache_hits",
                                          "tokens_evaluated", "steps", "lut_cache_bytes", "t_eval_ms", "t_lut_ms",
                                          "lut_bytes_to_device", "t_lut_wait_ms")}
        out["lut_row_bytes"] = int(self._info["lut_row_bytes"])
        out["n_ctx"] = self.n_ctx
        out["tokens_in_context"] = len(self._tokens)
        out["n_seq_max"] = self.n_seq_max
        out["kv_type"] = self.kv_type
        return out

    def reset_stats(self) -> None:
        self._lib.mole_context_reset_stats(self._live_ctx())

    def reset(self) -> None:
        """Clears the context (KV cache)."""
        self._truncate(0)

    def close(self) -> None:
        """Frees the context and the model; safe to call twice."""
        if self._ctx is not None:
            self._lib.mole_context_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            self._lib.mole_model_free(self._model)
            self._model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self._model is None else f"n_ctx={self.n_ctx}"
        return (f"<mole.Model {Path(self.path).name!r} V={self.n_vocab} L={self.n_layer} N={self.n_expert} "
                f"{state}>")
