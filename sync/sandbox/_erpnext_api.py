"""The ERPNext fake's REST surface: site check, rate limit, auth, routing and the endpoints.

Independent of the socket layer: `Api.handle(Request) -> Response`. The handler in
`erpnext.py` adds faults, statistics and the wire format.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from . import _erpnext_errors as errors
from . import _erpnext_rules as rules
from ._erpnext_errors import FrappeError
from ._erpnext_query import (
    ListQuery,
    Resolver,
    cint,
    load_json_param,
    not_implemented,
    parse_fields,
    parse_filters,
    parse_order_by,
    project,
    select,
)
from ._erpnext_schema import DocTypeMeta
from ._erpnext_store import Store

VERSIONS = {
    "frappe": {
        "title": "Frappe Framework",
        "description": "Full stack web framework with Python, Javascript, MariaDB, Redis, Node",
        "branch": "version-15",
        "version": "15.72.4",
    },
    "erpnext": {
        "title": "ERPNext",
        "description": "ERP made simple",
        "branch": "version-15",
        "version": "15.71.1",
    },
}
GUEST_METHODS = frozenset({"ping", "frappe.ping"})
_COOKIES = (
    "sid=Guest; Max-Age=612000; HttpOnly; Path=/; SameSite=Lax",
    "system_user=no; Path=/; SameSite=Lax",
    "full_name=Guest; Path=/; SameSite=Lax",
    "user_id=Guest; Path=/; SameSite=Lax",
    "user_image=; Path=/; SameSite=Lax",
)


@dataclass
class Request:
    method: str
    path: str  # percent-decoded
    query: dict[str, str]
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class User:
    name: str
    roles: frozenset[str]


def json_response(status: int, payload: Any) -> Response:
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    return Response(status, body, headers=[("Set-Cookie", c) for c in _COOKIES])


def html_response(status: int, html: str) -> Response:
    return Response(status, html.encode(), "text/html; charset=utf-8")


def _sbool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "")
    return bool(value)


def route_kind(method: str, path: str) -> str:
    """The stats bucket of a request: list, get, insert, update, delete, method, count, other."""
    parts = _split(path)
    if parts is None:
        return "other"
    family, rest = parts
    if family == "method":
        return "method"
    if family == "count":
        return "count"
    if not rest or rest == [""]:
        return "other"
    has_name = len(rest) > 1
    return {
        ("GET", False): "list",
        ("GET", True): "get",
        ("POST", False): "insert",
        ("PUT", True): "update",
        ("PATCH", True): "update",
        ("DELETE", True): "delete",
    }.get((method, has_name), "other")


def _split(path: str) -> tuple[str, list[str]] | None:
    for prefix, family in (
        ("/api/v1/resource/", "resource"),
        ("/api/resource/", "resource"),
        ("/api/v1/method/", "method"),
        ("/api/method/", "method"),
        ("/api/v2/document/", "document"),
        ("/api/v2/method/", "method"),
        ("/api/v2/doctype/", "doctype"),
    ):
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            if family == "method":
                return family, [rest]
            doctype, _, name = rest.partition("/")
            if family == "doctype":
                return ("count" if name == "count" else "meta"), [doctype, name]
            return family, [doctype, name] if name else [doctype]
    return None


class RateLimiter:
    """A fixed window counting requests (`rate_limit: {"limit": N, "window": seconds}`)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], datetime]) -> None:
        self.limit, self.window, self.clock = int(limit), float(window), clock
        self._lock = threading.Lock()
        self._start = -1.0
        self._count = 0

    def check(self) -> tuple[bool, list[tuple[str, str]]]:
        now = self.clock().timestamp()
        with self._lock:
            start = math.floor(now / self.window) * self.window
            if start != self._start:
                self._start, self._count = start, 0
            self._count += 1
            allowed = self._count <= self.limit
            reset = max(1, math.ceil(start + self.window - now))
            remaining = max(0, self.limit - self._count)
        headers = [
            ("X-RateLimit-Limit", str(self.limit)),
            ("X-RateLimit-Remaining", str(remaining)),
            ("X-RateLimit-Reset", str(reset)),
        ]
        if not allowed:
            headers.append(("Retry-After", str(reset)))
        return allowed, headers


class Api:
    def __init__(
        self,
        store: Store,
        data: dict,
        clock: Callable[[], datetime],
        list_hooks: Callable[[], list[Callable[[str, list], Any]]],
    ) -> None:
        self.store = store
        self.allow_traceback = bool(data.get("allow_error_traceback", True))
        self.site_host = data.get("site_host")
        self.versions = data.get("versions") or VERSIONS
        self.list_hooks = list_hooks
        self.users: dict[str, tuple[str, User]] = {}
        for item in data.get("users") or []:
            user = User(item["user"], frozenset(item.get("roles") or ()))
            self.users[str(item["api_key"])] = (str(item["api_secret"]), user)
        limit = data.get("rate_limit")
        self.rate_limiter = RateLimiter(limit["limit"], limit["window"], clock) if limit else None

    # --- entry ------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        host = (request.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if self.site_host and host not in (
            str(self.site_host).lower(),
            "127.0.0.1",
            "localhost",
            "::1",
        ):
            return html_response(
                404,
                "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n"
                f"<h1>Not Found</h1>\n<p>{host} does not exist</p>\n",
            )
        extra: list[tuple[str, str]] = []
        if self.rate_limiter is not None:
            allowed, extra = self.rate_limiter.check()
            if not allowed:
                return Response(429, b"Too Many Requests", "text/plain; charset=utf-8", extra)
        v2 = request.path.startswith("/api/v2/")
        try:
            user = self.authenticate(request.headers.get("Authorization"))
            status, payload = self.dispatch(request, user)
            response = json_response(status, payload)
        except FrappeError as exc:
            response = self.error_response(exc, v2=v2)
        response.headers.extend(extra)
        return response

    def error_response(self, exc: FrappeError, *, v2: bool) -> Response:
        if v2:
            return json_response(exc.status, exc.v2_body(allow_traceback=self.allow_traceback))
        return json_response(exc.status, exc.v1_body(allow_traceback=self.allow_traceback))

    def authenticate(self, header: str | None) -> User | None:
        if header is None:
            return None
        parts = header.split(" ")
        if len(parts) != 2 or parts[0].lower() not in ("token", "basic"):
            raise errors.authentication_error("malformed")
        kind, token = parts[0].lower(), parts[1]
        if kind == "basic":
            try:
                token = base64.b64decode(token, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise errors.authentication_error("malformed") from exc
        key, sep, secret = token.partition(":")
        if not sep or ":" in secret:
            raise errors.authentication_error("malformed")
        entry = self.users.get(key)
        if entry is None:
            raise errors.authentication_error("unknown_key")
        if not hmac.compare_digest(entry[0].encode(), secret.encode()):
            raise errors.authentication_error("bad_secret")
        return entry[1]

    # --- permissions ------------------------------------------------------------------------
    @staticmethod
    def _allowed(user: User | None, roles: frozenset[str]) -> bool:
        if user is None:
            return False
        return user.name == "Administrator" or "All" in roles or bool(user.roles & roles)

    def _perm_meta(self, meta: DocTypeMeta, parent: str | None) -> DocTypeMeta:
        if not meta.istable:
            return meta
        parent_meta = self.store.registry.get(parent or "")
        if parent_meta is None or parent_meta.table_for_child(meta.name) is None:
            raise errors.FrappeError(
                "PermissionError",
                f"Please specify a valid parent DocType for <strong>{meta.name}</strong>",
                status=403,
                where="list",
            )
        return parent_meta

    def require_read(
        self, user: User | None, meta: DocTypeMeta, *, listing: bool, parent: str | None = None
    ) -> None:
        target = self._perm_meta(meta, parent)
        if not self._allowed(user, target.read_roles):
            name = user.name if user else "Guest"
            raise (
                errors.permission_list(name, meta.name)
                if listing
                else errors.permission_doc(name, meta.name)
            )

    def require_write(self, user: User | None, meta: DocTypeMeta) -> User:
        """The user, if one of its roles may write `meta` (Administrator always may)."""
        if user is None:
            raise errors.permission_doc("Guest", meta.name, where="insert")
        if meta.istable or not self._allowed(user, meta.write_roles):
            raise errors.not_permitted(f"Insufficient Permission for {meta.name}")
        return user

    # --- routing ----------------------------------------------------------------------------
    def dispatch(self, request: Request, user: User | None) -> tuple[int, Any]:
        parts = _split(request.path)
        if parts is None:
            raise FrappeError(
                "NotFound", f"{request.path} is not an API route", status=404, traceback=False
            )
        family, rest = parts
        v2 = request.path.startswith("/api/v2/")
        if family == "method":
            value = self.call_method(rest[0], request, user)
            return 200, ({"data": value} if v2 else ({} if value is None else {"message": value}))
        if family == "count":
            meta = self.store.meta(rest[0])
            self.require_read(user, meta, listing=True, parent=request.query.get("parent"))
            return 200, {"data": self.count(meta, request.query)}
        if family == "meta":
            raise not_implemented(f"/api/v2/doctype/{rest[0]}/{rest[1]}")
        doctype, name = rest[0], (rest[1] if len(rest) > 1 else None)
        method = request.method
        if v2 and method != "GET":
            raise not_implemented("writes through API v2 (use /api/resource)")
        if name is None and method == "GET":
            return 200, {"data": self.list_endpoint(doctype, request.query, user, v2=v2)}
        if name is None and method == "POST":
            meta = self.store.parent_meta(doctype)
            user = self.require_write(user, meta)
            data = self.body_data(request)
            doc = self.store.insert(
                doctype,
                data,
                docstatus=cint(data.get("docstatus")),
                user=user.name,
                http=True,
            )
            return 200, {
                "data": self.store.as_dict(doctype, doc, no_nulls=True, marker="__unsaved")
            }
        if name is not None and method == "GET":
            meta = self.store.parent_meta(doctype)
            with self.store.lock:
                doc = self.store.find(doctype, name)
                self.require_read(user, meta, listing=False)
                return 200, {"data": self.store.as_dict(doctype, doc, no_nulls=True)}
        if name is not None and method == "PUT":
            meta = self.store.parent_meta(doctype)
            self.store.find(doctype, name)
            user = self.require_write(user, meta)
            with self.store.lock:
                doc = self.store.http_update(doctype, name, self.body_data(request), user=user.name)
                return 200, {"data": self.store.as_dict(doctype, doc, no_nulls=True)}
        if name is not None and method == "DELETE":
            meta = self.store.parent_meta(doctype)
            self.store.find(doctype, name)
            user = self.require_write(user, meta)
            self.store.delete(doctype, name, user=user.name)
            return 202, {"data": "ok"}
        raise FrappeError(
            "MethodNotAllowed",
            f"{method} is not allowed on {request.path}",
            status=405,
            traceback=False,
        )

    def body_data(self, request: Request) -> dict:
        """`get_request_form_data`: a form field `data` (JSON) or the JSON body."""
        if not request.body.strip():
            return {}
        ctype = (request.headers.get("Content-Type") or "").lower()
        if "application/x-www-form-urlencoded" in ctype or "multipart/form-data" in ctype:
            form = dict(parse_qsl(request.body.decode(errors="replace"), keep_blank_values=True))
            data = load_json_param(form.get("data") or "{}")
        else:
            data = load_json_param(request.body.decode(errors="replace"))
        if not isinstance(data, dict):
            raise errors.validation("Request body must be a JSON object", where="insert")
        return data

    def method_args(self, request: Request) -> dict[str, Any]:
        args: dict[str, Any] = dict(request.query)
        if request.body.strip():
            ctype = (request.headers.get("Content-Type") or "").lower()
            if "json" in ctype or request.body.lstrip()[:1] in (b"{", b"["):
                payload = load_json_param(request.body.decode(errors="replace"))
                if isinstance(payload, dict):
                    args.update(payload)
            else:
                args.update(
                    parse_qsl(request.body.decode(errors="replace"), keep_blank_values=True)
                )
        args.pop("cmd", None)
        return args

    # --- lists ------------------------------------------------------------------------------
    def list_endpoint(
        self, doctype: str, params: Mapping[str, Any], user: User | None, *, v2: bool
    ) -> list:
        meta = self.store.meta(doctype)
        fields_raw = load_json_param(params.get("fields")) if params.get("fields") else None
        self.require_read(
            user, meta, listing=True, parent=params.get("parent") or params.get("parent_doctype")
        )
        if v2:
            page_length = cint(params.get("limit"), 20) if "limit" in params else 20
        elif "limit_page_length" in params:
            page_length = cint(params.get("limit_page_length"))
        else:
            page_length = cint(params.get("limit")) if params.get("limit") else 20
        return self.run_list(
            meta,
            params,
            fields_raw,
            page_length=page_length,
            start=cint(params.get("limit_start")),
            comma_fallback=False,
        )

    def run_list(
        self,
        meta: DocTypeMeta,
        params: Mapping[str, Any],
        fields_raw: Any,
        *,
        page_length: int,
        start: int,
        comma_fallback: bool,
    ) -> list:
        parent = params.get("parent") or params.get("parent_doctype")
        resolver = Resolver(self.store.registry, meta)
        fields = parse_fields(resolver, fields_raw, comma_fallback=comma_fallback)
        filters = parse_filters(resolver, params.get("filters"))
        or_filters = parse_filters(resolver, params.get("or_filters"))
        joined = {c.table for c in [*fields, *(f.col for f in [*filters, *or_filters])] if c.table}
        order = parse_order_by(resolver, params.get("order_by"), joined)
        query = ListQuery(
            fields,
            filters,
            or_filters,
            order,
            start=max(0, start),
            page_length=max(0, page_length),
            as_dict=_sbool(params.get("as_dict", True)),
            distinct=_sbool(params.get("distinct", False)),
        )
        with self.store.lock:
            rows = project(select(resolver, self._source(meta, parent), query), query)
        for hook in self.list_hooks():
            hook(meta.name, rows)
        return rows

    def _source(self, meta: DocTypeMeta, parent: str | None) -> list[dict]:
        if not meta.istable:
            return list(self.store.docs[meta.name].values())
        parent_meta = self._perm_meta(meta, parent)
        tables = [t for t, child in parent_meta.tables.items() if child == meta.name]
        return [
            row
            for doc in self.store.docs[parent_meta.name].values()
            for t in tables
            for row in doc.get(t) or []
        ]

    def count(self, meta: DocTypeMeta, params: Mapping[str, Any]) -> int:
        resolver = Resolver(self.store.registry, meta)
        query = ListQuery(
            [],
            parse_filters(resolver, params.get("filters")),
            parse_filters(resolver, params.get("or_filters")),
            None,
            page_length=0,
        )
        with self.store.lock:
            return len(select(resolver, self._source(meta, params.get("parent")), query))

    # --- RPC --------------------------------------------------------------------------------
    def call_method(self, cmd: str, request: Request, user: User | None) -> Any:
        spec = _METHODS.get(cmd)
        if spec is None:
            raise errors.method_not_found(cmd, _missing_reason(cmd))
        if user is None and cmd not in GUEST_METHODS:
            raise errors.guest_method(cmd)
        fn, http_methods = spec
        if http_methods and request.method not in http_methods:
            raise errors.not_permitted()
        args = self.method_args(request)
        missing = [a for a in _REQUIRED.get(cmd, ()) if args.get(a) in (None, "")]
        if missing:
            raise FrappeError(
                "TypeError",
                f"{cmd.rsplit('.', 1)[-1]}() missing 1 required positional argument: "
                f"'{missing[0]}'",
                status=500,
                module="builtins",
            )
        return fn(self, args, user)

    def m_get_list(self, args: dict, user: User | None) -> list:
        meta = self.store.meta(args["doctype"])
        self.require_read(user, meta, listing=True, parent=args.get("parent"))
        if "limit_page_length" in args:
            page_length = cint(args["limit_page_length"])
        else:
            page_length = cint(args["limit"]) if args.get("limit") else 20
        return self.run_list(
            meta,
            args,
            args.get("fields"),
            page_length=page_length,
            start=cint(args.get("limit_start")),
            comma_fallback=True,
        )

    def m_get_count(self, args: dict, user: User | None) -> int:
        meta = self.store.meta(args["doctype"])
        self.require_read(user, meta, listing=True, parent=args.get("parent"))
        return self.count(meta, args)

    def m_get(self, args: dict, user: User | None) -> dict:
        meta = self.store.parent_meta(args["doctype"])
        with self.store.lock:
            doc = self.store.find(meta.name, args["name"])
            self.require_read(user, meta, listing=False)
            return self.store.as_dict(meta.name, doc, no_nulls=False)

    def m_insert(self, args: dict, user: User | None) -> dict:
        doc = load_json_param(args["doc"])
        meta = self.store.parent_meta(doc.get("doctype", ""))
        user = self.require_write(user, meta)
        saved = self.store.insert(
            meta.name, doc, docstatus=cint(doc.get("docstatus")), user=user.name, http=True
        )
        return self.store.as_dict(meta.name, saved, no_nulls=False)

    def m_submit(self, args: dict, user: User | None) -> dict:
        doc = load_json_param(args["doc"])
        meta = self.store.parent_meta(doc.get("doctype", ""))
        user = self.require_write(user, meta)
        with self.store.lock:
            if doc.get("name") in self.store.docs[meta.name]:
                saved = self.store.http_update(
                    meta.name, doc["name"], {**doc, "docstatus": 1}, user=user.name
                )
            else:
                saved = self.store.insert(meta.name, doc, docstatus=1, user=user.name, http=True)
            return self.store.as_dict(meta.name, saved, no_nulls=False, marker="__unsaved")

    def m_cancel(self, args: dict, user: User | None) -> dict:
        meta = self.store.parent_meta(args["doctype"])
        self.store.find(meta.name, args["name"])
        user = self.require_write(user, meta)
        with self.store.lock:
            doc = self.store.transition(meta.name, args["name"], 2, user=user.name, http=True)
            return self.store.as_dict(meta.name, doc, no_nulls=False)

    def m_delete(self, args: dict, user: User | None) -> None:
        meta = self.store.parent_meta(args["doctype"])
        self.store.find(meta.name, args["name"])
        user = self.require_write(user, meta)
        self.store.delete(meta.name, args["name"], user=user.name)

    def m_get_payment_entry(self, args: dict, user: User | None) -> dict:
        self.require_read(user, self.store.meta(rules.SI), listing=False)
        with self.store.lock:
            doc = rules.payment_entry_for_invoice(self.store, args["dt"], args["dn"])
        out = self.store.as_dict(rules.PE, doc, no_nulls=True)
        now = self.store.stamp()
        for table, child in self.store.registry[rules.PE].tables.items():
            out[table] = [
                {
                    "modified": now,
                    "modified_by": self.store.admin_user,
                    "docstatus": 0,
                    "idx": idx,
                    **{k: v for k, v in row.items() if k not in ("idx", "doctype")},
                    "parentfield": table,
                    "parenttype": rules.PE,
                    "doctype": child,
                    "__islocal": 1,
                }
                for idx, row in enumerate(out[table], start=1)
            ]
        return out | {"__islocal": 1, "__unsaved": 1}


def _missing_reason(cmd: str) -> str:
    if "." not in cmd:
        return f"'{cmd}'"
    module, _, attr = cmd.rpartition(".")
    known = {m.rpartition(".")[0] for m in _METHODS} | {"frappe", "erpnext"}
    known |= {".".join(k.split(".")[:i]) for k in list(known) for i in range(1, k.count(".") + 1)}
    if module in known:
        return f"module '{module}' has no attribute '{attr}'"
    parts = module.split(".")
    missing = next(
        (".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) not in known),
        module,
    )
    return f"No module named '{missing}'"


_REQUIRED = {
    "frappe.client.get_list": ("doctype",),
    "frappe.client.get_count": ("doctype",),
    "frappe.client.get": ("doctype", "name"),
    "frappe.client.insert": ("doc",),
    "frappe.client.submit": ("doc",),
    "frappe.client.cancel": ("doctype", "name"),
    "frappe.client.delete": ("doctype", "name"),
    "erpnext.accounts.doctype.payment_entry.payment_entry.get_payment_entry": ("dt", "dn"),
}
_METHODS: dict[str, tuple[Callable[[Api, dict, User | None], Any], tuple[str, ...] | None]] = {
    "ping": (lambda api, args, user: "pong", None),
    "frappe.ping": (lambda api, args, user: "pong", None),
    "frappe.auth.get_logged_user": (lambda api, args, user: user.name if user else "Guest", None),
    "frappe.utils.change_log.get_versions": (lambda api, args, user: api.versions, None),
    "frappe.client.get_list": (Api.m_get_list, None),
    "frappe.client.get_count": (Api.m_get_count, None),
    "frappe.client.get": (Api.m_get, None),
    "frappe.client.insert": (Api.m_insert, ("POST", "PUT")),
    "frappe.client.submit": (Api.m_submit, ("POST", "PUT")),
    "frappe.client.cancel": (Api.m_cancel, ("POST", "PUT")),
    "frappe.client.delete": (Api.m_delete, ("POST", "DELETE")),
    "erpnext.accounts.doctype.payment_entry.payment_entry.get_payment_entry": (
        Api.m_get_payment_entry,
        None,
    ),
}
