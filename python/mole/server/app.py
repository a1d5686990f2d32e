"""`mole serve`: the HTTP side (Starlette routes on uvicorn) of the OpenAI-compatible server.

Routes: POST /v1/completions and /v1/chat/completions (server-sent events with "stream": true), GET /v1/models,
/v1/models/{id}, /health and /metrics (Prometheus text). With an API key every route but /health needs
"Authorization: Bearer KEY" (compared in constant time). Every error is OpenAI's body,
{"error": {"message", "type", "param", "code"}}: 400 for bad JSON or parameters, for a prompt past the context and
for more sequences (prompts x n) than --parallel + --queue, 401 for a missing or wrong key, 404/405 for unknown
routes, 408 for a body that does not arrive in time, 413 for one over --max-body-kb, 503 with Retry-After when the
sequences and the queue are full, 500 when the library fails.
A client that disconnects cancels its sequences; they are freed at the next step.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .engine import Engine, Handle, Overloaded
from .metrics import Metrics
from .protocol import ApiError, Chunker, Collector, GenRequest, Limits, Parser, TokenText, usage

log = logging.getLogger("mole.server")

BODY_TIMEOUT_S = 30      # a request body must arrive within this (a client trickling bytes holds no handler)
KEEPALIVE_S = 15         # an SSE comment this often while a stream waits for a sequence
PUBLIC = {"/health"}     # answered without the API key


@dataclass
class ServerConfig:
    model_id: str
    created: int
    api_key: str | None = None
    max_body_bytes: int = 1 << 20


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _json(obj, status: int = 200) -> Response:
    return Response(json.dumps(obj, ensure_ascii=False, separators=(",", ":")), status_code=status,
                    media_type="application/json")


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class _Auth:
    """Bearer-token check in front of the app (pure ASGI: streams pass through untouched)."""

    def __init__(self, app, key: str | None, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.key = key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if self.key is None or scope["type"] != "http" or scope["path"] in PUBLIC:
            return await self.app(scope, receive, send)
        given = b""
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                given = v
        scheme, _, token = given.partition(b" ")
        ok = scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        if ok:
            return await self.app(scope, receive, send)
        msg = ("You didn't provide an API key. Send it as 'Authorization: Bearer KEY'." if not given
               else "Incorrect API key provided.")
        self.metrics.request(_endpoint(scope["path"]), 401)
        resp = JSONResponse(ApiError(401, msg, code="invalid_api_key").body(), status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
        await resp(scope, receive, send)


ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")


def _endpoint(path: str) -> str:
    """The metrics label of a path: known routes by name, everything else one label (bounded cardinality)."""
    if path in ENDPOINTS:
        return path
    return "/v1/models" if path.startswith("/v1/models/") else "other"


async def _read_json(request: Request, limit: int):
    cl = request.headers.get("content-length")
    if cl is not None and cl.isdigit() and int(cl) > limit:
        raise ApiError(413, f"the request body is {int(cl)} bytes; this server accepts at most {limit} "
                            f"(mole serve --max-body-kb)", code="request_too_large")
    body = bytearray()
    try:
        with anyio.fail_after(BODY_TIMEOUT_S):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, f"the request body is over {limit} bytes, the most this server accepts "
                                        f"(mole serve --max-body-kb)", code="request_too_large")
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT_S} s") from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"We could not parse the JSON body of your request ({e}). The body must be JSON: "
                            "see https://platform.openai.com/docs/api-reference", code="invalid_json") from None


class _EventStream(StreamingResponse):
    """Server-sent events that stop, and run on_close, as soon as the client disconnects, whatever ASGI version the
    server speaks (Starlette's own response relies on a failed send under ASGI 2.4, which comes only when a chunk
    is written: a request waiting for a sequence would not notice)."""

    def __init__(self, content, on_close):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            async with anyio.create_task_group() as tg:
                async def stream():
                    with contextlib.suppress(OSError):
                        await self.stream_response(send)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            self.on_close()


class Server:
    """The routes over one Engine."""

    def __init__(self, engine: Engine, parser: Parser, cfg: ServerConfig, metrics: Metrics):
        self.engine, self.parser, self.cfg, self.metrics = engine, parser, cfg, metrics
        self.tt = TokenText(engine.model)

    # ---- small routes ------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        snap = self.engine.snapshot
        alive = self.engine.alive()
        body = {"status": "ok" if alive else "error", "model": self.cfg.model_id,
                "sequences": {"max": snap["n_seq"], "active": snap["active"]}, "queue": snap["waiting"]}
        if not alive:
            body["error"] = self.engine.error or "the decode loop stopped"
        self.metrics.request("/health", 200 if alive else 503)
        return JSONResponse(body, status_code=200 if alive else 503)

    async def metrics_route(self, request: Request) -> Response:
        text = self.metrics.render(dict(self.engine.snapshot, alive=self.engine.alive()))
        self.metrics.request("/metrics", 200)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    def _model_card(self) -> dict:
        m = self.engine.model
        return {"id": self.cfg.model_id, "object": "model", "created": self.cfg.created, "owned_by": "mole",
                "meta": {"n_ctx": m.n_ctx, "n_seq_max": self.engine.parallel, "n_vocab": m.n_vocab,
                         "n_layer": m.n_layer, "n_expert": m.n_expert, "n_embd": m.n_embd,
                         "n_params_dense": m.info["n_params_dense"], "lut_bytes": m.info["lut_bytes"]}}

    async def models(self, request: Request) -> Response:
        self.metrics.request("/v1/models", 200)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        mid = request.path_params["model_id"]
        if mid != self.cfg.model_id:
            self.metrics.request("/v1/models", 404)
            return _error(ApiError(404, f"The model '{mid}' does not exist; this server has "
                                        f"'{self.cfg.model_id}'", param="model", code="model_not_found"))
        self.metrics.request("/v1/models", 200)
        return JSONResponse(self._model_card())

    # ---- generation ---------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "/v1/completions", self.parser.completion)

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "/v1/chat/completions", self.parser.chat)

    async def _generate(self, request: Request, endpoint: str, parse) -> Response:
        t0 = time.perf_counter()
        try:
            body = await _read_json(request, self.cfg.max_body_bytes)
            req: GenRequest = await run_in_threadpool(parse, body)   # tokenizing a long prompt: off the loop
            jobs = req.jobs()
            cap = self.engine.parallel + self.engine.queue_size
            if len(jobs) > cap:   # would be refused however long the client waited: not a 503
                raise ApiError(400, f"the request asks for {len(jobs)} sequences (prompts x n); this server holds "
                                    f"at most {cap} running and waiting (--parallel {self.engine.parallel} + --queue "
                                    f"{self.engine.queue_size})", param="n", code="invalid_value")
            try:
                handle = self.engine.submit(jobs, asyncio.get_running_loop())
            except Overloaded as e:
                raise ApiError(503, str(e), code="server_overloaded",
                               headers={"Retry-After": str(e.retry_after)}) from None
        except ApiError as e:
            self.metrics.request(endpoint, e.status, time.perf_counter() - t0)
            return _error(e)
        except Exception as e:   # a bug in parsing: the request fails, the server goes on
            log.exception("parsing a request failed")
            self.metrics.request(endpoint, 500, time.perf_counter() - t0)
            return _error(ApiError(500, f"internal error: {type(e).__name__}: {e}"))
        if req.stream:
            return _EventStream(self._stream(handle, req, endpoint, t0), on_close=handle.cancel)
        return await self._whole(request, handle, req, endpoint, t0)

    async def _whole(self, request: Request, handle: Handle, req: GenRequest, endpoint: str, t0: float) -> Response:
        col = Collector(req, self.tt)

        async def collect():
            left = len(handle.jobs)
            while left:
                for d in await handle.next():
                    col.add(d)
                    left -= d.finish is not None

        async def disconnected():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():          # the client left (or the handler was cancelled): free the sequences
                handle.cancel()
                work.cancel()
            gone.cancel()
        if not work.done() or work.cancelled():
            self.metrics.request(endpoint, 499, time.perf_counter() - t0)
            return Response(status_code=499)
        failed = [j for j in handle.jobs if j.error is not None]
        if failed:
            self.metrics.request(endpoint, 500, time.perf_counter() - t0)
            return _error(ApiError(500, f"generation failed: {failed[0].error}"))
        self.metrics.request(endpoint, 200, time.perf_counter() - t0)
        return _json(col.body(handle.jobs))

    async def _stream(self, handle: Handle, req: GenRequest, endpoint: str, t0: float):
        ch = Chunker(req, self.tt)
        status = 499
        try:
            for c in ch.first():
                yield _sse(c)
            left = len(handle.jobs)
            while left:
                ds = await handle.next(KEEPALIVE_S)
                if ds is None:
                    yield b": keep-alive\n\n"
                    continue
                for d in ds:
                    left -= d.finish is not None
                    if d.finish == "error":
                        handle.cancel()
                        status = 500
                        yield _sse(ApiError(500, f"generation failed: {d.job.error}").body())
                        yield b"data: [DONE]\n\n"
                        return
                    chunks = ch.delta(d)
                    if not left and not req.include_usage and chunks:   # every response carries its usage:
                        chunks[-1]["usage"] = usage(req, handle.jobs)   # here on the last chunk (as llama-server)
                    for c in chunks:
                        yield _sse(c)
            if req.include_usage:
                yield _sse(ch.usage(handle.jobs))
            yield b"data: [DONE]\n\n"
            status = 200
        finally:
            if status != 200:
                handle.cancel()            # the stream ended early: its sequences are freed at the next step
            self.metrics.request(endpoint, status, time.perf_counter() - t0)


def create_app(engine: Engine, parser: Parser, cfg: ServerConfig, metrics: Metrics):
    """The ASGI app: routes, OpenAI-shaped errors for unknown routes and methods, the API key check, and a lifespan
    that starts the engine and stops it (then closes the model) at shutdown."""
    srv = Server(engine, parser, cfg, metrics)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        metrics.request(_endpoint(request.url.path), exc.status_code)
        msg = (f"Invalid URL ({request.method} {request.url.path})" if exc.status_code == 404
               else f"Method {request.method} is not allowed on {request.url.path}" if exc.status_code == 405
               else str(exc.detail))
        return JSONResponse(ApiError(exc.status_code, msg).body(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}").body(), status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(engine.stop)
            engine.model.close()

    routes = [Route("/v1/completions", srv.completions, methods=["POST"]),
              Route("/v1/chat/completions", srv.chat, methods=["POST"]),
              Route("/v1/models", srv.models, methods=["GET"]),
              Route("/v1/models/{model_id:path}", srv.model, methods=["GET"]),
              Route("/health", srv.health, methods=["GET"]),
              Route("/metrics", srv.metrics_route, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    return _Auth(app, cfg.api_key, metrics)


# ---- the command ----------------------------------------------------------------------------------

def _bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: one the system picks; the startup line names it)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = info[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(a) -> int:
    """Runs the server of `mole serve` (a: its parsed arguments) until SIGINT/SIGTERM."""
    import uvicorn

    from .. import Model, demo_model_path

    key = a.api_key or os.environ.get("MOLE_API_KEY") or None
    path = a.model or demo_model_path()
    m = Model(path, n_ctx=a.ctx, n_threads=a.threads, device=a.device, lut_cache_mb=a.lut_cache_mb,
              n_batch=a.batch, n_seq_max=a.parallel, kv_type=a.kv_type)
    try:
        metrics = Metrics()
        limits = Limits(n_ctx=m.n_ctx, max_tokens=min(a.max_tokens or m.n_ctx, m.n_ctx))
        model_id = a.alias or os.path.basename(path)
        parser = Parser(m, limits, model_id)
        engine = Engine(m, parallel=a.parallel, queue_size=a.queue, metrics=metrics)
        cfg = ServerConfig(model_id=model_id, created=int(os.path.getmtime(path)), api_key=key,
                           max_body_bytes=a.max_body_kb * 1024)
        app = create_app(engine, parser, cfg, metrics)
        sock = _bind(a.host, a.port)
    except BaseException:
        m.close()
        raise
    host, port = sock.getsockname()[:2]
    kv_dim = m.info["n_embd"] * m.info["n_head_kv"] // m.info["n_head"]
    kv = 2 * m.n_layer * m.n_ctx * a.parallel * kv_dim * (2 if m.kv_type == "f16" else 4)
    shown = f"[{host}]" if ":" in host else host
    print(f"mole serve: {model_id} (V {m.n_vocab}, {m.n_layer} layers, {m.n_expert} experts) on {m.device}, "
          f"{m.n_threads} threads; {a.parallel} sequences x {m.n_ctx} positions each"
          f"{f' (--ctx-total {a.ctx_total} split)' if getattr(a, 'ctx_total', None) else ''} (KV cache "
          f"{kv / 2**20:.0f} MiB, {m.kv_type}), "
          f"queue {a.queue}, max_tokens <= {limits.max_tokens}", file=sys.stderr)
    if key is None and host not in ("127.0.0.1", "::1", "localhost"):
        print(f"mole serve: warning: listening on {host} without an API key (--api-key): anyone who can reach this "
              "port can use the model", file=sys.stderr)
    print(f"mole serve: listening on http://{shown}:{port} ({'API key required' if key else 'no API key'})",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level=a.log_level, lifespan="on", timeout_graceful_shutdown=3,
                            server_header=False, timeout_keep_alive=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
