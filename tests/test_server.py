"""`mole serve` as a real process on 127.0.0.1, spoken to with the official openai client (and raw sockets where a
client would hide what is tested): completions and chat, streamed and not; concurrent requests equal the same
requests one by one and decode in shared steps; per-request options, n > 1, logprobs; a disconnect frees its
sequence; a full queue is 503 with Retry-After; /metrics and /health answer while a step cannot finish; bad
requests get OpenAI's error body; the API key is enforced."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest

import mole
from mole.server.process import ServerProcess

KEY = "sk-test-0123456789"


class Server(ServerProcess):
    """`python -m mole serve ... --port 0 -t 1` (mole.server.process); requests carry the test's API key."""

    def __init__(self, model, *args, env=None):
        super().__init__(model, "-t", 1, *args, env=env)

    def client(self, key=KEY, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60, **kw)

    def request(self, method, path, body=None, headers=None, raw=None, key=KEY):
        """(status, headers, body bytes) of one HTTP/1.1 request over a plain socket."""
        hdrs = {"Authorization": f"Bearer {key}"} if key else {}
        hdrs.update(headers or {})
        return super().request(method, path, body, hdrs, raw, timeout=30)

    def metrics(self) -> dict:
        return super().metrics(headers={"Authorization": f"Bearer {KEY}"})


@pytest.fixture(scope="module")
def model_path(model_factory):
    path, _, _ = model_factory(lut_type="q8_0", weight_type="f16", seed=23, max_position_embeddings=512)
    return path


@pytest.fixture(scope="module")
def server(model_path):
    s = Server(model_path, "--parallel", 4, "--api-key", KEY, "--ctx", 256, "--max-tokens", 200, "--max-body-kb", 64)
    yield s
    s.close()


@pytest.fixture(scope="module")
def slow(model_path):
    """Steps of at least 20 ms, 2 sequences, a queue of 6: requests overlap and stay long enough to act on."""
    s = Server(model_path, "--parallel", 2, "--queue", 6, "--api-key", KEY, "--ctx", 256,
               env={"MOLE_SERVE_TEST_STEP_DELAY": "0.02"})
    yield s
    s.close()


@pytest.fixture(scope="module")
def local(model_path):
    with mole.Model(str(model_path), n_ctx=256, n_threads=1) as m:
        yield m


PROMPTS = ["Hello there", "The cat sat", "Once upon a time", "a b c", "It was", "Hello world", "zzz", "on the mat"]


# ---- the official client ------------------------------------------------------------------------

def test_completions_streamed_and_not(server, local):
    c = server.client()
    r = c.completions.create(model="anything", prompt="Hello there", max_tokens=12, temperature=0)
    want = local.generate("Hello there", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.model == os.path.basename(server.proc.args[5])
    assert r.choices[0].text == want and r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens == len(local.tokenize("Hello there")) and u.total_tokens == u.prompt_tokens + \
        u.completion_tokens and 1 <= u.completion_tokens <= 12
    chunks = list(c.completions.create(model="m", prompt="Hello there", max_tokens=12, temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == want
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u.completion_tokens
    assert len(chunks) > 3                                 # streamed piece by piece, not in one go


def test_chat_streamed_and_not(server, local):
    c = server.client()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    r = c.chat.completions.create(model="m", messages=msgs, max_tokens=16, temperature=0)
    want = local.chat(msgs, max_tokens=16, temperature=0)["choices"][0]["message"]["content"]
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want
    assert r.usage.prompt_tokens == local.chat(msgs, max_tokens=1, temperature=0)["usage"]["prompt_tokens"]
    stream = c.chat.completions.create(model="m", messages=msgs, max_tokens=16, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == want
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    # every response carries usage: a stream that did not ask for the usage chunk has it on its last chunk
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens and all(ch.usage is None for ch in chunks[:-1])
    # text parts and the developer role are accepted
    r2 = c.chat.completions.create(model="m", max_tokens=16, temperature=0, messages=[
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}])
    assert r2.choices[0].message.content == want


def test_models_and_health(server):
    models = server.client().models.list().data
    assert len(models) == 1 and models[0].id == os.path.basename(server.proc.args[5])
    assert server.client().models.retrieve(models[0].id).id == models[0].id
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("gpt-4")
    status, _, body = server.request("GET", "/health", key=None)
    assert status == 200 and json.loads(body)["status"] == "ok"


# ---- continuous batching ------------------------------------------------------------------------

def _complete(server, prompt, **kw):
    r = server.client().completions.create(model="m", prompt=prompt, **kw)
    return r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens


def test_concurrent_requests_equal_one_by_one_and_share_steps(slow):
    kw = dict(max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    one_by_one = [_complete(slow, p, **kw) for p in PROMPTS]
    before = slow.metrics()
    with ThreadPoolExecutor(len(PROMPTS)) as ex:
        together = list(ex.map(lambda p: _complete(slow, p, **kw), PROMPTS))
    after = slow.metrics()
    assert together == one_by_one
    generated = after["mole_completion_tokens_total"] - before["mole_completion_tokens_total"]
    steps = after["mole_decode_steps_total"] - before["mole_decode_steps_total"]
    assert generated == 16 * len(PROMPTS) and generated >= 1.5 * steps, (generated, steps)   # 2 per step, mostly
    # seeded sampling as well: each request keeps its own sampler
    kw = dict(max_tokens=16, temperature=1.0, top_p=1.0, seed=11, extra_body={"top_k": 0, "min_p": 0.0})
    one_by_one = [_complete(slow, p, **kw) for p in PROMPTS[:4]]
    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(lambda p: _complete(slow, p, **kw), PROMPTS[:4])) == one_by_one


def test_each_request_keeps_its_own_options(server, local):
    greedy = local.generate("Once upon a time", max_tokens=30, temperature=0, ignore_eos=True)
    stop = greedy[10:13]
    jobs = [dict(prompt="Hello there", max_tokens=3, temperature=0),
            dict(prompt="The cat sat", max_tokens=25, temperature=0.8, seed=4),
            dict(prompt="Once upon a time", max_tokens=30, temperature=0, stop=[stop], extra_body={"ignore_eos": True}),
            dict(prompt="a b c", max_tokens=9, temperature=1.3, seed=9, extra_body={"top_k": 3, "ignore_eos": True})]
    with ThreadPoolExecutor(len(jobs)) as ex:
        got = list(ex.map(lambda kw: _complete(server, **kw), jobs))
    assert got[0][2] <= 3 and got[0][0] == local.generate("Hello there", max_tokens=3, temperature=0)
    assert got[1][0] == local.generate("The cat sat", max_tokens=25, temperature=0.8, seed=4)
    assert got[2][:2] == (greedy[:greedy.index(stop)], "stop")
    assert got[3] == (local.generate("a b c", max_tokens=9, temperature=1.3, seed=9, top_k=3, ignore_eos=True),
                      "length", 9)


def test_n_choices_and_prompt_lists(server, local):
    c = server.client()
    r = c.completions.create(model="m", prompt="The cat sat", n=3, max_tokens=10, temperature=1.0, seed=100)
    texts = [ch.text for ch in sorted(r.choices, key=lambda ch: ch.index)]
    assert [ch.index for ch in r.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert texts == [local.generate("The cat sat", max_tokens=10, temperature=1.0, seed=100 + j) for j in range(3)]
    assert 3 <= r.usage.completion_tokens <= 30
    chat = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], n=2, max_tokens=8,
                                     temperature=1.0, seed=5)
    assert sorted(ch.index for ch in chat.choices) == [0, 1]
    # several prompts in one request: choices prompt-major
    r = c.completions.create(model="m", prompt=["Hello there", "a b c"], n=2, max_tokens=6, temperature=0)
    assert [ch.text for ch in r.choices] == [local.generate(p, max_tokens=6, temperature=0)
                                             for p in ("Hello there", "Hello there", "a b c", "a b c")]
    ids = local.tokenize("Hello there")
    r = c.completions.create(model="m", prompt=ids, max_tokens=6, temperature=0)
    assert r.choices[0].text == local.generate(ids, max_tokens=6, temperature=0)
    # streamed with n > 1: each choice's pieces add up to its text
    stream = c.completions.create(model="m", prompt="The cat sat", n=3, max_tokens=10, temperature=1.0, seed=100,
                                  stream=True)
    parts = {}
    for ch in stream:
        for x in ch.choices:
            parts[x.index] = parts.get(x.index, "") + x.text
    assert [parts[i] for i in range(3)] == texts


def _log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_logprobs_streamed_and_not(server, local):
    c = server.client()
    msgs = [{"role": "user", "content": "Hello"}]
    r = c.chat.completions.create(model="m", messages=msgs, max_tokens=6, temperature=0, logprobs=True,
                                  top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    assert b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace") == r.choices[0].message.content
    for e in content:
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].logprob >= e.top_logprobs[-1].logprob
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob)   # greedy: the top token
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token or e.token.startswith("bytes:")
    stream = c.chat.completions.create(model="m", messages=msgs, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=3, stream=True, extra_body={"ignore_eos": True})
    streamed = [e for ch in stream for x in ch.choices if x.logprobs for e in x.logprobs.content]
    assert [(e.token, round(e.logprob, 9)) for e in streamed] == [(e.token, round(e.logprob, 9)) for e in content]
    # completions: the model's log-softmax, checked against Model.logits; echo scores the prompt too
    ids = local.tokenize("The cat sat")
    r = c.completions.create(model="m", prompt="The cat sat", max_tokens=5, temperature=0, logprobs=2, echo=True,
                             extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith("The cat sat") and len(lp.tokens) == len(ids) + 5
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset[len(ids)] == len("The cat sat")
    full = list(ids)
    for _ in range(5):                                     # the greedy tokens, from Model.logits
        full.append(int(np.argmax(local.logits(full)[-1])))
    ref = _log_softmax(local.logits(full))
    for k in range(1, len(full)):
        assert lp.token_logprobs[k] == pytest.approx(ref[k - 1][full[k]], abs=1e-5)
        assert list(lp.top_logprobs[k].values())[0] == pytest.approx(ref[k - 1].max(), abs=1e-5)

    def token_text(t):   # OpenAI's convention for a token that is part of a character
        b = local.detokenize_bytes([t])
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{x:02x}" for x in b)
    assert lp.tokens == [token_text(t) for t in full]


def test_prefix_cache_reports_cached_tokens(server):
    c = server.client()
    msgs = [{"role": "user", "content": "Tell me a long story about a cat"}]
    a = c.chat.completions.create(model="m", messages=msgs, max_tokens=8, temperature=0)
    b = c.chat.completions.create(model="m", messages=msgs, max_tokens=8, temperature=0)
    assert b.choices[0].message.content == a.choices[0].message.content
    assert b.usage.prompt_tokens_details.cached_tokens == b.usage.prompt_tokens - 1


# ---- failure behaviour ------------------------------------------------------------------------------

def _wait(pred, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _open_stream(server, body) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def test_disconnect_mid_stream_frees_the_sequence(slow):
    base = slow.metrics()
    cancelled = 'mole_sequences_finished_total{reason="cancelled"}'
    s = _open_stream(slow, {"prompt": "Hello", "max_tokens": 250, "stream": True, "ignore_eos": True})
    got = b""
    while got.count(b"data: ") < 4:                        # a few tokens arrived: it is running
        got += s.recv(4096)
    assert slow.metrics()["mole_sequences_active"] == 1
    s.close()
    assert _wait(lambda: slow.metrics()["mole_sequences_active"] == 0), "the sequence still runs"
    m = slow.metrics()
    assert m[cancelled] == base.get(cancelled, 0) + 1
    # it stopped early: far fewer than 250 tokens (250 steps would take at least 5 s)
    assert m["mole_completion_tokens_total"] - base["mole_completion_tokens_total"] < 150
    # a non-streamed request whose client leaves is cancelled too
    s = _open_stream(slow, {"prompt": "Hello", "max_tokens": 250, "ignore_eos": True})
    assert _wait(lambda: slow.metrics()["mole_sequences_active"] == 1)
    s.close()
    assert _wait(lambda: slow.metrics()["mole_sequences_active"] == 0)
    assert slow.metrics()[cancelled] == base.get(cancelled, 0) + 2


def test_full_queue_is_503_with_retry_after(slow):
    """2 sequences + a queue of 6: the ninth long request is turned away; the server goes on."""
    socks = [_open_stream(slow, {"prompt": "Hello", "max_tokens": 250, "stream": True, "ignore_eos": True})
             for _ in range(8)]
    try:
        assert _wait(lambda: slow.metrics()["mole_sequences_active"] == 2 and slow.metrics()["mole_queue_length"] == 6)
        status, h, body = slow.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert status == 503 and int(h["retry-after"]) >= 1
        err = json.loads(body)["error"]
        assert err["type"] == "server_error" and "--queue" in err["message"]
        with pytest.raises(openai.InternalServerError) as e:
            slow.client().completions.create(model="m", prompt="x", max_tokens=2)
        assert e.value.status_code == 503
    finally:
        for s in socks:
            s.close()
    assert _wait(lambda: slow.metrics()["mole_sequences_active"] == 0 and slow.metrics()["mole_queue_length"] == 0)
    assert _complete(slow, "x", max_tokens=2, temperature=0)[2] >= 1


def test_a_request_larger_than_the_server_is_400(slow):
    """More sequences than --parallel + --queue could ever hold: refused as a bad request, not a 503 to retry."""
    with pytest.raises(openai.BadRequestError) as e:
        slow.client().completions.create(model="m", prompt="x", n=9, max_tokens=2)
    assert e.value.body["param"] == "n" and "at most 8" in e.value.body["message"]


def test_metrics_and_health_answer_while_a_step_cannot_finish(model_path, tmp_path):
    gate = tmp_path / "gate"
    s = Server(model_path, "--parallel", 2, "--ctx", 128, env={"MOLE_SERVE_TEST_STEP_GATE": str(gate)})
    try:
        gate.touch()                                       # every step now waits, inside the step
        result = {}
        t = threading.Thread(target=lambda: result.update(r=_complete(s, "Hello", max_tokens=4, temperature=0)))
        t.start()
        assert _wait(lambda: s.metrics()["mole_sequences_active"] == 1)
        for _ in range(3):
            status, _, body = s.request("GET", "/health")
            assert status == 200 and json.loads(body)["sequences"]["active"] == 1
            m = s.metrics()
            assert m["mole_requests_running"] == 1 and m["mole_kv_tokens_capacity"] == 2 * 128
        assert t.is_alive()                                # the request really is held inside its step
        gate.unlink()
        t.join(30)
        assert result["r"][2] >= 1
    finally:
        gate.unlink(missing_ok=True)
        s.close()


BAD = [  # (body, status, param or None, words in the message)
    ({"prompt": "x", "temperature": 5}, 400, "temperature", "between 0 and 2"),
    ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens", ">= 0"),
    ({"prompt": "x", "max_tokens": "10"}, 400, "max_tokens", "integer"),
    ({"prompt": "x", "max_tokens": 201}, 400, "max_tokens", "at most 200"),
    ({"prompt": "x", "n": 0}, 400, "n", "between 1 and 16"),
    ({"prompt": "x", "stop": 3}, 400, "stop", "string"),
    ({"prompt": "x", "logit_bias": {"99999": 1}}, 400, "logit_bias", "out of range"),
    ({"prompt": "x", "top_p": 1.5}, 400, "top_p", "between 0 and 1"),
    ({"prompt": "x", "frobnicate": 1}, 400, "frobnicate", "Unrecognized request argument"),
    ({"prompt": [999999], "max_tokens": 1}, 400, "prompt", "out of range"),
    ({"max_tokens": 1}, 400, "prompt", "prompt"),
    ({"prompt": "x", "suffix": "y"}, 400, "suffix", "not supported"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options", "stream"),
    ({"prompt": [1] * 300}, 400, "prompt", "maximum context length is 256"),
    ({"prompt": [1] * 200, "max_tokens": 100}, 400, "max_tokens", "200 in the prompt, 100 for the completion"),
]


@pytest.mark.parametrize("body,status,param,words", BAD, ids=[str(b[2]) for b in BAD])
def test_bad_completion_requests(server, body, status, param, words):
    code, _, raw = server.request("POST", "/v1/completions", body)
    err = json.loads(raw)["error"]
    assert code == status and err["param"] == param and words in err["message"], err
    assert err["type"] == "invalid_request_error"


def test_bad_requests_of_every_kind(server):
    c = server.client()
    for raw, words in ((b"{not json", "parse the JSON"), (b"[1, 2]", "JSON object"), (b"\xff\xfe", "parse the JSON"),
                       (b"[" * 60000, "parse the JSON")):
        status, h, body = server.request("POST", "/v1/completions", raw=raw,
                                         headers={"Content-Type": "application/json"})
        assert status == 400 and words in json.loads(body)["error"]["message"]
    status, _, body = server.request("POST", "/v1/chat/completions", raw=b"x" * (65 * 1024))
    assert status == 413 and "at most 65536" in json.loads(body)["error"]["message"]
    for msgs, param in (([], "messages"), ([{"role": "tool", "content": "x"}], "messages[0].role"),
                        ([{"role": "user", "content": 5}], "messages[0].content"),
                        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content")):
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="m", messages=msgs)
        assert e.value.body["param"] == param, e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x " * 400}])
    assert e.value.body["code"] == "context_length_exceeded" and "256" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                  tools=[{"type": "function", "function": {"name": "f"}}])
    assert e.value.body["param"] == "tools"
    status, _, body = server.request("GET", "/v1/nowhere")
    assert status == 404 and json.loads(body)["error"]["message"] == "Invalid URL (GET /v1/nowhere)"
    status, _, body = server.request("GET", "/v1/completions")
    assert status == 405 and "error" in json.loads(body)
    # none of it hurt the server
    assert _complete(server, "Hello there", max_tokens=3, temperature=0)[2] >= 1
    m = server.metrics()
    assert m['mole_requests_total{endpoint="/v1/completions",code="400"}'] >= 4
    assert m['mole_requests_total{endpoint="/v1/chat/completions",code="413"}'] == 1


def test_api_key_is_enforced(server):
    for key, words in ((None, "didn't provide an API key"), ("sk-wrong", "Incorrect API key")):
        status, h, body = server.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1}, key=key)
        assert status == 401 and words in json.loads(body)["error"]["message"]
        assert h["www-authenticate"] == "Bearer"
        for path in ("/v1/models", "/metrics", "/v1/nowhere"):
            assert server.request("GET", path, key=key)[0] == 401
    with pytest.raises(openai.AuthenticationError):
        server.client(key="sk-wrong").models.list()
    assert server.request("GET", "/health", key=None)[0] == 200
    assert server.request("GET", "/v1/models", headers={"Authorization": f"bearer {KEY}"}, key=None)[0] == 200


def test_api_key_compared_in_constant_time(monkeypatch):
    """The check goes through hmac.compare_digest (a plain == would leak the key's prefix through timing)."""
    import asyncio

    from mole.server import app as server_app
    from mole.server.metrics import Metrics

    calls = []
    real = server_app.hmac.compare_digest
    monkeypatch.setattr(server_app.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    reached = []

    async def inner(scope, receive, send):
        reached.append(scope["path"])

    auth = server_app._Auth(inner, KEY, Metrics())
    sent = []

    async def send(msg):
        sent.append(msg)

    for token in (KEY, "sk-test-0123456788"):
        scope = {"type": "http", "path": "/v1/models", "headers": [(b"authorization", f"Bearer {token}".encode())]}
        asyncio.run(auth(scope, None, send))
    assert reached == ["/v1/models"] and len(calls) == 2 and sent[0]["status"] == 401


def test_sigint_stops_the_server_with_a_stream_open(model_path):
    s = Server(model_path, "--ctx", 128, env={"MOLE_SERVE_TEST_STEP_DELAY": "0.02"})
    sock = _open_stream(s, {"prompt": "Hello", "max_tokens": 120, "stream": True, "ignore_eos": True})
    try:
        assert _wait(lambda: s.metrics()["mole_sequences_active"] == 1)
        s.proc.send_signal(signal.SIGINT)
        s.proc.wait(20)
        assert s.proc.returncode in (0, 130), "".join(s.lines)
        assert "Traceback" not in "".join(s.lines)
    finally:
        sock.close()
        s.close()


# ---- the command --------------------------------------------------------------------------------

def mole_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mole", *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kw)


def test_serve_command_line(model_path, tmp_path):
    r = mole_cli("serve", "--help")
    assert r.returncode == 0 and "--parallel" in r.stdout and "--api-key" in r.stdout
    assert mole_cli("serve", "--port", "70000").returncode == 2
    assert mole_cli("serve", "-m", model_path, "--parallel", "9", "--batch", "8").returncode == 2
    assert mole_cli("serve", "-m", model_path, "--ctx", "64", "--ctx-total", "256").returncode == 2
    assert mole_cli("serve", "-m", model_path, "--parallel", "4", "--ctx-total", "3").returncode == 2
    r = mole_cli("serve", "-m", tmp_path / "missing.gguf", "--port", "0")
    assert r.returncode == 1 and "not found" in r.stderr and "Traceback" not in r.stderr
    # without the server extra: the command says how to install it
    code = ("import sys; sys.modules['starlette'] = None; from mole.cli import main; "
            f"sys.exit(main(['serve', '-m', {str(model_path)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and 'pip install ".[server]"' in r.stderr and "Traceback" not in r.stderr


def test_context_is_split_only_when_asked(server, model_path):
    """Every sequence has the full --ctx (the module's server: 4 sequences of 256); --ctx-total splits one budget."""
    assert server.client().models.retrieve(os.path.basename(model_path)).meta["n_ctx"] == 256
    assert "4 sequences x 256 positions each" in "".join(server.lines)
    s = Server(model_path, "--parallel", 2, "--ctx-total", 128)
    try:
        assert "2 sequences x 64 positions each (--ctx-total 128 split)" in "".join(s.lines)
        status, _, body = s.request("POST", "/v1/completions", {"prompt": [1] * 70, "max_tokens": 1})
        err = json.loads(body)["error"]
        assert status == 400 and "maximum context length is 64" in err["message"], err
    finally:
        s.close()


def test_server_bookkeeping_is_empty_after_many_requests(server):
    """Nothing per request is kept: after a few hundred requests (some cancelled, some bad) the queues are empty
    and the resident memory has not grown by more than a few MB."""
    c = server.client()
    for i in range(30):
        c.completions.create(model="m", prompt=PROMPTS[i % len(PROMPTS)], max_tokens=4, temperature=0)
    rss0 = server.metrics()["mole_process_resident_memory_bytes"]

    def one(i):
        if i % 10 == 0:
            server.request("POST", "/v1/completions", {"prompt": "x", "temperature": 9})
        elif i % 10 == 1:
            _open_stream(server, {"prompt": "Hello", "max_tokens": 50, "stream": True}).close()
        else:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPTS[i % 8]}],
                                      max_tokens=4, temperature=0.5, seed=i, stream=bool(i % 2))
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(one, range(300)))
    assert _wait(lambda: server.metrics()["mole_sequences_active"] == 0)
    m = server.metrics()
    assert m["mole_queue_length"] == 0 and m["mole_requests_running"] == 0 and m["mole_kv_tokens_used"] == 0
    assert m["mole_process_resident_memory_bytes"] - rss0 < 16 * 2**20
    assert not math.isnan(m['mole_recent_time_per_output_token_seconds{window="60s"}'])
