"""A programmable HTTP server on 127.0.0.1 that misbehaves on purpose, the way podcast hosts do.

Each route serves fixed bytes and can be told to honour or ignore `Range`, lie about its length, drop the connection
halfway, answer 503 a few times before working, redirect (in a loop, if asked) or answer with a status only. Every
request is logged with its headers, so tests can count what reached the media routes and see what was asked for.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest


@dataclass
class Route:
    body: bytes = b""
    content_type: str | None = "application/octet-stream"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    ranges: bool = True  # honour `Range` (206); False: ignore it and send everything with 200
    drop_first: int = 0  # the first N requests announce the full length, send half the body and close
    fail_first: int = 0  # the first N requests answer `fail_status`
    fail_status: int = 503
    retry_after: str | None = "0"
    redirect_to: str | None = None  # 302 to this path (itself, for a loop), or to this absolute URL
    announce_length: int | None = None  # a Content-Length other than the body's (a lie)
    send_length: bool = True  # False: no Content-Length; the body ends when the connection closes
    served: int = 0  # requests seen so far (drop_first / fail_first count these)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]


class HTTPFixture:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        fixture = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: a drop is simply a close

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fixture._handle(self)

            def do_HEAD(self) -> None:  # noqa: N802
                fixture._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path if path.startswith('/') else '/' + path}"

    def route(self, path: str, body: bytes = b"", content_type: str | None = "application/octet-stream",
              **kwargs: object) -> str:
        """Serve `body` at `path` (see `Route` for the misbehaviours); returns the full URL."""
        with self._lock:
            self.routes[path] = Route(body=body, content_type=content_type, **kwargs)  # type: ignore[arg-type]
        return self.url(path)

    def log(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def hits(self, *paths: str) -> int:
        with self._lock:
            return sum(r.path in paths for r in self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        with self._lock:
            self.requests.append(Request(h.command, path, {k.lower(): v for k, v in h.headers.items()}))
            route = self.routes.get(path)
            n = route.served if route else 0
            if route:
                route.served += 1
        if route is None:
            return self._status(h, 404)
        if n < route.fail_first:
            extra = {"Retry-After": route.retry_after} if route.retry_after is not None else {}
            return self._status(h, route.fail_status, extra)
        if route.redirect_to is not None:
            target = route.redirect_to if "://" in route.redirect_to else self.url(route.redirect_to)
            return self._status(h, 302, {"Location": target})
        if route.status != 200:
            return self._status(h, route.status)
        body = route.body
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        start = 0
        status = 200
        rng = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", "").strip())
        if route.ranges and rng and h.headers.get("If-Range", etag) == etag:
            start = int(rng.group(1))
            if start >= len(body):
                return self._status(h, 416, {"Content-Range": f"bytes */{len(body)}"})
            status = 206
        h.send_response(status)
        if route.content_type is not None:
            h.send_header("Content-Type", route.content_type)
        h.send_header("ETag", etag)
        if route.ranges:
            h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if route.send_length:
            h.send_header("Content-Length", str(route.announce_length or len(body) - start))
        for k, v in route.headers.items():
            h.send_header(k, v)
        h.end_headers()
        if h.command == "HEAD":
            return None
        payload = body[start:]
        if n < route.fail_first + route.drop_first:
            payload = payload[: len(payload) // 2]
        try:
            h.wfile.write(payload)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a cap, a refusal): that is what the test is about
        return None

    @staticmethod
    def _status(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str] | None = None) -> None:
        body = f"<html><body>{status}</body></html>".encode()
        h.send_response(status)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HTTPFixture]:
    """The server, and the address guard told to let ingest reach it (127.0.0.1 is refused by default)."""
    monkeypatch.setenv("INGEST_ALLOW_HOSTS", "127.0.0.1")
    server = HTTPFixture()
    try:
        yield server
    finally:
        server.close()
