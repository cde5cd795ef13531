"""A small stdlib HTTP/1.1 server shared by the Odoo fake (private; see `sync.sandbox.odoo`).

Keep-alive with Content-Length bodies, a `Date` header from the fake's clock, and a hook that
returns either a `Reply` or None (an injected drop: the connection is shut without an answer).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_reply(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(status, json.dumps(payload).encode(), "application/json", headers or [])


Handler = Callable[[str, str, Any, bytes], Reply | None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    handle: Handler
    now: Callable[[], datetime]
    server_name_header: str
    conns: set[socket.socket]
    conns_lock: threading.Lock


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def version_string(self) -> str:
        return self.server.server_name_header

    def date_time_string(self, timestamp: float | None = None) -> str:
        return format_datetime(self.server.now(), usegmt=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def setup(self) -> None:
        super().setup()
        try:   # headers and body leave in one write; no Nagle / delayed-ACK stall on keep-alive
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.conns_lock:
                self.server.conns.discard(self.connection)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = self.rfile.read(length) if length > 0 else b""
        except OSError:
            self.close_connection = True
            return
        reply = self.server.handle(self.command, self.path, self.headers, body)
        if reply is None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for key, value in reply.headers:
                self.send_header(key, value)
            self._headers_buffer.append(b"\r\n")
            if self.command != "HEAD":
                self._headers_buffer.append(reply.body)
            self.flush_headers()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve


class LoopbackServer:
    """Start/stop a threaded server around a handler function."""

    def __init__(self, handle: Handler, now: Callable[[], datetime], *, host: str, port: int,
                 server_header: str, name: str) -> None:
        self._handle, self._now = handle, now
        self.host, self._port, self._header, self._name = host, port, server_header, name
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        server = _Server((self.host, self._port), _RequestHandler)
        server.handle, server.now, server.server_name_header = self._handle, self._now, self._header
        server.conns, server.conns_lock = set(), threading.Lock()
        self._server = server
        self._port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"{self._name}-{self._port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with server.conns_lock:
            conns = list(server.conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class FaultBox:
    """Armed faults, each with a count, matched on a request label (e.g. `account.payment.search_read`).

    Kinds: `fail` (answer an HTTP status), `error` (an application error in the protocol's own
    shape), `slow` (sleep, then handle), `drop` (close without an answer).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []

    def _add(self, kind: str, count: int, match: str | None, **extra: Any) -> None:
        if type(count) is not int or count < 1:
            raise ValueError("count must be an integer >= 1")
        with self._lock:
            self._items.append({"kind": kind, "count": count, "match": match, **extra})

    def fail(self, status: int = 500, count: int = 1, match: str | None = None, body: Any = None) -> None:
        """Answer HTTP `status` to the next `count` requests whose label contains `match`."""
        self._add("fail", count, match, status=status, body=body)

    def error(self, name: str = "odoo.exceptions.UserError", message: str = "Injected error", count: int = 1,
              match: str | None = None, code: int | None = None, status: int | None = None) -> None:
        """Answer an application error (the protocol's own error shape) to the next `count` requests."""
        self._add("error", count, match, name=name, message=message, code=code, status=status)

    def slow(self, seconds: float, count: int = 1, match: str | None = None) -> None:
        self._add("slow", count, match, seconds=float(seconds))

    def drop(self, count: int = 1, match: str | None = None) -> None:
        """Close the connection without answering the next `count` matching requests."""
        self._add("drop", count, match)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(i) for i in self._items]

    def take(self, label: str) -> tuple[float, dict[str, Any] | None]:
        """(seconds to sleep, the fault to answer with or None); consumes what fires."""
        sleep = 0.0
        fired = None
        with self._lock:
            for item in list(self._items):
                if item["match"] is not None and item["match"] not in label:
                    continue
                if item["kind"] == "slow":
                    if sleep:
                        continue
                    sleep = item["seconds"]
                elif fired is None:
                    fired = dict(item)
                else:
                    continue
                item["count"] -= 1
                if item["count"] <= 0:
                    self._items.remove(item)
        return sleep, fired
