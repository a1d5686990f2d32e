"""OpenAI's shapes for /v1/completions and /v1/chat/completions: requests parsed with a check on every field (a bad
one is a 400 that names it), and the response bodies and stream chunks built from mole.batch's deltas.
No web framework here: app.py carries these over HTTP."""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

from .. import errors
from .. import gguf_names as G
from ..batch import Job, TokenLogprob
from ..chat import render_chat

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
         405: "invalid_request_error", 413: "invalid_request_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """An error answered with OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


@dataclass
class Limits:
    """What one request may ask for (mole serve's options)."""
    n_ctx: int                  # positions per sequence: the prompt plus max_tokens must fit
    max_tokens: int             # most tokens one choice may generate (--max-tokens)
    max_n: int = 16             # choices per prompt
    max_sequences: int = 64     # prompts x n
    max_stop: int = 16
    max_stop_chars: int = 256
    max_top_logprobs: int = 20


@dataclass
class GenRequest:
    """A parsed completion or chat request: each prompt's tokens, and what every one of its n choices asks for."""
    kind: str                                   # "text" or "chat"
    model: str
    prompts: list[list[int]]
    prompt_texts: list[str]                     # for echo
    n: int
    max_tokens: list[int]                       # per prompt (the default depends on its length)
    sampling: dict
    stop: list[str]
    logprobs: int | None = None                 # alternatives per token, or None: no logprobs
    echo: bool = False
    stream: bool = False
    include_usage: bool = False
    id: str = ""
    created: int = 0
    extra_stops: list[str] = field(default_factory=list)

    def jobs(self) -> list[Job]:
        """One Job per choice; choice k = prompt k // n, its (k % n)-th sample. With a seed, sample j uses seed + j:
        the same request gives the same choices, and they differ from one another."""
        out = []
        seed = self.sampling.get("seed")
        opts = {k: v for k, v in self.sampling.items() if k != "seed"}
        for p, ids in enumerate(self.prompts):
            for j in range(self.n):
                s = None if seed is None else (seed + j) % (1 << 64)
                out.append(Job(ids, self.max_tokens[p], seed=s, stop=self.stop + self.extra_stops,
                               logprobs=self.logprobs, prompt_logprobs=self.echo and self.logprobs is not None,
                               tag=p * self.n + j, **opts))
        return out


# ---- field checks ---------------------------------------------------------------------------------

def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value" if param else None)


def _int(body: dict, name: str, lo: int | None = None, hi: int | None = None, default=None):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, f"'{name}' must be an integer, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"between {lo} and {hi}" if lo is not None and hi is not None else f">= {lo}" if lo is not None \
            else f"<= {hi}"
        raise _bad(name, f"'{name}' must be {rng}, got {v}")
    return v


def _num(body: dict, name: str, lo: float, hi: float | None, default=None):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(name, f"'{name}' must be a number, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        rng = f"between {lo:g} and {hi:g}" if hi is not None else f">= {lo:g}"
        raise _bad(name, f"'{name}' must be {rng}, got {v}")
    return float(v)


def _bool(body: dict, name: str, default: bool = False) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(name, f"'{name}' must be a boolean, got {v!r}")
    return v


# Fields accepted and not used: they change nothing a single local model does.
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prediction", "web_search_options"}
COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "presence_penalty",
          "frequency_penalty", "logit_bias", "seed", "logprobs",
          # llama.cpp's names for the sampler's other options
          "top_k", "min_p", "repeat_penalty", "repeat_last_n", "ignore_eos"}
COMPLETION_FIELDS = COMMON | IGNORED | {"prompt", "echo", "suffix", "best_of"}
CHAT_FIELDS = COMMON | IGNORED | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools",
                                  "tool_choice", "functions", "function_call", "modalities", "reasoning_effort"}


def _check_fields(body, allowed: set) -> None:
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    for k in body:
        if k not in allowed:
            raise ApiError(400, f"Unrecognized request argument supplied: {k}", param=k, code="unknown_parameter")


def _common(body: dict, limits: Limits, n_vocab: int) -> dict:
    """The fields both endpoints share, checked: (sampling options, n, stop, stream, include_usage, model)."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", f"'model' must be a string, got {model!r}")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _bad("stop", "'stop' must be a string or a list of strings")
    stop = [s for s in stop if s]
    if len(stop) > limits.max_stop:
        raise _bad("stop", f"'stop' holds {len(stop)} strings; at most {limits.max_stop} are allowed")
    for s in stop:
        if len(s) > limits.max_stop_chars:
            raise _bad("stop", f"a stop string is {len(s)} characters long; at most {limits.max_stop_chars} are "
                               "allowed")
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not stream:
            raise _bad("stream_options", "'stream_options' is only allowed when 'stream' is true")
        if not isinstance(opts, dict) or set(opts) - {"include_usage"}:
            raise _bad("stream_options", "'stream_options' must be an object with 'include_usage'")
        include_usage = _bool(opts, "include_usage")
    bias_in = body.get("logit_bias")
    bias = {}
    if bias_in is not None:
        if not isinstance(bias_in, dict):
            raise _bad("logit_bias", "'logit_bias' must be an object mapping token ids to numbers")
        for k, v in bias_in.items():
            try:
                t = int(k)
            except (TypeError, ValueError):
                raise _bad("logit_bias", f"'logit_bias' key {k!r} is not a token id") from None
            if not 0 <= t < n_vocab:
                raise _bad("logit_bias", f"'logit_bias' token id {t} is out of range [0, {n_vocab})")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -100 <= v <= 100:
                raise _bad("logit_bias", f"'logit_bias' values must be numbers between -100 and 100, got {v!r}")
            bias[t] = float(v)
    seed = _int(body, "seed")
    sampling = dict(
        temperature=_num(body, "temperature", 0, 2), top_p=_num(body, "top_p", 0, 1),
        top_k=_int(body, "top_k", 0), min_p=_num(body, "min_p", 0, 1),
        repeat_penalty=_num(body, "repeat_penalty", 0, 10), repeat_last_n=_int(body, "repeat_last_n", 0, 1 << 20),
        frequency_penalty=_num(body, "frequency_penalty", -2, 2, 0.0),
        presence_penalty=_num(body, "presence_penalty", -2, 2, 0.0),
        logit_bias=bias, ignore_eos=_bool(body, "ignore_eos"),
        seed=None if seed is None else seed % (1 << 64))
    n = _int(body, "n", 1, limits.max_n, 1)
    return dict(sampling=sampling, n=n, stop=stop, stream=stream, include_usage=include_usage, model=model)


def _max_tokens(requested: int | None, n_prompt: int, limits: Limits, default: int, param: str) -> int:
    """The token budget of a prompt's choices: the prompt plus max_tokens must fit in the context (OpenAI's rule: a
    larger request is refused, not cut); left out, it is `default`, as much as fits."""
    room = limits.n_ctx - n_prompt
    if room < 1:
        raise ApiError(400, f"This model's maximum context length is {limits.n_ctx} tokens; the prompt has "
                            f"{n_prompt} tokens, which leaves no room for the completion. Shorten the prompt.",
                       param="messages" if param == "max_completion_tokens" else "prompt",
                       code="context_length_exceeded")
    if requested is None:
        return min(default, room, limits.max_tokens)
    if requested > limits.max_tokens:
        raise _bad(param, f"'{param}' is {requested}; this server allows at most {limits.max_tokens} "
                          f"(mole serve --max-tokens)")
    if requested > room:
        raise ApiError(400, f"This model's maximum context length is {limits.n_ctx} tokens; you requested "
                            f"{n_prompt + requested} tokens ({n_prompt} in the prompt, {requested} for the "
                            f"completion). Shorten the prompt or lower {param}.",
                       param=param, code="context_length_exceeded")
    return requested


class Parser:
    """Turns request bodies into GenRequests for one model (its tokenizer, chat template and limits).
    Thread-safe: it only reads the model (tokenizing and the template), never its context."""

    def __init__(self, model, limits: Limits, model_id: str):
        self.model, self.limits, self.model_id = model, limits, model_id
        self.template = model.metadata.get(G.KEY_CHAT_TEMPLATE)   # metadata is read once, here
        self.bos = model.info["bos_token_id"]

    def _ids(self, text: str, special: bool) -> list[int]:
        return self.model.tokenize(text, add_bos=False, special=special)

    def _empty_prompt(self, param: str) -> list[int]:
        if self.bos < 0:
            raise _bad(param, "the prompt is empty and the model has no BOS token to start from")
        return [self.bos]

    def completion(self, body) -> GenRequest:
        _check_fields(body, COMPLETION_FIELDS)
        c = _common(body, self.limits, self.model.n_vocab)
        if "prompt" not in body:
            raise ApiError(400, "you must provide a 'prompt'", param="prompt", code="missing_required_parameter")
        if body.get("suffix") not in (None, ""):
            raise _bad("suffix", "'suffix' (insertion) is not supported")
        best_of = _int(body, "best_of", 1)
        if best_of is not None and best_of != c["n"]:
            raise _bad("best_of", "'best_of' other than n is not supported")
        logprobs = _int(body, "logprobs", 0, self.limits.max_top_logprobs)
        echo = _bool(body, "echo")
        prompts, texts = self._prompts(body["prompt"])
        if len(prompts) * c["n"] > self.limits.max_sequences:
            raise _bad("n", f"{len(prompts)} prompts x n = {c['n']} is {len(prompts) * c['n']} sequences; at most "
                            f"{self.limits.max_sequences} per request")
        requested = _int(body, "max_tokens", 0)
        budgets = [_max_tokens(requested, len(p), self.limits, 16, "max_tokens") for p in prompts]
        return self._request("text", c, prompts, texts, budgets, logprobs, echo)

    def _prompts(self, prompt) -> tuple[list[list[int]], list[str]]:
        """prompt: a string, a list of strings, a list of token ids, or a list of lists of token ids."""
        V = self.model.n_vocab

        def ids_of(x, where: str) -> tuple[list[int], str]:
            if isinstance(x, str):
                ids = self._ids(x, special=False) if x else self._empty_prompt("prompt")
                return ids, x
            if isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x):
                if not x:
                    return self._empty_prompt("prompt"), ""
                bad = [t for t in x if not 0 <= t < V]
                if bad:
                    raise _bad("prompt", f"{where}: token id {bad[0]} is out of range [0, {V})")
                return list(x), self.model.detokenize(x)
            raise _bad("prompt", "'prompt' must be a string, a list of strings, a list of token ids or a list of "
                                 "lists of token ids")

        if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            if len(prompt) > self.limits.max_sequences:
                raise _bad("prompt", f"{len(prompt)} prompts; at most {self.limits.max_sequences} per request")
            pairs = [ids_of(p, f"prompt[{i}]") for i, p in enumerate(prompt)]
        else:
            pairs = [ids_of(prompt, "prompt")]
        return [p for p, _ in pairs], [t for _, t in pairs]

    def chat(self, body) -> GenRequest:
        _check_fields(body, CHAT_FIELDS)
        c = _common(body, self.limits, self.model.n_vocab)
        for name in ("tools", "functions"):
            if body.get(name):
                raise _bad(name, f"'{name}' (tool calls) are not supported by this server")
        if body.get("tool_choice") not in (None, "none", "auto") or body.get("function_call") not in (None, "none",
                                                                                                     "auto"):
            raise _bad("tool_choice", "tool calls are not supported by this server")
        fmt = body.get("response_format")
        if fmt is not None and fmt != {"type": "text"}:
            raise _bad("response_format", "only response_format {\"type\": \"text\"} is supported")
        if body.get("modalities") not in (None, ["text"]):
            raise _bad("modalities", "only text output is supported")
        want_lp = _bool(body, "logprobs")
        top = _int(body, "top_logprobs", 0, self.limits.max_top_logprobs)
        if top and not want_lp:
            raise _bad("top_logprobs", "'top_logprobs' needs 'logprobs' to be true")
        messages = self._messages(body.get("messages"))
        try:
            text, stops = render_chat(messages, self.template, self.model)
        except errors.InvalidArgumentError as e:
            raise _bad("messages", str(e)) from None
        except errors.FormatError as e:
            raise ApiError(500, f"the model's chat template failed: {e}") from None
        ids = self._ids(text, special=True) or self._empty_prompt("messages")
        mt, mct = _int(body, "max_tokens", 1), _int(body, "max_completion_tokens", 1)
        name = "max_completion_tokens" if mct is not None else "max_tokens"
        budget = _max_tokens(mct if mct is not None else mt, len(ids), self.limits, self.limits.max_tokens, name)
        req = self._request("chat", c, [ids], [text], [budget], (top or 0) if want_lp else None, False)
        req.extra_stops = [s for s in stops if s not in req.stop]
        return req

    @staticmethod
    def _messages(messages) -> list[dict]:
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list of messages", param="messages",
                           code="missing_required_parameter" if messages is None else "invalid_value")
        out = []
        for i, m in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise _bad(where, f"{where} must be an object with 'role' and 'content'")
            role = m.get("role")
            if role == "developer":
                role = "system"
            if role not in ("system", "user", "assistant"):
                raise _bad(f"{where}.role", f"{where}.role must be 'system', 'developer', 'user' or 'assistant', "
                                            f"got {role!r}")
            content = m.get("content")
            if isinstance(content, list):
                parts = []
                for k, part in enumerate(content):
                    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"),
                                                                                                  str):
                        raise _bad(f"{where}.content", f"{where}.content[{k}]: only text parts "
                                                       "({\"type\": \"text\", \"text\": ...}) are supported")
                    parts.append(part["text"])
                content = "".join(parts)
            if not isinstance(content, str):
                raise _bad(f"{where}.content", f"{where}.content must be a string or a list of text parts")
            out.append({"role": role, "content": content})
        return out

    def _request(self, kind, c, prompts, texts, budgets, logprobs, echo) -> GenRequest:
        prefix = "cmpl-" if kind == "text" else "chatcmpl-"
        return GenRequest(kind=kind, model=self.model_id, prompts=prompts, prompt_texts=texts, n=c["n"],
                          max_tokens=budgets, sampling=c["sampling"], stop=c["stop"], logprobs=logprobs, echo=echo,
                          stream=c["stream"], include_usage=c["include_usage"], id=prefix + uuid.uuid4().hex[:24],
                          created=int(time.time()))


# ---- responses ------------------------------------------------------------------------------------

class TokenText:
    """Token ids to the strings OpenAI's logprobs carry: the token's text, or "bytes:\\xNN..." for a token that is
    part of a UTF-8 character, and its bytes. Cached per id (thread-safe: a dict of immutable values)."""

    def __init__(self, model):
        self.model = model
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token)
        if hit is None:
            b = self.model.detokenize_bytes([token])
            try:
                s = b.decode("utf-8")
            except UnicodeDecodeError:
                s = "bytes:" + "".join(f"\\x{x:02x}" for x in b)
            hit = self._cache[token] = (s, list(b))
        return hit


def usage(req: GenRequest, jobs: list[Job]) -> dict:
    prompt = sum(len(p) for p in req.prompts)
    completion = sum(j.n_generated for j in jobs)
    cached = sum(j.n_cached for j in jobs if j.tag % req.n == 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def chat_logprobs(entries: list[TokenLogprob], tt: TokenText) -> dict:
    def one(t, lp):
        s, b = tt(t)
        return {"token": s, "logprob": lp, "bytes": b}
    return {"content": [dict(one(e.token, e.logprob), top_logprobs=[one(t, lp) for t, lp in e.top])
                        for e in entries], "refusal": None}


def text_logprobs(entries: list[TokenLogprob], tt: TokenText, base: int = 0) -> dict:
    """The completions API's logprobs: tokens, token_logprobs, top_logprobs ({token: logprob}) and text_offset
    (characters from the start of the choice's text; base: where the completion starts in it, after an echo)."""
    return {"tokens": [tt(e.token)[0] for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [None if e.logprob is None else {tt(t)[0]: lp for t, lp in e.top} for e in entries],
            "text_offset": [base + e.offset for e in entries]}


def prompt_offsets(entries: list[TokenLogprob], tt: TokenText) -> None:
    """Sets the offsets of prompt tokens' logprobs: where each token's text starts in the prompt's text (a token
    holding part of a character starts where that character does)."""
    pos, pending = 0, b""
    for e in entries:
        e.offset = pos
        pending += bytes(tt(e.token)[1])
        try:
            pos += len(pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:
            if len(pending) >= 4:   # not a character in the making: invalid bytes, one U+FFFD each as decoded
                pos += len(pending.decode("utf-8", "replace"))
                pending = b""


def _merge_logprobs(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    for k in b:
        if isinstance(b[k], list):
            a[k] = a[k] + b[k]
    return a


_fingerprint: list[str] = []


def fingerprint() -> str:
    """system_fingerprint: the package's version (looked up once)."""
    if not _fingerprint:
        import mole
        _fingerprint.append(f"mole-{mole.__version__}")
    return _fingerprint[0]


def _header(req: GenRequest, obj: str) -> dict:
    return {"id": req.id, "object": obj, "created": req.created, "model": req.model,
            "system_fingerprint": fingerprint()}


class Collector:
    """Gathers a request's deltas into its non-streamed body."""

    def __init__(self, req: GenRequest, tt: TokenText):
        self.req, self.tt = req, tt
        k = len(req.prompts) * req.n
        self.text = [[] for _ in range(k)]
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(k)]
        self.prompt_lp: list[list[TokenLogprob]] = [[] for _ in range(k)]
        self.finish: list[str | None] = [None] * k

    def add(self, d) -> None:
        i = d.job.tag
        self.text[i].append(d.text)
        self.logprobs[i].extend(d.logprobs)
        if d.prompt_logprobs is not None:
            prompt_offsets(d.prompt_logprobs, self.tt)
            self.prompt_lp[i] = d.prompt_logprobs
        if d.finish is not None:
            self.finish[i] = d.finish

    def body(self, jobs: list[Job]) -> dict:
        req, tt = self.req, self.tt
        choices = []
        for i in range(len(self.text)):
            text = "".join(self.text[i])
            if req.kind == "text":
                lead = req.prompt_texts[i // req.n] if req.echo else ""
                lp = None
                if req.logprobs is not None:
                    lp = _merge_logprobs(text_logprobs(self.prompt_lp[i], tt) if req.echo else None,
                                         text_logprobs(self.logprobs[i], tt, len(lead)))
                choices.append({"index": i, "text": lead + text, "logprobs": lp, "finish_reason": self.finish[i]})
            else:
                lp = chat_logprobs(self.logprobs[i], tt) if req.logprobs is not None else None
                choices.append({"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                                "logprobs": lp, "finish_reason": self.finish[i]})
        body = _header(req, "text_completion" if req.kind == "text" else "chat.completion")
        body.update(choices=choices, usage=usage(req, jobs))
        return body


class Chunker:
    """Turns a request's deltas into its stream chunks (dicts; app.py writes them as server-sent events)."""

    def __init__(self, req: GenRequest, tt: TokenText):
        self.req, self.tt = req, tt
        self.obj = "text_completion" if req.kind == "text" else "chat.completion.chunk"
        self.started: set[int] = set()

    def _chunk(self, choice: dict) -> dict:
        c = _header(self.req, self.obj)
        c["choices"] = [choice]
        if self.req.include_usage:
            c["usage"] = None
        return c

    def first(self) -> list[dict]:
        """The chunks sent before any token: chat's role delta, a completion's echoed prompt, for every choice."""
        req, out = self.req, []
        for i in range(len(req.prompts) * req.n):
            self.started.add(i)
            if req.kind == "chat":
                out.append(self._chunk({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                        "finish_reason": None}))
            elif req.echo:
                out.append(self._chunk({"index": i, "text": req.prompt_texts[i // req.n], "logprobs": None,
                                        "finish_reason": None}))
        return out

    def delta(self, d) -> list[dict]:
        req, tt, i = self.req, self.tt, d.job.tag
        if not (d.text or d.logprobs or d.finish or d.prompt_logprobs):
            return []
        if req.kind == "chat":
            out = []
            if d.text or d.logprobs:
                lp = chat_logprobs(d.logprobs, tt) if req.logprobs is not None else None
                out.append(self._chunk({"index": i, "delta": {"content": d.text}, "logprobs": lp,
                                        "finish_reason": None}))
            if d.finish:
                out.append(self._chunk({"index": i, "delta": {}, "logprobs": None, "finish_reason": d.finish}))
            return out
        lp = None
        if req.logprobs is not None:
            base = len(req.prompt_texts[i // req.n]) if req.echo else 0
            if d.prompt_logprobs is not None:
                prompt_offsets(d.prompt_logprobs, tt)
                lp = text_logprobs(d.prompt_logprobs, tt)
            if d.logprobs or lp is None:
                lp = _merge_logprobs(lp, text_logprobs(d.logprobs, tt, base))
        return [self._chunk({"index": i, "text": d.text, "logprobs": lp, "finish_reason": d.finish})]

    def usage(self, jobs: list[Job]) -> dict:
        c = _header(self.req, self.obj)
        c.update(choices=[], usage=usage(self.req, jobs))
        return c
