"""Continuous batching: many generations share one context's sequences and decode in the same steps.

A Job is one sequence to generate: its prompt, sampling options, seed, stop strings and token budget. A Batcher
runs jobs on the n_seq_max sequences of a Model's context. Each step() is one mole_decode call that holds every
running job's next token and, in what is left of the step's budget (n_batch tokens), the next chunk of the prompts
being read, oldest first: a new prompt joins without holding the others up for more than one chunk, and the LUT
rows that the step's sequences share are fetched once. A job that finishes or is cancelled frees its sequence for
the next waiting job at the next step. A free sequence keeps its tokens: a later prompt that starts with them
reuses them instead of evaluating them again (the prefix cache).

One thread drives a Batcher (step(), submit()); Job.cancel() may be called from any thread. Model.generate_batch
and `mole serve` are built on it.
"""
from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import _ffi, errors
from .stops import StopMatcher

SAMPLER_OPTIONS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n")


@dataclass
class TokenLogprob:
    """One token's log probability under the model (log-softmax of the raw logits, before temperature, penalties
    and bias), with the `top` most likely tokens of that position as (token, logprob), most likely first.
    offset: where the token's text starts in the job's completion text (characters)."""
    token: int
    logprob: float | None
    top: list[tuple[int, float]]
    offset: int = 0


@dataclass
class Delta:
    """What one step produced for one job: newly final text, the logprobs of the tokens whose text starts in it,
    and, on the job's last delta, why it finished ("stop", "length", "cancelled", "error": see Job.error)."""
    job: Job
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: str | None = None
    prompt_logprobs: list[TokenLogprob] | None = None   # once, after the prompt, for jobs that asked


class Job:
    """One sequence to generate.

    prompt: token ids. max_tokens: most tokens to sample (0: none; with prompt_logprobs the prompt is still
    scored). Sampling options left None take the library's defaults (mole_sampler_default_params); seed None is a
    random seed. frequency_penalty / presence_penalty (OpenAI's, over the tokens generated so far) and logit_bias
    ({token: added logit}) change the logits the sampler sees. stop: strings that end the text (not included).
    logprobs: None, or how many alternatives (0..) to report with each sampled token's logprob. prompt_logprobs:
    also score each prompt token given the ones before it (the prompt is then evaluated whole, without the prefix
    cache). tag: anything of the caller's."""

    def __init__(self, prompt, max_tokens: int = 128, *, temperature=None, top_k=None, top_p=None, min_p=None,
                 repeat_penalty=None, repeat_last_n=None, seed=None, stop=None, ignore_eos: bool = False,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, logit_bias=None,
                 logprobs: int | None = None, prompt_logprobs: bool = False, tag=None):
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
            raise errors.InvalidArgumentError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
        if logprobs is not None and (not isinstance(logprobs, int) or isinstance(logprobs, bool) or logprobs < 0):
            raise errors.InvalidArgumentError(f"logprobs must be None or an integer >= 0, got {logprobs!r}")
        for name, v in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise errors.InvalidArgumentError(f"{name} must be a finite number, got {v!r}")
        bias = {}
        for k, v in (logit_bias or {}).items():
            if not isinstance(k, int) or isinstance(k, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise errors.InvalidArgumentError(f"logit_bias maps token ids to finite numbers, got {k!r}: {v!r}")
            bias[k] = float(v)
        self.prompt = np.ascontiguousarray(np.asarray(prompt, dtype=np.int64).reshape(-1))
        self.max_tokens = max_tokens
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                             repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed)
        self.stop = stop
        self.stops = StopMatcher(stop)          # checks the stop strings now, before the job is queued
        self.ignore_eos = bool(ignore_eos)
        self.frequency_penalty = float(frequency_penalty)
        self.presence_penalty = float(presence_penalty)
        self.logit_bias = bias
        self.logprobs = logprobs
        self.prompt_logprobs = bool(prompt_logprobs)
        self.tag = tag
        # progress (the Batcher's)
        self.status = "new"                     # new, waiting, prefill, decode, done
        self.cancelled = False
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.n_generated = 0                    # tokens sampled (an end-of-text token included)
        self.n_cached = 0                       # prompt tokens reused from the prefix cache
        self.n_past = 0                         # prompt tokens in the sequence
        self.t_submit = self.t_start = self.t_first = self.t_done = 0.0
        self.slot: _Slot | None = None
        self._next = 0                          # the sampled token to evaluate next
        self._sampler = self._decoder = None
        self._counts: dict[int, int] = {}       # generated token -> times (penalties)
        self._pending: collections.deque = collections.deque()   # TokenLogprob not yet released with text
        self._text_len = 0                      # characters of completion text decoded so far
        self._released = 0                      # of which released (past the stop-string hold-back)
        self._prompt_lp: list[TokenLogprob] | None = None

    @property
    def n_prompt(self) -> int:
        return int(self.prompt.size)

    def cancel(self) -> None:
        """Asks the Batcher to drop the job at its next step (from any thread); its sequence is freed then."""
        self.cancelled = True

    def __repr__(self):
        return f"<Job {self.status} prompt={self.n_prompt} generated={self.n_generated} tag={self.tag!r}>"


class _Slot:
    """One sequence of the context: the tokens its KV cache holds and the job using it (None: free)."""

    def __init__(self, seq: int):
        self.seq = seq
        self.tokens: list[int] = []
        self.job: Job | None = None
        self.last_used = 0.0


class Batcher:
    """Runs Jobs on the sequences of one Model's context (all n_seq_max of them unless n_seq is given).

    step_tokens: most tokens per step (default and at most the context's n_batch, at least n_seq). While the
    Batcher is open it owns the context: the Model's own generate/eval raise until close().
    before_decode: a callable run before each mole_decode (a test hook: it sees the step's size)."""

    def __init__(self, model, n_seq: int | None = None, step_tokens: int | None = None, before_decode=None):
        self.model = model
        self._L = model._L
        n_seq = model.n_seq_max if n_seq is None else n_seq
        if not isinstance(n_seq, int) or not 1 <= n_seq <= model.n_seq_max:
            raise errors.InvalidArgumentError(f"n_seq must be in [1, {model.n_seq_max}] (the context's n_seq_max), "
                                              f"got {n_seq!r}")
        step_tokens = model.n_batch if step_tokens is None else step_tokens
        if not isinstance(step_tokens, int) or not n_seq <= step_tokens <= model.n_batch:
            raise errors.InvalidArgumentError(f"step_tokens must be in [{n_seq}, {model.n_batch}] (every sequence's "
                                              f"token fits in one step of at most n_batch), got {step_tokens!r}")
        self.n_seq, self.step_tokens, self.n_ctx, self.n_vocab = n_seq, step_tokens, model.n_ctx, model.n_vocab
        self.before_decode = before_decode
        model._claim(self)
        self.slots = [_Slot(s) for s in range(n_seq)]
        self.waiting: collections.deque[Job] = collections.deque()
        self._prefill: list[Job] = []           # jobs reading their prompt, in admission order
        self._buf = np.empty((n_seq, self.n_vocab), dtype=np.float32)
        self._tok = self._L.ffi.new("int32_t *")
        self.steps = 0
        self.last_step_rows = self.last_step_prompt = self.last_step_sampled = 0   # the last step's tokens

    # ---- queue -------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queues a job (checked: token ids in range, a prompt of 1..n_ctx tokens)."""
        if job.status != "new":
            raise errors.InvalidArgumentError(f"the job was submitted before ({job.status})")
        ids = job.prompt
        if ids.size == 0:
            raise errors.InvalidArgumentError("the prompt is empty: give at least one token")
        if ids.size > self.n_ctx:
            raise errors.ContextFullError(f"the prompt has {ids.size} tokens; the context holds {self.n_ctx}")
        job.prompt = self.model._check_ids(ids)
        for t in job.logit_bias:
            if not 0 <= t < self.n_vocab:
                raise errors.InvalidArgumentError(f"logit_bias: token id {t} out of range [0, {self.n_vocab})")
        job.status = "waiting"
        job.t_submit = time.perf_counter()
        self.waiting.append(job)

    @property
    def running(self) -> list[Job]:
        return [s.job for s in self.slots if s.job is not None]

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(s.job is not None for s in self.slots)

    def kv_tokens(self) -> tuple[int, int]:
        """(tokens held by running jobs' sequences, tokens held by free sequences: the prefix cache)."""
        used = sum(len(s.tokens) for s in self.slots if s.job is not None)
        return used, sum(len(s.tokens) for s in self.slots) - used

    # ---- one step ----------------------------------------------------------------------------

    def step(self) -> list[Delta]:
        """Drops cancelled jobs, gives free sequences to waiting jobs, and runs one forward step; returns the
        deltas of the jobs it touched (none when there was nothing to do)."""
        out: list[Delta] = []
        self.last_step_rows = self.last_step_prompt = self.last_step_sampled = 0
        self._sweep(out)
        self._admit(out)
        toks, seqs, want, rows = [], [], [], []       # rows: (job, prompt index or -1) of each wanted entry
        for s in self.slots:
            if s.job is not None and s.job.status == "decode":
                toks.append(s.job._next)
                seqs.append(s.seq)
                want.append(1)
                rows.append((s.job, -1))
        budget = self.step_tokens - len(toks)
        chunks = []                                    # (job, number of prompt tokens this step)
        for job in self._prefill:
            if budget <= 0:
                break
            take = min(budget, job.n_prompt - job.n_past)
            budget -= take
            chunks.append((job, take))
            for i in range(job.n_past, job.n_past + take):
                toks.append(int(job.prompt[i]))
                seqs.append(job.slot.seq)
                last = i == job.n_prompt - 1
                want.append(1 if last or job.prompt_logprobs else 0)
                if last or job.prompt_logprobs:
                    rows.append((job, i))
        if not toks:
            return out
        if len(rows) > self._buf.shape[0]:
            self._buf = np.empty((len(rows), self.n_vocab), dtype=np.float32)
        if self.before_decode is not None:
            self.before_decode(len(toks))
        try:
            self._decode(toks, seqs, want)
        except Exception as e:   # every job of the failed step ends with the library's error
            failed = {id(j): j for j, _ in rows}
            failed.update({id(j): j for j, _ in chunks})
            failed.update({id(s.job): s.job for s in self.slots if s.job is not None and s.job.status == "decode"})
            for job in failed.values():
                job.slot.tokens.clear()
                self._lib.mole_seq_truncate(self._ctx, job.slot.seq, 0)
                job.error = e
                out.append(self._finish(job, "error"))
            return out
        self.steps += 1
        self.last_step_rows = len(toks)
        self.last_step_prompt = sum(take for _, take in chunks)
        # Commit what the step evaluated: decode tokens, then the prompt chunks.
        for s in self.slots:
            if s.job is not None and s.job.status == "decode":
                s.tokens.append(s.job._next)
        for job, take in chunks:
            job.slot.tokens.extend(int(t) for t in job.prompt[job.n_past:job.n_past + take])
            job.n_past += take
        for k, (job, i) in enumerate(rows):
            row = self._buf[k]
            if i >= 0 and i < job.n_prompt - 1:
                job._prompt_lp.append(self._logprob(row, int(job.prompt[i + 1]), job.logprobs or 0))
                continue
            if i >= 0:                                 # the prompt's last token: its row starts the generation
                self._prefill.remove(job)
                job.status = "decode"
            self.last_step_sampled += job.max_tokens > 0
            try:
                d = self._sample(job, row)
            except Exception as e:   # a job whose sampling fails ends alone, with its error
                job.error = e
                d = self._finish(job, "error")
            if d is not None:
                out.append(d)
        return out

    def _decode(self, toks, seqs, want) -> None:
        ffi = self._L.ffi
        t = np.asarray(toks, dtype=np.int32)
        q = np.asarray(seqs, dtype=np.int32)
        w = np.asarray(want, dtype=np.int8)
        n_want = int(w.sum())
        _ffi.check(self._lib.mole_decode(self._ctx, len(t), ffi.from_buffer("int32_t[]", t),
                                         ffi.from_buffer("int32_t[]", q), ffi.from_buffer("int8_t[]", w),
                                         ffi.from_buffer("float[]", self._buf), n_want * self.n_vocab))

    @property
    def _lib(self):
        return self._L.lib

    @property
    def _ctx(self):
        return self.model._live_ctx()

    # ---- admission and release ----------------------------------------------------------------

    def _sweep(self, out: list[Delta]) -> None:
        if any(j.cancelled for j in self.waiting):
            keep = collections.deque()
            for j in self.waiting:
                if j.cancelled:
                    out.append(self._finish(j, "cancelled"))
                else:
                    keep.append(j)
            self.waiting = keep
        for s in self.slots:
            if s.job is not None and s.job.cancelled:
                out.append(self._finish(s.job, "cancelled"))

    def _admit(self, out: list[Delta]) -> None:
        while self.waiting:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            job = self.waiting.popleft()
            if job.max_tokens == 0 and not job.prompt_logprobs:
                job.t_start = time.perf_counter()
                out.append(self._finish(job, "length"))
                continue
            try:
                self._start(job, free)
            except Exception as e:   # a job whose sampler cannot be made fails alone
                if job.slot is not None:
                    job.slot.job = None
                    job.slot = None
                job.error = e
                out.append(self._finish(job, "error"))

    def _start(self, job: Job, free: list[_Slot]) -> None:
        ffi, lib = self._L.ffi, self._lib
        prompt = job.prompt
        limit = 0 if job.prompt_logprobs else job.n_prompt - 1   # always evaluate the last prompt token

        def common(s: _Slot) -> int:
            n = min(len(s.tokens), limit)
            k = 0
            while k < n and s.tokens[k] == prompt[k]:
                k += 1
            return k

        # The longest reusable prefix; among equals, the sequence unused for longest (its cache is the stalest).
        slot = max(free, key=lambda s: (common(s), -s.last_used))
        keep = common(slot)
        job._sampler = self.model._sampler(*(job.sampling[k] for k in ("temperature", "top_k", "top_p", "min_p",
                                                                         "repeat_penalty", "repeat_last_n", "seed")))
        dec = ffi.new("struct mole_decoder **")
        _ffi.check(lib.mole_decoder_new(self.model._live_model(), dec))
        job._decoder = ffi.gc(dec[0], lib.mole_decoder_free)
        for t in prompt:
            lib.mole_sampler_accept(job._sampler, int(t))
        _ffi.check(lib.mole_seq_truncate(self._ctx, slot.seq, keep))
        del slot.tokens[keep:]
        slot.job, job.slot = job, slot
        job.n_past = job.n_cached = keep
        job.status = "prefill"
        job.t_start = time.perf_counter()
        if job.prompt_logprobs:
            job._prompt_lp = [TokenLogprob(int(prompt[0]), None, [], 0)]
        self._prefill.append(job)

    def _finish(self, job: Job, reason: str) -> Delta:
        job.status = "done"
        job.finish_reason = reason
        job.t_done = time.perf_counter()
        if job.slot is not None:
            job.slot.job = None
            job.slot.last_used = job.t_done
            job.slot = None
        if job in self._prefill:
            self._prefill.remove(job)
        job._sampler = job._decoder = None
        return Delta(job, finish=reason)

    # ---- sampling ----------------------------------------------------------------------------

    def _logprob(self, row: np.ndarray, token: int, top: int) -> TokenLogprob:
        x = row.astype(np.float64)
        m = x.max()
        lp = x - (m + math.log(np.exp(x - m).sum()))
        alts = []
        if top > 0:
            k = min(top, lp.size)
            idx = np.argpartition(-lp, k - 1)[:k]
            idx = idx[np.lexsort((idx, -lp[idx]))]    # most likely first, ties by token id
            alts = [(int(t), float(lp[t])) for t in idx]
        return TokenLogprob(token, float(lp[token]), alts)

    def _sample(self, job: Job, row: np.ndarray) -> Delta | None:
        ffi, lib = self._L.ffi, self._lib
        delta = Delta(job)
        if job._prompt_lp is not None:
            delta.prompt_logprobs, job._prompt_lp = job._prompt_lp, None
        if job.max_tokens == 0:                        # the prompt was only scored
            return self._end(job, delta, "length", flush_decoder=True)
        x = row
        if job._counts and (job.frequency_penalty or job.presence_penalty) or job.logit_bias:
            x = row.copy()
            for t, c in job._counts.items():
                x[t] -= job.frequency_penalty * c + job.presence_penalty
            for t, b in job.logit_bias.items():
                x[t] += b
        _ffi.check(lib.mole_sampler_sample(job._sampler, ffi.from_buffer("float[]", x), self.n_vocab, self._tok))
        t = int(self._tok[0])
        job.n_generated += 1
        if job.n_generated == 1:
            job.t_first = time.perf_counter()
        job._counts[t] = job._counts.get(t, 0) + 1
        if not job.ignore_eos and lib.mole_token_is_eog(self.model._live_model(), t):
            return self._end(job, delta, "stop", flush_decoder=False)
        if job.logprobs is not None:
            e = self._logprob(row, t, job.logprobs)
            e.offset = job._text_len
            job._pending.append(e)
        buf, n = _ffi.call_sized(lib.mole_decoder_push, job._decoder, t, initial=64)
        piece = ffi.unpack(buf, n).decode("utf-8", "replace")
        job._text_len += len(piece)
        text, hit = job.stops.feed(piece)
        delta.text = text
        job._released += len(text)
        if hit:
            return self._end(job, delta, "stop", flush_decoder=False)
        if job.n_generated >= job.max_tokens or len(job.slot.tokens) >= self.n_ctx:
            return self._end(job, delta, "length", flush_decoder=True)
        job._next = t
        self._release(job, delta)
        return delta if delta.text or delta.logprobs or delta.prompt_logprobs is not None else None

    def _release(self, job: Job, delta: Delta, everything: bool = False) -> None:
        """Moves the pending logprobs whose token text starts in the released text (all of them at the end of a
        job that did not stop on a stop string) into the delta."""
        p = job._pending
        while p and (everything or p[0].offset < job._released):
            delta.logprobs.append(p.popleft())

    def _end(self, job: Job, delta: Delta, reason: str, flush_decoder: bool) -> Delta:
        """The job's last delta: as Model.generate ends, the held-back bytes of an unfinished character are written
        unless an end-of-text token or a stop string ended it, and text held back for a possible stop string is
        released unless a stop string matched."""
        ffi = self._L.ffi
        extra = ""
        if flush_decoder:
            buf, n = _ffi.call_sized(self._lib.mole_decoder_flush, job._decoder, initial=64)
            extra, _ = job.stops.feed(ffi.unpack(buf, n).decode("utf-8", "replace"))
        if not job.stops.matched:
            extra += job.stops.flush()
        delta.text += extra
        job._released += len(extra)
        self._release(job, delta, everything=not job.stops.matched)
        job._pending.clear()
        d = self._finish(job, reason)
        delta.finish = d.finish
        return delta

    # ---- end ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Cancels what is left, clears every sequence and hands the context back to the Model."""
        for j in list(self.waiting) + self.running:
            j.cancel()
        self.waiting.clear()
        for s in self.slots:
            s.job = None
            s.tokens.clear()
            if self.model._ctx is not None:
                self._lib.mole_seq_truncate(self.model._ctx, s.seq, 0)
        self._prefill.clear()
        self.model._release(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
