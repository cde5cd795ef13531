"""A fake ERPNext 15 site on loopback that answers the REST API like the real one, quirks included.

Used by the demo, by users' dry runs and by every test that talks to an ERP. It is a real HTTP
server (stdlib `ThreadingHTTPServer`, HTTP/1.1 keep-alive, `Server: gunicorn`, a `Date`
header from the fake's clock), so clients exercise their real transport.

What it reproduces (see `shared/reference/erp-apis.md` §1 and the `erpnext-real` captures):

* v1 list `GET /api/resource/{doctype}`: `fields` (default `name`; `["*"]` all parent columns
  with nulls; `references.x` / `` `tabPayment Entry Reference`.x `` join one row per child),
  `filters` / `or_filters` (lists, 4-tuples or dicts; `filters AND (or1 OR or2 …)`), operators
  `= != < > <= >= like, not like, in, not in, between, is`, `order_by`, `limit_start`,
  `limit_page_length` (default **20**, `0` = all, `limit` alias), `as_dict=0`. The answer is
  `{"data": [...]}` only. Without `order_by` rows come in a fixed scrambled order (never by
  `modified`), as on MariaDB without ORDER BY.
* single GET `{"data": doc}` with child tables and **null keys omitted**; POST / PUT / DELETE,
  `frappe.client.get_list|get_count|get|insert|submit|cancel|delete`, `ping`,
  `frappe.auth.get_logged_user`, `frappe.utils.change_log.get_versions` and ERPNext's
  `get_payment_entry`; API v2 reads (`/api/v2/document`, `/api/v2/doctype/{dt}/count`,
  `/api/v2/method`).
* docstatus moves (submit, cancel, amend `<name>-1`, delete with a `Deleted Document` row and the
  naming series rolled back when the deleted name was the newest); a PE submit or cancel moves
  its invoices' outstanding, Payment Schedule, status and `modified`.
* errors with the real bodies (401/403/404/409/417/500, `_server_messages` double-encoded), the
  HTML 404 of an unknown site, and the rate limiter's plain-text 429.

Data file (JSON; every key optional except that without `users` no request can authenticate)::

    {"site_time_zone": "Asia/Karachi",            # System Settings time zone; default UTC
     "site_host": "erp.localhost",                # if set, another Host (not 127.0.0.1/localhost)
                                                  # gets the real "<host> does not exist" HTML 404
     "allow_error_traceback": true,               # false: production-like error bodies (notb_*)
     "users": [{"user": "Administrator", "api_key": "…", "api_secret": "…",
                "roles": ["System Manager"]},
               {"user": "sales.viewer@example.pk", "api_key": "…", "api_secret": "…",
                "roles": ["Sales User"]}],
     "permissions": {"Payment Entry": ["Accounts User"]},   # override the roles that may read/write
     "custom_fields": {"Payment Entry": ["custom_zensbot_payment_id"],
                       "Sales Invoice": ["custom_zensbot_fee_plan_id", "custom_batch"]},
     "amend_naming": "Amend Counter",             # or "Default Naming", or {doctype: mode}
     "rate_limit": null,                          # or {"limit": requests, "window": seconds}
     "series": {"ACC-PAY-2026-": 24},             # naming-series counters (default: highest name)
     "seed": 0,                                   # for child-row / Deleted Document hashes
     "documents": {"Payment Entry": [{…, "references": [{…}]}],
                   "Sales Invoice": [{…, "items": [{…}], "payment_schedule": [{…}]}],
                   "Customer": [{…}], "Company": [{…}], "Payment Terms Template": [{…}],
                   "Payment Term": [{…}], "Deleted Document": [{…}]}}

Documents are stored as given (a missing key is a null). `modified` / `creation` are naive
site-local strings `YYYY-MM-DD HH:MM:SS[.ffffff]`; missing ones are stamped at load. Child rows
get `name`, `idx`, `parent`, `parentfield`, `parenttype` (and `doctype` on output) when absent.
Keys that are not columns of the doctype become extra columns. Administrator may do anything;
other users need a role of the doctype (Payment Entry: Accounts User / Accounts Manager /
System Manager).

Custom fields may also be given as `{"fieldname": "…", "label": "…"}` (the label shows in
UpdateAfterSubmitError messages); their `Custom Field` documents and `System Settings` are
generated unless the data file brings its own.

Test controls: `fake.faults.fail/slow/drop/clear/on_list` in-process, or without auth over
HTTP: `POST /_fake/faults` `{"action": "fail", "status": 500, "count": 1, "path_regex": "…"}`
(or a list of such; also `slow` with `seconds`, `drop`, `clear`), `GET /_fake/state`. Neither
is counted in `stats()`, whose `by_path_kind` buckets are list, get, insert, update, delete,
method, count and other.

Not modelled: GL balances (`*_account_balance` stay as given or 0.0), SQL functions, `group_by`
and nested child fields in `fields`, the `timespan`/`previous`/`next`/tree operators (500
NotImplementedError), user permissions per document, link checks beyond the PE party, API v2
writes and DocType meta, `frappe.client.get_value`/`save`/`rename`, OAuth and session login.

Run standalone: `python -m sync.sandbox.erpnext DATA.json --port 8000`.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import signal
import socket
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from zoneinfo import ZoneInfo

from ._erpnext_api import Api, Request, Response, json_response, route_kind
from ._erpnext_errors import FrappeError, internal
from ._erpnext_faults import Faults, ListHook, fault_response
from ._erpnext_store import Store

__all__ = ["ERPNextFake", "Faults", "FrappeError", "load_data", "serve_forever"]

Clock = Callable[[], datetime]


def load_data(path: str | Path) -> dict:
    """Read a data file (see the module docstring)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the data file must hold a JSON object")
    return data


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: ERPNextFake

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # a client went away (reset, killed): not news
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def version_string(self) -> str:
        return "gunicorn"

    def date_time_string(self, timestamp: float | None = None) -> str:
        return format_datetime(self.server.fake._now_utc(), usegmt=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle + delayed ACK cost 40 ms each
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        response = self.server.fake._respond(self.command, self.path, self.headers, body)
        if response is None:  # an injected drop: no answer at all
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for key, value in response.headers:
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve


class ERPNextFake:
    """A fake ERPNext site; `start()` it, point a client at `url`, `stop()` it."""

    def __init__(
        self, data: dict, *, host: str = "127.0.0.1", port: int = 0, clock: Clock | None = None
    ) -> None:
        self._clock: Clock = clock or (lambda: datetime.now(UTC))
        self._store = Store(data, self._clock)
        self.site_tz: ZoneInfo = self._store.tz
        self.faults = Faults()
        self._api = Api(self._store, data, self._clock, self.faults.list_hooks)
        self._host, self._requested_port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._stopping = threading.Event()
        self._stats_lock = threading.Lock()
        self._requests = 0
        self._by_kind: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> ERPNextFake:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self._host, self._requested_port), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"erpnext-fake:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:  # keep-alive connections would otherwise keep answering
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ERPNextFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    # --- test and demo helpers (thread-safe; they bypass HTTP, auth and ERPNext validation) ------
    def insert(self, doctype: str, doc: dict, *, submit: bool = True, modified: Any = None) -> dict:
        """Insert like Frappe (series name if none given, server-filled fields, creation=modified).
        A `docstatus` in `doc` wins over `submit`; a submitted PE updates its invoices."""
        docstatus = (
            int(doc["docstatus"]) if doc.get("docstatus") is not None else (1 if submit else 0)
        )
        with self._store.lock:
            saved = self._store.insert(
                doctype,
                doc,
                docstatus=docstatus,
                user="Administrator",
                http=False,
                modified=modified,
            )
            return copy.deepcopy(saved)

    def update(
        self,
        doctype: str,
        name: str,
        changes: dict,
        *,
        modified: Any = None,
        bump_modified: bool = True,
    ) -> dict:
        """Write fields directly (like `db_set`): no docstatus rules; `bump_modified=False` keeps
        `modified`, as the ERPNext paths that skip bumping it do."""
        with self._store.lock:
            return copy.deepcopy(
                self._store.update(
                    doctype, name, changes, modified=modified, bump_modified=bump_modified
                )
            )

    def submit(self, doctype: str, name: str, *, modified: Any = None) -> dict:
        with self._store.lock:
            return copy.deepcopy(
                self._store.transition(doctype, name, 1, user="Administrator", modified=modified)
            )

    def cancel(self, doctype: str, name: str, *, modified: Any = None) -> dict:
        """docstatus 1 → 2 and `modified` bumped; a PE also bumps (and reopens) its invoices."""
        with self._store.lock:
            return copy.deepcopy(
                self._store.transition(doctype, name, 2, user="Administrator", modified=modified)
            )

    def amend(
        self,
        doctype: str,
        name: str,
        changes: dict | None = None,
        *,
        submit: bool = True,
        modified: Any = None,
    ) -> dict:
        """A new document amending the cancelled `name`: `<name>-1`, `-2`… or a series name."""
        with self._store.lock:
            return copy.deepcopy(
                self._store.amend(
                    doctype, name, changes, submit=submit, user="Administrator", modified=modified
                )
            )

    def delete(self, doctype: str, name: str) -> None:
        """Delete a draft or cancelled document, leaving a `Deleted Document` row."""
        self._store.delete(doctype, name, user="Administrator")

    def get(self, doctype: str, name: str) -> dict | None:
        with self._store.lock:
            doc = self._store.docs[self._store.parent_meta(doctype).name].get(name)
            return copy.deepcopy(doc) if doc is not None else None

    def all(self, doctype: str) -> list[dict]:
        with self._store.lock:
            return copy.deepcopy(
                list(self._store.docs[self._store.parent_meta(doctype).name].values())
            )

    def on_list(self, callback: ListHook | None) -> None:
        self.faults.on_list(callback)

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return {
                "requests": self._requests,
                "by_path_kind": dict(self._by_kind),
                "by_status": dict(self._by_status),
            }

    def state(self) -> dict[str, Any]:
        with self._store.lock:
            documents = {dt: len(docs) for dt, docs in self._store.docs.items() if docs}
            series = dict(self._store.series)
        return {
            "now": self._now_utc().isoformat(),
            "site_time_zone": str(self.site_tz),
            "stats": self.stats(),
            "faults": self.faults.pending(),
            "documents": documents,
            "series": series,
        }

    # --- request path -----------------------------------------------------------------------
    def _now_utc(self) -> datetime:
        now = self._clock()
        return (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _respond(self, method: str, target: str, headers: Any, body: bytes) -> Response | None:
        split = urlsplit(target)
        path = unquote(split.path)
        if path.startswith("/_fake/"):
            return self._control(method, path, body)
        kind = route_kind(method, path)
        try:
            sleep, fault = self.faults.take(method, path, target)
            if sleep:
                self._stopping.wait(sleep)
            if fault is not None and fault.kind == "drop":
                self._count(kind, None)
                return None
            if fault is not None:
                response = fault_response(fault, self._api, path)
            else:
                query = dict(reversed(parse_qsl(split.query, keep_blank_values=True)))
                response = self._api.handle(Request(method, path, query, headers, body))
        except Exception as exc:  # noqa: BLE001 - the server boundary: a bug answers 500, never kills the fake
            response = self._api.error_response(internal(exc), v2=path.startswith("/api/v2/"))
        self._count(kind, response.status)
        return response

    def _count(self, kind: str, status: int | None) -> None:
        with self._stats_lock:
            self._requests += 1
            self._by_kind[kind] += 1
            if status is not None:
                self._by_status[status] += 1

    def _control(self, method: str, path: str, body: bytes) -> Response:
        try:
            if path == "/_fake/state" and method == "GET":
                return json_response(200, self.state())
            if path == "/_fake/faults" and method == "POST":
                spec = json.loads(body or b"{}")
                for item in spec if isinstance(spec, list) else [spec]:
                    self.faults.configure(item)
                return json_response(200, {"faults": self.faults.pending()})
            if path == "/_fake/faults" and method == "GET":
                return json_response(200, {"faults": self.faults.pending()})
        except (ValueError, KeyError, TypeError, re.error) as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(404, {"error": f"unknown control endpoint {method} {path}"})


def serve_forever(data_path: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the fake until SIGINT/SIGTERM (blocking). Prints the URL, never a secret, to stderr."""
    fake = ERPNextFake(load_data(data_path), host=host, port=port)
    done = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    fake.start()
    try:
        sys.stderr.write(f"ERPNext fake listening on {fake.url} (site time zone {fake.site_tz})\n")
        sys.stderr.flush()
        done.wait()
    finally:
        fake.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.stderr.write("ERPNext fake stopped\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sync.sandbox.erpnext", description=__doc__.splitlines()[0]
    )
    parser.add_argument("data", help="data file (JSON)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    serve_forever(args.data, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
