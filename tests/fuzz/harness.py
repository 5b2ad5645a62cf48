"""Helpers for the HTTP hardening and fuzz tests: an ASGI app served by a real uvicorn on 127.0.0.1
(in a thread of the test process), and raw HTTP/1.1 requests whose target and header bytes go out
exactly as written (httpx and requests normalize "..", reject non-ASCII headers and always start
the target with "/": the inputs under test here)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn

from hfbt.cluster import free_port


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    complete: bool  # False: the connection closed before Content-Length bytes came

    def json(self) -> object:
        return json.loads(self.body)

    def error(self) -> str:
        """The Hub-style {"error": ...} reason of an error response ("" if it has none)."""
        try:
            body = self.json()
        except ValueError:
            return ""
        return body.get("error", "") if isinstance(body, dict) else ""


def raw_request(
    port: int,
    target: bytes | str,
    method: str = "GET",
    headers: dict[str, bytes | str] | None = None,
    body: bytes = b"",
    timeout: float = 10.0,
) -> RawResponse:
    """One request on a fresh connection; the target and header values are sent byte for byte."""
    if isinstance(target, str):
        target = target.encode("utf-8")
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(name.encode() + b": " + (value.encode("utf-8") if isinstance(value, str) else value))
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        data = _read_all(s)
    return _parse(data, method)


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(data: bytes, method: str) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body, complete = _dechunk(body)
    else:
        expected = int(headers.get("content-length", len(body)))
        complete = method == "HEAD" or len(body) >= expected
    return RawResponse(int(status_line.split()[1]), headers, body, complete)


def _dechunk(body: bytes) -> tuple[bytes, bool]:
    out = b""
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return out, False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out, True
        out, body = out + rest[:size], rest[size + 2 :]


@dataclass
class ThreadServer:
    """An ASGI app on a real uvicorn (HTTP/1.1 over h11, as `hfbt agent` and `serve-dir` run it)."""

    port: int
    server: uvicorn.Server
    thread: threading.Thread
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"


@contextmanager
def serve_in_thread(app: object, startup_timeout: float = 10.0) -> Iterator[ThreadServer]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield ThreadServer(port, server, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
