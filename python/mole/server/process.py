"""`mole serve` as a child process, and plain HTTP/1.1 requests to it over a socket: what tests/test_server.py and
bench/{bench_serve,soak_serve}.py drive a server with (no client library, so nothing a client would hide)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading


def request(port: int, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None,
            timeout: float = 60) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one request to 127.0.0.1:port; body: JSON to send, or raw
    bytes as they are. The connection closes after it; a chunked body is put back together."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    hdrs = {"Host": "127.0.0.1", "Connection": "close", "Content-Length": str(len(data))}
    if body is not None:
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\n".encode()
                  + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode() + b"\r\n" + data)
        resp = b""
        while chunk := s.recv(1 << 16):
            resp += chunk
    head, _, rest = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    h = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    if h.get("transfer-encoding") == "chunked":
        out = b""
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        rest = out
    return status, h, rest


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text to {name{labels}: value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


class ServerProcess:
    """`python -m mole serve -m MODEL --port 0 --log-level warning ARGS...`, started and waited for (its "listening
    on" line names the port). Its stderr lines are kept in .lines."""

    def __init__(self, model, *args, env: dict | None = None, start_timeout: float = 120):
        cmd = [sys.executable, "-m", "mole", "serve", "-m", str(model), "--port", "0", "--log-level", "warning",
               *map(str, args)]
        self.args = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, **(env or {})))
        self.lines: list[str] = []
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                if "listening on" in line:
                    ready.set()
            ready.set()
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(start_timeout) or self.proc.poll() is not None:
            self.close()
            raise RuntimeError("the server did not start:\n" + "".join(self.lines))
        self.port = int(re.search(r"listening on http://\S+:(\d+)", "".join(self.lines)).group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None,
                timeout: float = 60) -> tuple[int, dict, bytes]:
        return request(self.port, method, path, body, headers, raw, timeout)

    def metrics(self, headers: dict | None = None) -> dict[str, float]:
        status, _, body = self.request("GET", "/metrics", headers=headers)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}: {body[:200]!r}")
        return parse_metrics(body.decode("utf-8", "replace"))

    def close(self, timeout: float = 20) -> None:
        """SIGINT (as Ctrl-C), then SIGKILL if it has not ended within timeout seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
