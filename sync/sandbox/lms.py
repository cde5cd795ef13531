"""The Zenslearn LMS sandbox: a real HTTP server on loopback that implements the LMS API contract.

Used by the demo, by users' dry runs and by all tests. Every path, field and phrase comes from
`sync.contract` (lms-contract.md §3); the server uses the standard library only
(`http.server.ThreadingHTTPServer`, HTTP/1.1 keep-alive, JSON bodies) and serves the API under
`/api/v1/public`.

Usage::

    with LmsSandbox(load_seed("demo.json")) as lms:      # port=0 picks a free port
        httpx.get(lms.base_url + "/students", headers={"X-API-Key": "zl_demo_..."})
        lms.faults.drop_after_apply()                     # the next POST is applied, its answer lost
        lms.payments("inst-demo"), lms.plans(), lms.stats()

    python -m sync.sandbox.lms --seed demo.json --port 8765   # out of process (SIGINT/SIGTERM stop it)

Seed format (JSON)
------------------
::

    {"rate_limit_per_minute": 1000,
     "institutes": [{
        "id": "inst-demo", "name": "Demo Institute", "suspended": false,
        "api_keys": [{"key": "zl_demo_...", "name": "feesync",
                      "scopes": ["fees:read", "fees:write", "students:read"],
                      "expires_at": null, "revoked": false}],
        "batches": [{"id": 1, "name": "Python Bootcamp"}],
        "students": [{"id": 101, "name": "Ayesha Khan", "email": "ayesha.khan@example.pk", "status": "active"}],
        "fee_plans": [{"id": 5001, "student_id": 101, "batch_id": 1, "plan_type": "installment",
                       "total_amount": 45000, "discount_type": null, "discount_value": null,
                       "currency": "PKR", "status": "active", "notes": "",
                       "installments": [{"id": 90001, "sequence": 1, "amount_due": 18000, "amount_paid": 0,
                                         "due_date": "2026-07-01", "status": "pending",
                                         "label": "Installment 1"}]}],
        "payments": []
     }]}

Defaults: `rate_limit_per_minute` 1000 (the constructor argument wins over the seed); an institute is
not suspended; a key without `scopes` holds `read` + `write`; `expires_at` is null, an epoch number or
an ISO-8601 timestamp (naive = UTC). Ids are integers, unique per kind across all institutes; a
missing id is assigned above the largest id seen, and so are ids the server creates. A student's
`status` defaults to `active`. A plan's `final_amount` defaults to `total_amount` minus the discount
(`percent`: rounded half-up to whole units; `flat`: the value), `currency` to `PKR`, `notes` to "",
`created_at` to now, `status` to `completed` when every installment is paid or waived else `active`;
a plan without installments gets one installment of the final amount. An installment's `sequence`
defaults to its position, `amount_paid` to `amount_due` if its status is `paid` else 0, `status` to
paid / partially_paid / pending from `amount_paid`, `label` to "Installment <sequence>". A plan's
`batch_id` that is not among `batches` adds that batch. Seeded payments need `fee_plan_id` and
`amount`; they get `receipt_number` `RCP-000001`-style numbers (per institute), `status`
`received`, `payment_method` `cash`, and do NOT change installments (seed `amount_paid` is the truth).

Behaviour beyond the contract text
----------------------------------
* Request pipeline: routing (unknown path 404, wrong method 405) → auth (401) → rate limit (429,
  every authenticated request counts) → suspended institute (403) → scope (403) → path/query/body
  validation (422, list detail) → business rules.
* Idempotency (record payment needs a key; create plan, cancel and waive accept one): results are
  stored per (institute, key) with a fingerprint of (method, path, parsed body); 2xx answers and the
  business 409/422 answers are stored, validation 422s (list detail) and 400/401/403/404/429/5xx are not.
  The whole lookup-apply-store runs under the one state lock, so concurrent requests with one key
  apply once.
* A payment without `fee_installment_id` is allocated earliest-unpaid-first by sequence; its
  `fee_installment_id` is then the first installment it went to.
* `balance_due` = sum over pending/partially_paid/overdue installments of (amount_due - amount_paid).
  The fee summary counts plans that are not cancelled; `overdue_amount` is the balance of unpaid
  installments that are `overdue` or whose due date is before today (UTC, per the clock).
* Faults fire in this order: `slow` (sleep), then `fail` / `garbage` (answered before auth, nothing
  applied, not rate-limited), then the request is handled; `drop_after_apply` is claimed before handling
  and fires whatever the outcome (the request is processed, then the socket is shut down unanswered).
* Admin endpoints (no auth, loopback clients only, not counted in stats or rate limits):
  `GET /_sandbox/state`, `GET /_sandbox/faults`, `POST /_sandbox/faults` `{"type": ..., **args}`,
  `POST /_sandbox/revoke` `{"key": ...}`, `POST /_sandbox/ignore-idempotency-on-create-plan`
  `{"value": true}`, `POST /_sandbox/clear-faults`.
"""

from __future__ import annotations

import argparse
import copy
import http
import ipaddress
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from sync import contract as C
from sync.sandbox import _lms_validate as V
from sync.sandbox._lms_faults import Faults
from sync.sandbox._lms_state import ApiError, LmsState, Response, encode

__all__ = ["LmsSandbox", "Faults", "load_seed", "serve_forever", "main"]

ADMIN_PREFIX = "/_sandbox"
WRITE_OPS = frozenset({"create_plan", "record_payment", "cancel_plan", "waive_installment"})
_MAX_BODY = 1 << 20


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
    return re.compile(regex)


_ROUTE_TABLE: list[tuple[str, dict[str, str]]] = [
    (C.PATH_STUDENTS, {"GET": "list_students"}),
    (C.PATH_STUDENT, {"GET": "get_student"}),
    (C.PATH_STUDENT_FEE_SUMMARY, {"GET": "fee_summary"}),
    (C.PATH_FEE_PLANS, {"GET": "list_fee_plans", "POST": "create_plan"}),
    (C.PATH_FEE_PLAN, {"GET": "get_fee_plan"}),
    (C.PATH_PLAN_INSTALLMENTS, {"GET": "list_installments"}),
    (C.PATH_PLAN_PAYMENTS, {"POST": "record_payment"}),
    (C.PATH_PLAN_CANCEL, {"POST": "cancel_plan"}),
    (C.PATH_INSTALLMENT_WAIVE, {"POST": "waive_installment"}),
    (C.PATH_PAYMENTS, {"GET": "list_payments"}),
]
ROUTES = [(_compile(t), methods) for t, methods in _ROUTE_TABLE]

_GARBAGE_SAMPLE = encode({C.PAY_ID: 1, C.PAY_AMOUNT: 1000, C.PAY_RECEIPT_NUMBER: "RCP-999999",
                          C.PAY_STATUS: C.PAY_RECEIVED})


def load_seed(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a seed JSON file (format in the module docstring)."""
    with open(path, encoding="utf-8") as fh:
        seed = json.load(fh)
    if not isinstance(seed, dict) or not isinstance(seed.get("institutes", []), list):
        raise ValueError(f"{path}: a seed is a JSON object with an 'institutes' list")
    return seed


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(raw: bytes) -> Any:
    """Parse a request body; None when empty; raises a 422 ApiError (json_invalid) when malformed."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        pos = getattr(exc, "pos", 0)
        raise ApiError(422, [V.error(["body", pos], "json_invalid", "JSON decode error", {},
                                     {"error": str(exc)})]) from None


def _is_loopback(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    sandbox: "LmsSandbox"

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            socks = list(self._open)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ZenslearnSandbox/1.0"
    sys_version = ""
    timeout = 120
    server: _Server

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by design
        return

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # --- plumbing -------------------------------------------------------------------------
    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, unsupported method) as JSON, then close."""
        self.close_connection = True
        try:
            phrase = http.HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        body = encode({C.ERR_DETAIL: message or phrase})
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            total = 0
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > _MAX_BODY:
                    raise ValueError("request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > _MAX_BODY:
            raise ValueError("bad Content-Length")
        return self.rfile.read(length) if length else b""

    def _send(self, resp: Response, content_type: str | None = "application/json") -> None:
        self.send_response(resp.status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(resp.raw)))
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(resp.raw)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handle(self, method: str) -> None:
        sandbox = self.server.sandbox
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        try:
            raw = self._read_body()
        except (ValueError, OSError):
            self.send_error(400, "Malformed request body")
            return
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            try:
                resp = sandbox._admin(method, path, raw, self.client_address[0])
            except Exception:  # noqa: BLE001 - never crash the server
                resp = Response.json(500, {C.ERR_DETAIL: "Internal server error"})
            self._send(resp)
            return
        sandbox._serve(self, method, path, query, raw)


class LmsSandbox:
    """The LMS sandbox server. Thread-safe; introspection methods return deep copies."""

    def __init__(self, seed: dict[str, Any], *, host: str = "127.0.0.1", port: int = 0,
                 rate_limit_per_minute: int | None = None, clock: Callable[[], float] = time.time) -> None:
        if isinstance(seed, (str, os.PathLike)):
            seed = load_seed(seed)
        self._state = LmsState(copy.deepcopy(seed), clock, rate_limit_per_minute)
        self.faults = Faults()
        # test hook: called after a request was handled (state changed) and before its answer is sent;
        # the crash tests use it to kill the daemon between the LMS applying a write and the daemon
        # recording the outcome.
        self.on_response: Callable[[str, str, int], None] | None = None
        self.host = host
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self._requested_port

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{C.API_PREFIX}"

    @property
    def admin_url(self) -> str:
        return self.base_url[: -len(C.API_PREFIX)] + ADMIN_PREFIX

    def start(self) -> "LmsSandbox":
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        server = _Server((self.host, self._requested_port), _Handler)
        server.sandbox = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"lms-sandbox-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open keep-alive connections and release the port."""
        server, self._server = self._server, None
        if server is None:
            return
        self._requested_port = server.server_address[1]
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "LmsSandbox":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- introspection and setup helpers ----------------------------------------------------
    def payments(self, institute_id: str | None = None) -> list[dict[str, Any]]:
        """Every payment (as the API shows it), ordered by id; optionally one institute's."""
        return self._state.snapshot_payments(institute_id)

    def plans(self, institute_id: str | None = None) -> list[dict[str, Any]]:
        """Every fee plan with its installments, amount_paid and balance_due, ordered by id."""
        return self._state.snapshot_plans(institute_id)

    def students(self, institute_id: str | None = None) -> list[dict[str, Any]]:
        with self._state.lock:
            return [{k: copy.deepcopy(v) for k, v in s.items() if not k.startswith("_")}
                    for _, s in sorted(self._state.students.items())
                    if institute_id is None or s["_inst"] == str(institute_id)]

    def stats(self) -> dict[str, Any]:
        """{"requests", "by_status", "writes_received", "writes_applied", "replays", "rate_limited", "dropped"}."""
        return self._state.snapshot_stats()

    def revoke_key(self, key: str) -> None:
        """Revoke an API key (its next request gets 401). KeyError when the key is unknown."""
        if not self._state.revoke_key(key):
            raise KeyError("unknown API key")

    def add_api_key(self, institute_id: str, key: str, *, name: str | None = None,
                    scopes: list[str] | None = None, expires_at: Any = None) -> None:
        self._state.add_api_key(institute_id, key, name=name, scopes=scopes, expires_at=expires_at)

    def add_student(self, institute_id: str, **fields: Any) -> dict[str, Any]:
        """Add a student (seed format; id assigned when missing); returns it."""
        return self._state.add_student(institute_id, fields)

    def add_batch(self, institute_id: str, **fields: Any) -> dict[str, Any]:
        return self._state.add_batch(institute_id, fields)

    def add_plan(self, institute_id: str, plan: dict[str, Any]) -> dict[str, Any]:
        """Add a fee plan (seed format, defaults applied); returns it with installments."""
        return self._state.add_plan(institute_id, copy.deepcopy(plan))

    def set_suspended(self, institute_id: str, suspended: bool = True) -> None:
        self._state.set_suspended(institute_id, suspended)

    def key_names(self) -> list[str]:
        """`<institute>/<key name>` for every key (never the key values)."""
        with self._state.lock:
            return [f"{k['_inst']}/{k['name']}" for k in self._state.keys.values()]

    # --- request handling -------------------------------------------------------------------
    def _serve(self, h: _Handler, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> None:
        state = self._state
        state.count("requests")
        try:
            slow = self.faults.take("slow", method, path)
            if slow is not None:
                time.sleep(slow["seconds"])
            fail = self.faults.take("fail", method, path)
            if fail is not None:
                self._send_fail(h, fail)
                return
            garbage = self.faults.take("garbage", method, path)
            if garbage is not None:
                self._send_garbage(h, garbage)
                return
            drop = self.faults.take("drop_after_apply", method, path)
            try:
                resp = self._dispatch(method, path, query, h.headers, raw)
            except ApiError as exc:
                resp = exc.response()
            except V.ValidationFailed as exc:
                resp = Response.json(422, {C.ERR_DETAIL: exc.errors})
            except Exception:  # noqa: BLE001 - a bug answers 500, the server lives on
                resp = Response.json(500, {C.ERR_DETAIL: "Internal server error"})
            hook = self.on_response
            if hook is not None:
                hook(method, path, resp.status)
            if drop is not None:
                state.count("dropped")
                h._drop()
                return
            state.count_status(resp.status)
            h._send(resp)
        except (ConnectionError, socket.timeout):
            h.close_connection = True

    def _send_fail(self, h: _Handler, fault: dict[str, Any]) -> None:
        status = fault["status"]
        detail = "Rate limit exceeded" if status == 429 else http.HTTPStatus(status).phrase
        headers = {}
        if fault["retry_after"] is not None:
            headers[C.HDR_RETRY_AFTER] = str(max(0, math.ceil(fault["retry_after"])))
        self._state.count_status(status)
        h._send(Response.json(status, {C.ERR_DETAIL: detail}, headers))

    def _send_garbage(self, h: _Handler, fault: dict[str, Any]) -> None:
        kind, status = fault["kind"], fault["status"]
        self._state.count_status(status)
        if kind == "html":
            body = b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
            h._send(Response(status, body), "text/html; charset=utf-8")
        elif kind == "not_json":
            h._send(Response(status, b"this is not JSON {"), "application/json")
        elif kind == "truncated":
            h._send(Response(status, _GARBAGE_SAMPLE[: len(_GARBAGE_SAMPLE) // 2]), "application/json")
        elif kind == "wrong_content_type":
            h._send(Response(status, _GARBAGE_SAMPLE), "text/plain; charset=utf-8")
        elif kind == "empty_200":
            h._send(Response(200, b""), None)
        else:  # short_body: promise the whole document, send half, hang up
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(_GARBAGE_SAMPLE)))
            h.end_headers()
            h.wfile.write(_GARBAGE_SAMPLE[: len(_GARBAGE_SAMPLE) // 2])
            h._drop()

    def _dispatch(self, method: str, path: str, query: dict[str, list[str]], headers: Any, raw: bytes) -> Response:
        state = self._state
        if path != C.API_PREFIX and not path.startswith(C.API_PREFIX + "/"):
            raise ApiError(404, "Not Found")
        rel = path[len(C.API_PREFIX):].rstrip("/") or "/"
        for regex, methods in ROUTES:
            match = regex.fullmatch(rel)
            if match:
                break
        else:
            raise ApiError(404, "Not Found")
        op = methods.get(method)
        if op is None:
            raise ApiError(405, "Method Not Allowed", headers={"Allow": ", ".join(sorted(methods))})

        key_rec = state.authenticate(headers.get(C.HDR_API_KEY))
        state.rate_check(key_rec["key"])
        if op in WRITE_OPS:
            state.count("writes_received")
        state.check_access(key_rec, C.OPERATION_SCOPES[op])
        iid = key_rec["_inst"]
        params = {name: V.path_int(value, name) for name, value in match.groupdict().items()}

        if op not in WRITE_OPS:
            if op in ("list_students", "list_fee_plans", "list_payments"):
                return getattr(state, op)(iid, query)
            return getattr(state, op)(iid, *params.values())

        idem_key = (headers.get(C.HDR_IDEMPOTENCY_KEY) or "").strip() or None
        if op == "record_payment" and idem_key is None:
            raise ApiError(400, C.DETAIL_MISSING_IDEMPOTENCY_KEY)
        body = _parse_json(raw)
        if body is None and op in ("record_payment", "create_plan"):
            raise ApiError(422, [V.error(["body"], "missing", "Field required", None)])
        fingerprint = json.dumps({"method": method, "path": rel, "body": body}, sort_keys=True,
                                 separators=(",", ":"), ensure_ascii=False)
        if op == "record_payment":
            return state.record_payment(iid, params["plan_id"], body, idem_key, fingerprint)
        if op == "create_plan":
            if self.faults.ignore_idempotency_on_create_plan:
                idem_key = None
            return state.create_plan(iid, body, idem_key, fingerprint)
        if op == "cancel_plan":
            return state.cancel_plan(iid, params["plan_id"], body, idem_key, fingerprint)
        return state.waive_installment(iid, params["plan_id"], params["installment_id"], body, idem_key,
                                       fingerprint)

    def _admin(self, method: str, path: str, raw: bytes, client: str) -> Response:
        if not _is_loopback(client):
            return Response.json(403, {C.ERR_DETAIL: "Sandbox admin endpoints are loopback-only"})
        name = path[len(ADMIN_PREFIX):].rstrip("/")
        routes = {("GET", "/state"), ("GET", "/faults"), ("POST", "/faults"), ("POST", "/revoke"),
                  ("POST", "/ignore-idempotency-on-create-plan"), ("POST", "/clear-faults")}
        if (method, name) not in routes:
            known = {n for _, n in routes}
            return Response.json(405 if name in known else 404,
                                 {C.ERR_DETAIL: "Method Not Allowed" if name in known else "Not Found"})
        if method == "GET":
            if name == "/state":
                return Response.json(200, {"stats": self.stats(), "payments": self.payments(),
                                           "plans": self.plans()})
            return Response.json(200, {"faults": self.faults.pending(),
                                       "ignore_idempotency_on_create_plan":
                                           self.faults.ignore_idempotency_on_create_plan})
        try:
            body = _parse_json(raw)
        except ApiError as exc:
            return exc.response()
        body = {} if body is None else body
        if not isinstance(body, dict):
            return Response.json(400, {C.ERR_DETAIL: "Body must be a JSON object"})
        if name == "/faults":
            try:
                self.faults.arm(body)
            except ValueError as exc:
                return Response.json(400, {C.ERR_DETAIL: str(exc)})
        elif name == "/revoke":
            if not isinstance(body.get("key"), str):
                return Response.json(400, {C.ERR_DETAIL: "'key' (string) is required"})
            if not self._state.revoke_key(body["key"]):
                return Response.json(404, {C.ERR_DETAIL: "Unknown API key"})
        elif name == "/ignore-idempotency-on-create-plan":
            if not isinstance(body.get("value"), bool):
                return Response.json(400, {C.ERR_DETAIL: "'value' (boolean) is required"})
            self.faults.ignore_idempotency_on_create_plan = body["value"]
        else:
            self.faults.clear()
        return Response.json(200, {"ok": True})


def serve_forever(seed_path: str, host: str, port: int, rate_limit_per_minute: int | None) -> None:
    """Serve the sandbox until SIGINT/SIGTERM; prints one line (base URL, key names) to stderr."""
    sandbox = LmsSandbox(load_seed(seed_path), host=host, port=port, rate_limit_per_minute=rate_limit_per_minute)
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    sandbox.start()
    try:
        names = ", ".join(sandbox.key_names()) or "none"
        print(f"LMS sandbox serving {sandbox.base_url} (API keys: {names}; a key's value is in the seed, "
              "institutes[].api_keys[].key, and goes in FEESYNC_LMS__API_KEY)", file=sys.stderr, flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        sandbox.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sync.sandbox.lms", description="Run the Zenslearn LMS sandbox.")
    parser.add_argument("--seed", required=True, help="seed JSON file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--rate-limit", type=int, default=None, help="requests per minute per key")
    args = parser.parse_args(argv)
    serve_forever(args.seed, args.host, args.port, args.rate_limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
