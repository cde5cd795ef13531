"""Frappe-shaped errors for the ERPNext fake: one exception class and the v1/v2 body renderers.

Shapes copied from the real captures (`err_*`, `notb_*`, `v2_err_*`):

* v1, tracebacks on: ``exception``, ``exc_type``, [``_exc_source``], ``exc`` (a JSON string of a
  one-item list), ``_server_messages`` (a JSON string of a list of JSON strings),
  [``_error_message``].
* v1, tracebacks off: ``exc_type``, ``_server_messages``, [``_error_message``].
* 404 DoesNotExistError never carries a traceback; 401 never carries ``_server_messages``.
* v2: ``{"errors": [{"type", ["exception"], "message", "title", "indicator"}]}``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

_ENTRY = (
    ("apps/frappe/frappe/app.py", 115, "application", "response = frappe.api.handle(request)"),
    ("apps/frappe/frappe/api/__init__.py", 49, "handle", "data = endpoint(**arguments)"),
)
_THROW = (
    ("apps/frappe/frappe/__init__.py", 609, "throw", "msgprint("),
    ("apps/frappe/frappe/__init__.py", 574, "msgprint", "_raise_exception()"),
    ("apps/frappe/frappe/__init__.py", 525, "_raise_exception", "raise exc"),
)
_PYMYSQL = (
    ("apps/frappe/frappe/database/database.py", 230, "sql", "self._cursor.execute(query, values)"),
    (
        "env/lib/python3.11/site-packages/pymysql/cursors.py",
        153,
        "execute",
        "result = self._query(query)",
    ),
    (
        "env/lib/python3.11/site-packages/pymysql/err.py",
        150,
        "raise_mysql_exception",
        "raise errorclass(errno, errval)",
    ),
)
# where the real server raised, per request kind (the first frames after the WSGI entry)
_WHERE = {
    "list": (
        (
            "apps/frappe/frappe/api/v1.py",
            27,
            "document_list",
            "return frappe.call(frappe.client.get_list, doctype, **frappe.form_dict)",
        ),
        ("apps/frappe/frappe/client.py", 67, "get_list", "return frappe.get_list(**args)"),
        (
            "apps/frappe/frappe/model/db_query.py",
            114,
            "execute",
            "self.check_read_permission(self.doctype, parent_doctype=parent_doctype)",
        ),
    ),
    "get": (("apps/frappe/frappe/api/v1.py", 78, "read_doc", "raise frappe.PermissionError"),),
    "insert": (
        (
            "apps/frappe/frappe/api/v1.py",
            44,
            "create_doc",
            "return frappe.new_doc(doctype, **data).insert()",
        ),
        ("apps/frappe/frappe/model/document.py", 309, "insert", "self.run_before_save_methods()"),
    ),
    "update": (
        ("apps/frappe/frappe/api/v1.py", 60, "update_doc", "doc.save()"),
        ("apps/frappe/frappe/model/document.py", 342, "save", "return self._save(*args, **kwargs)"),
    ),
    "delete": (
        (
            "apps/frappe/frappe/api/v1.py",
            87,
            "delete_doc",
            "frappe.delete_doc(doctype, name, ignore_missing=False)",
        ),
        (
            "apps/frappe/frappe/model/delete_doc.py",
            120,
            "delete_doc",
            "check_permission_and_not_submitted(doc)",
        ),
    ),
    "method": (
        ("apps/frappe/frappe/api/v1.py", 36, "handle_rpc_call", "return frappe.handler.handle()"),
        ("apps/frappe/frappe/handler.py", 49, "handle", "data = execute_cmd(cmd)"),
    ),
}
_AUTH_FRAMES = {
    "unknown_key": (
        ("apps/frappe/frappe/app.py", 102, "application", "validate_auth()"),
        (
            "apps/frappe/frappe/auth.py",
            618,
            "validate_auth",
            "validate_auth_via_api_keys(authorization_header)",
        ),
        (
            "apps/frappe/frappe/auth.py",
            684,
            "validate_auth_via_api_keys",
            "validate_api_key_secret(api_key, api_secret, authorization_source)",
        ),
        (
            "apps/frappe/frappe/auth.py",
            701,
            "validate_api_key_secret",
            "raise frappe.AuthenticationError",
        ),
    ),
    "bad_secret": (
        ("apps/frappe/frappe/app.py", 102, "application", "validate_auth()"),
        (
            "apps/frappe/frappe/auth.py",
            618,
            "validate_auth",
            "validate_auth_via_api_keys(authorization_header)",
        ),
        (
            "apps/frappe/frappe/auth.py",
            684,
            "validate_auth_via_api_keys",
            "validate_api_key_secret(api_key, api_secret, authorization_source)",
        ),
        (
            "apps/frappe/frappe/auth.py",
            713,
            "validate_api_key_secret",
            "raise frappe.AuthenticationError",
        ),
    ),
    "malformed": (
        ("apps/frappe/frappe/app.py", 102, "application", "validate_auth()"),
        ("apps/frappe/frappe/auth.py", 625, "validate_auth", "raise frappe.AuthenticationError"),
    ),
}
_exc_counter = itertools.count(1)


class FrappeError(Exception):
    """An error the fake answers the way Frappe would; also raised by the test helpers."""

    def __init__(
        self,
        exc_type: str,
        message: str | None = None,
        *,
        status: int = 417,
        module: str = "frappe.exceptions",
        title: str = "Message",
        msg_style: str = "throw",  # throw | plain | duplicate | none
        bare_exception: bool = False,  # `exception` without ": message" (PermissionError, auth)
        traceback: bool = True,  # False: never a traceback (DoesNotExistError)
        where: str = "method",
        frames: tuple[tuple[str, int, str, str], ...] | None = None,
        exc_source: str | None = None,
        error_message: str | None = None,
    ) -> None:
        super().__init__(message or exc_type)
        self.exc_type = exc_type
        self.message = message
        self.status = status
        self.module = module
        self.title = title
        self.msg_style = msg_style if message is not None else "none"
        self.bare_exception = bare_exception
        self.traceback = traceback
        self.where = where
        self.frames = frames
        self.exc_source = exc_source
        self.error_message = error_message

    # --- pieces ---------------------------------------------------------------------------
    @property
    def exception_line(self) -> str:
        head = self.exc_type if self.module == "builtins" else f"{self.module}.{self.exc_type}"
        return head if self.bare_exception or not self.message else f"{head}: {self.message}"

    def traceback_text(self) -> str:
        frames = self.frames
        if frames is None:
            tail = _PYMYSQL if self.module == "pymysql.err" else _THROW
            frames = (*_ENTRY, *_WHERE.get(self.where, ()), *tail)
        lines = ["Traceback (most recent call last):"]
        for path, line, func, code in frames:
            lines.append(f'  File "{path}", line {line}, in {func}')
            lines.append(f"    {code}")
        return "\n".join(lines) + "\n" + self.exception_line + "\n"

    def message_dict(self) -> dict[str, Any] | None:
        if self.msg_style == "none":
            return None
        msg: dict[str, Any] = {"message": self.message, "title": self.title}
        if self.msg_style in ("throw", "duplicate"):
            msg["indicator"] = "red"
        if self.msg_style == "throw":
            msg["raise_exception"] = 1
            seed = f"{self.exc_type}:{self.message}:{next(_exc_counter)}".encode()
            msg["__frappe_exc_id"] = hashlib.sha224(seed).hexdigest()
        return msg

    # --- bodies -----------------------------------------------------------------------------
    def v1_body(self, *, allow_traceback: bool) -> dict[str, Any]:
        body: dict[str, Any] = {}
        with_tb = allow_traceback and self.traceback
        if with_tb:
            body["exception"] = self.exception_line
        body["exc_type"] = self.exc_type
        if with_tb:
            if self.exc_source:
                body["_exc_source"] = self.exc_source
            body["exc"] = json.dumps([self.traceback_text()])
        msg = self.message_dict()
        if msg is not None:
            body["_server_messages"] = json.dumps([json.dumps(msg)])
        if self.error_message:
            body["_error_message"] = self.error_message
        return body

    def v2_body(self, *, allow_traceback: bool) -> dict[str, Any]:
        err: dict[str, Any] = {"type": self.exc_type}
        if allow_traceback and self.traceback:
            err["exception"] = self.traceback_text()
        msg = self.message_dict()
        if msg is not None:
            err["message"] = msg["message"]
            err["title"] = msg["title"]
            if "indicator" in msg:
                err["indicator"] = msg["indicator"]
        return {"errors": [err]}


# --- the errors the fake raises (messages as the real server words them) ---------------------
def authentication_error(kind: str) -> FrappeError:
    return FrappeError(
        "AuthenticationError", status=401, bare_exception=True, frames=_AUTH_FRAMES[kind]
    )


def permission_list(user: str, doctype: str) -> FrappeError:
    return FrappeError(
        "PermissionError",
        f"User <strong>{user}</strong> does not have doctype access via role permission "
        f"for document <strong>{doctype}</strong>",
        status=403,
        msg_style="plain",
        bare_exception=True,
        where="list",
        error_message=f"No permission for {doctype}",
    )


def permission_doc(user: str, doctype: str, where: str = "get") -> FrappeError:
    return FrappeError(
        "PermissionError",
        f"User <strong>{user}</strong> does not have doctype access via role permission for "
        f"document <strong>{doctype}</strong><br>User <strong>{user}</strong> does not have "
        "access to this document",
        status=403,
        msg_style="plain",
        bare_exception=True,
        where=where,
    )


def not_permitted(message: str = "Not permitted", title: str = "Message") -> FrappeError:
    return FrappeError("PermissionError", message, status=403, title=title)


def guest_method(cmd: str) -> FrappeError:
    detail = f"Function <strong>{cmd}</strong> is not whitelisted."
    summary = "You are not permitted to access this resource."
    msg = f"<details><summary>{summary}</summary>{detail}</details>"
    return FrappeError("PermissionError", msg, status=403, title="Method Not Allowed")


def doc_not_found(doctype: str, name: str) -> FrappeError:
    return FrappeError(
        "DoesNotExistError", f"{doctype} {name} not found", status=404, traceback=False
    )


def doctype_not_found(doctype: str) -> FrappeError:
    return FrappeError(
        "DoesNotExistError", f"DocType {doctype} not found", status=404, traceback=False
    )


def field_not_permitted(fieldname: str) -> FrappeError:
    return FrappeError("DataError", f"Field not permitted in query: {fieldname}", where="list")


VALID_OPERATORS_TEXT = (
    "not like, between, not in, previous, ancestors of, <=, !=, fiscal year, next, "
    "not ancestors of, not descendants of, <, =, is, >=, descendants of, like, "
    "descendants of (inclusive), >, timespan, in"
)


def bad_operator() -> FrappeError:
    return FrappeError(
        "ValidationError", f"Operator must be one of {VALID_OPERATORS_TEXT}", where="list"
    )


def json_decode(exc: json.JSONDecodeError) -> FrappeError:
    frames = (
        *_ENTRY,
        *_WHERE["list"][:1],
        (
            "/usr/lib/python3.11/json/decoder.py",
            353,
            "raw_decode",
            "obj, end = self.scan_once(s, idx)",
        ),
    )
    return FrappeError(
        "JSONDecodeError",
        str(exc),
        status=500,
        module="json.decoder",
        frames=frames,
        msg_style="none",
    )


def unknown_order_column(column: str) -> FrappeError:
    return FrappeError(
        "OperationalError",
        f"(1054, \"Unknown column '{column}' in 'ORDER BY'\")",
        status=500,
        module="pymysql.err",
        where="list",
        msg_style="none",
    )


def illegal_sql(message: str = "Illegal SQL Query") -> FrappeError:
    return FrappeError("ValidationError", message, where="list")


def method_not_found(cmd: str, reason: str) -> FrappeError:
    return FrappeError("ValidationError", f"Failed to get method for command {cmd} with {reason}")


def validation(
    message: str,
    *,
    where: str = "insert",
    exc_type: str = "ValidationError",
    erpnext: bool = False,
    title: str = "Message",
    msgprint: bool = True,
) -> FrappeError:
    """A 417; `msgprint=False` for the errors Frappe raises bare (no `_server_messages`)."""
    return FrappeError(
        exc_type,
        message,
        where=where,
        title=title,
        msg_style="throw" if msgprint else "none",
        exc_source="erpnext (app)" if erpnext else None,
    )


def duplicate_entry(doctype: str, name: str) -> FrappeError:
    return FrappeError(
        "DuplicateEntryError",
        f"{doctype} <strong>{name}</strong> already exists",
        status=409,
        title="Duplicate Name",
        msg_style="duplicate",
        where="insert",
    )


def internal(exc: BaseException) -> FrappeError:
    """A bug in the fake itself, answered like an unexpected server exception."""
    return FrappeError(
        type(exc).__name__,
        str(exc) or None,
        status=500,
        module=type(exc).__module__,
        msg_style="none",
    )
