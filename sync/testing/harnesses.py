"""Conformance harnesses for the bundled connectors and their fakes (see `sync.testing.conformance`).

One class per connector: ERPNext (`ERPNextFake`), CSV drop folder (a temp folder), Odoo
(`OdooFake`, version 17, JSON-RPC), Zoho Books (`ZohoFake`), TallyPrime (`TallyFake`) and SQL
(a SQLite file, or a PostgreSQL table when given a URL). Each writes receipts for the students
of `standard_lms_seed()` (matched by e-mail, no invoice), drives its fake only through the
fake's own helpers and fault controls, and skips (with the reason) what its source cannot do.

`between_pages` needs to see a fake's answers: the HTTP fakes are subclassed with a hook around
their request handler (`_handle` / `_answer`), the ERPNext fake has a public `on_list` hook, and
the SQL harness listens to the connector's SQLAlchemy engine (pool check-in after a page query).
"""

from __future__ import annotations

import csv
import io
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from sync.testing.helpers import (
    CURRENCY,
    N_STUDENTS,
    base_time,
    changed_amount,
    receipt_amount,
    standard_lms_seed,
    student_email,
    student_name,
)


def _skip(reason: str) -> None:
    import pytest
    pytest.skip(reason)


class BaseHarness:
    """Bookkeeping shared by the harnesses: receipt numbering, amounts, change times, skips."""

    connector = ""

    def __init__(self) -> None:
        self._amounts: dict[str, Decimal] = {}
        self._seq = 0
        self._t0 = base_time()
        self._tick = 0

    # --- what every harness offers the same way -------------------------------------------------
    def lms_seed(self) -> dict[str, Any]:
        return standard_lms_seed()

    def mapping(self) -> dict[str, Any]:
        return {}

    def receipts(self) -> dict[str, Decimal]:
        return dict(self._amounts)

    def secrets(self) -> list[str]:
        _skip(f"{self.connector}: the source takes no credentials")
        return []

    def break_auth(self) -> None:
        _skip(f"{self.connector}: the source takes no credentials")

    def inject_errors(self, kind: str, count: int) -> None:
        _skip(f"{self.connector}: the source has no {kind.replace('_', ' ')}")

    def clear_errors(self) -> None:
        return None

    def between_pages(self, callback: Callable[[], None], connector: Any) -> None:
        _skip(f"{self.connector}: the source is not read in pages")

    # --- helpers ----------------------------------------------------------------------------------
    def _next(self) -> tuple[int, Decimal]:
        self._seq += 1
        return self._seq, receipt_amount(self._seq)

    def _stamp(self) -> datetime:
        """The next change time: a second apart, with a fraction (ERPs keep microseconds)."""
        self._tick += 1
        return self._t0 + timedelta(seconds=self._tick, microseconds=137 * self._tick)

    def _changed(self, doc_id: str) -> Decimal:
        new = changed_amount(self._amounts[doc_id])
        self._amounts[doc_id] = new
        return new


class _Once:
    """A callback that fires at most once (hooks see every answer; the kit wants one interruption)."""

    def __init__(self, callback: Callable[[], None] | None = None) -> None:
        self.callback = callback
        self._lock = threading.Lock()

    def arm(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self.callback = callback

    def fire(self) -> None:
        with self._lock:
            callback, self.callback = self.callback, None
        if callback is not None:
            callback()


# --- ERPNext -----------------------------------------------------------------------------------------
class ERPNextHarness(BaseHarness):
    """`ERPNextFake`: Payment Entries without references (matched by the Customer's e-mail)."""

    connector = "erpnext"
    KEY, SECRET = "erp_conf_key_3c4d5e6f", "erp_conf_secret_7a8b9c0d1e"

    def start(self, workdir: Path) -> None:
        from sync.sandbox.erpnext import ERPNextFake

        customers = [{"name": student_name(i), "customer_name": student_name(i), "email_id": student_email(i),
                      "customer_group": "Students"} for i in range(N_STUDENTS)]
        data = {"site_time_zone": "Asia/Karachi",
                "users": [{"user": "Administrator", "api_key": self.KEY, "api_secret": self.SECRET,
                           "roles": ["System Manager"]}],
                "custom_fields": {"Payment Entry": ["custom_zensbot_payment_id"],
                                  "Sales Invoice": ["custom_zensbot_fee_plan_id"]},
                "amend_naming": "Amend Counter",
                "documents": {"Payment Entry": [], "Sales Invoice": [], "Customer": customers}}
        self.fake = ERPNextFake(data).start()
        self._hook = _Once()
        self.fake.on_list(lambda doctype, rows: self._hook.fire() if doctype == "Payment Entry" and rows else None)

    def stop(self) -> None:
        self.fake.stop()

    def settings(self, *, page_size: int) -> dict[str, Any]:
        return {"url": self.fake.url, "api_key": self.KEY, "api_secret": self.SECRET,
                "site_time_zone": "Asia/Karachi", "page_size": page_size, "timeout_seconds": 5,
                "max_attempts": 2, "max_retry_seconds": 3}

    def secrets(self) -> list[str]:
        return [self.KEY, self.SECRET]

    def invalid_settings(self) -> tuple[dict[str, Any], str]:
        return {**self.settings(page_size=4), "url": "ftp://erp.example"}, "url"

    def add_receipts(self, n: int, *, same_change_time: bool = False) -> list[str]:
        tie = self._stamp() if same_change_time else None
        names = []
        for _ in range(n):
            seq, amount = self._next()
            name = f"ACC-PAY-2026-{seq:05d}"
            stamp = tie or self._stamp()
            i = seq % N_STUDENTS
            self.fake.insert("Payment Entry", {
                "name": name, "docstatus": 1, "payment_type": "Receive", "party_type": "Customer",
                "party": student_name(i), "party_name": student_name(i), "company": "Conformance Academy",
                "posting_date": stamp.date().isoformat(), "paid_from": "Debtors - CA", "paid_to": "Cash - CA",
                "paid_from_account_currency": CURRENCY, "paid_to_account_currency": CURRENCY,
                "paid_amount": float(amount), "received_amount": float(amount), "base_paid_amount": float(amount),
                "base_received_amount": float(amount), "total_allocated_amount": 0.0,
                "unallocated_amount": float(amount), "mode_of_payment": "Cash", "references": []}, modified=stamp)
            self._amounts[name] = amount
            names.append(name)
        return names

    def change(self, doc_id: str) -> None:
        new = float(self._changed(doc_id))
        self.fake.update("Payment Entry", doc_id, {"paid_amount": new, "received_amount": new,
                                                   "base_paid_amount": new, "base_received_amount": new,
                                                   "unallocated_amount": new})

    def cancel(self, doc_id: str) -> None:
        self.fake.cancel("Payment Entry", doc_id)
        self._amounts.pop(doc_id, None)

    def delete(self, doc_id: str) -> None:
        """ERPNext deletes only drafts and cancelled documents: cancel, then delete."""
        doc = self.fake.get("Payment Entry", doc_id)
        if doc is not None and doc.get("docstatus") == 1:
            self.fake.cancel("Payment Entry", doc_id)
        self.fake.delete("Payment Entry", doc_id)
        self._amounts.pop(doc_id, None)

    def break_auth(self) -> None:
        """Every request now gets Frappe's 401 AuthenticationError (as after the key was regenerated)."""
        self.fake.faults.fail(401, count=None)

    def inject_errors(self, kind: str, count: int) -> None:
        if kind == "server_error":     # nginx's 503 page in front of a restarting site
            self.fake.faults.fail(503, count=count, path_regex="Payment")
        elif kind == "rate_limit":     # Frappe's plain-text 429 with Retry-After
            self.fake.faults.fail(429, count=count, path_regex="Payment")
        else:
            super().inject_errors(kind, count)

    def clear_errors(self) -> None:
        hook = self._hook
        self.fake.faults.clear()       # also drops list hooks: put ours back
        self.fake.on_list(lambda doctype, rows: hook.fire() if doctype == "Payment Entry" and rows else None)

    def between_pages(self, callback: Callable[[], None], connector: Any) -> None:
        self._hook.arm(callback)


# --- CSV drop folder ---------------------------------------------------------------------------------
class FilesHarness(BaseHarness):
    """A drop folder: each `add_receipts` call is one new CSV file; changes and cancellations arrive as new files."""

    connector = "files"
    COLUMNS = ("document_id", "date", "student", "email", "amount", "currency", "method", "status")

    def start(self, workdir: Path) -> None:
        self.folder = workdir / "drop"
        self.folder.mkdir()
        self._files: dict[str, list[dict[str, str]]] = {}
        self._rows: dict[str, dict[str, str]] = {}

    def stop(self) -> None:
        return None

    def settings(self, *, page_size: int) -> dict[str, Any]:
        return {"folder": str(self.folder)}

    def secrets(self) -> list[str]:
        _skip("files: a drop folder takes no credentials")
        return []

    def invalid_settings(self) -> tuple[dict[str, Any], str]:
        return {"pattern": "*.csv"}, "folder"

    def _write(self, kind: str, rows: list[dict[str, str]]) -> None:
        name = f"{len(self._files) + 1:04d}-{kind}.csv"
        self._files[name] = rows
        self._flush(name)

    def _flush(self, name: str) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._files[name])
        (self.folder / name).write_text(out.getvalue(), encoding="utf-8")

    def add_receipts(self, n: int, *, same_change_time: bool = False) -> list[str]:
        """One file; its rows share the file's modification time (the connector's position), tie or not."""
        rows, ids = [], []
        for _ in range(n):
            seq, amount = self._next()
            doc = f"CSV-{seq:05d}"
            row = {"document_id": doc, "date": self._t0.date().isoformat(), "student": student_name(seq),
                   "email": student_email(seq), "amount": str(amount), "currency": CURRENCY, "method": "Cash",
                   "status": ""}
            self._rows[doc] = row
            self._amounts[doc] = amount
            rows.append(dict(row))
            ids.append(doc)
        self._write("receipts", rows)
        return ids

    def change(self, doc_id: str) -> None:
        """The ERP exports the edited receipt again, in a new file."""
        self._rows[doc_id]["amount"] = str(self._changed(doc_id))
        self._write("changed", [dict(self._rows[doc_id])])

    def cancel(self, doc_id: str) -> None:
        self._rows[doc_id]["status"] = "cancelled"
        self._amounts.pop(doc_id, None)
        self._write("cancelled", [dict(self._rows[doc_id])])

    def delete(self, doc_id: str) -> None:
        """The receipt disappears from every file (an operator edited the exports)."""
        for name, rows in self._files.items():
            if any(r["document_id"] == doc_id for r in rows):
                self._files[name] = [r for r in rows if r["document_id"] != doc_id]
                self._flush(name)
        self._amounts.pop(doc_id, None)

    def between_pages(self, callback: Callable[[], None], connector: Any) -> None:
        _skip("files: a CSV file is read whole; there are no pages")


# --- Odoo --------------------------------------------------------------------------------------------
class OdooHarness(BaseHarness):
    """`OdooFake` (version 17, JSON-RPC): inbound customer payments without invoices."""

    connector = "odoo"
    DB, LOGIN, KEY = "conformance", "sync-bot", "odoo_conf_key_6d7e8f9a0b"

    def start(self, workdir: Path) -> None:
        from sync.sandbox.odoo import OdooFake

        hook = self._hook = _Once()

        class HookedOdooFake(OdooFake):
            def _handle(self, method: str, target: str, headers: Any, body: bytes) -> Any:
                reply = super()._handle(method, target, headers, body)
                if b"account.payment" in (body or b"") + target.encode() and b"search_read" in (
                        body or b"") + target.encode():
                    hook.fire()
                return reply

        data = {"database": self.DB, "users": [{"login": self.LOGIN, "api_key": self.KEY, "uid": 6}],
                "partners": [{"id": 100 + i, "name": student_name(i), "email": student_email(i)}
                             for i in range(N_STUDENTS)]}
        self.fake = HookedOdooFake(data, version=17).start()
        self._ids: dict[str, int] = {}

    def stop(self) -> None:
        self.fake.stop()

    def settings(self, *, page_size: int) -> dict[str, Any]:
        return {"url": self.fake.url, "database": self.DB, "login": self.LOGIN, "api_key": self.KEY, "version": 17,
                "page_size": page_size, "timeout_seconds": 5, "max_attempts": 2, "max_retry_seconds": 3}

    def secrets(self) -> list[str]:
        return [self.KEY]

    def invalid_settings(self) -> tuple[dict[str, Any], str]:
        return {**self.settings(page_size=4), "version": 15}, "version"

    def add_receipts(self, n: int, *, same_change_time: bool = False) -> list[str]:
        """`write_date` naive UTC with microseconds; a tie is one second whose hidden fractions run backwards."""
        tie = self._stamp().replace(microsecond=0) if same_change_time else None
        ids = []
        for k in range(n):
            seq, amount = self._next()
            stamp = tie.replace(microsecond=999_999 - k) if tie else self._stamp()
            pid = self.fake.add_payment(100 + seq % N_STUDENTS, float(amount), journal="Cash", currency=CURRENCY,
                                        date=stamp.date().isoformat(),
                                        write_date=stamp.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f"))
            self._amounts[str(pid)] = amount
            ids.append(str(pid))
        return ids

    def change(self, doc_id: str) -> None:
        self.fake.write(int(doc_id), amount=float(self._changed(doc_id)))

    def cancel(self, doc_id: str) -> None:
        self.fake.cancel(int(doc_id))
        self._amounts.pop(doc_id, None)

    def delete(self, doc_id: str) -> None:
        self.fake.unlink(int(doc_id))
        self._amounts.pop(doc_id, None)

    def break_auth(self) -> None:
        self.fake.revoke(self.LOGIN)

    def inject_errors(self, kind: str, count: int) -> None:
        if kind == "server_error":     # the proxy's 503 while Odoo restarts
            self.fake.faults.fail(503, count=count, match="account.payment.search_read")
        elif kind == "rate_limit":     # Odoo.sh / Online throttling: 429
            self.fake.faults.fail(429, count=count, match="account.payment.search_read")
        else:
            super().inject_errors(kind, count)

    def clear_errors(self) -> None:
        self.fake.faults.clear()

    def between_pages(self, callback: Callable[[], None], connector: Any) -> None:
        self._hook.arm(callback)


# --- Zoho Books ----------------------------------------------------------------------------------------
class ZohoHarness(BaseHarness):
    """`ZohoFake`: customer payments without invoices; a deletion is how a receipt is undone in Zoho."""

    connector = "zoho"
    ORG, CLIENT, SECRET, REFRESH = "10234695", "1000.CONFCLIENT", "zoho_conf_secret_5a6b7c", "1000.conf_refresh_8d9e0f"

    def start(self, workdir: Path) -> None:
        from sync.sandbox.zoho import ZohoFake

        hook = self._hook = _Once()

        class HookedZohoFake(ZohoFake):
            def _handle(self, method: str, target: str, headers: Any, body: bytes) -> Any:
                reply = super()._handle(method, target, headers, body)
                path, _, query = target.partition("?")
                # a list page of the fetch (server_now() reads a one-row page first: not a page of the run)
                if method == "GET" and path.rstrip("/").endswith("/customerpayments") \
                        and dict(parse_qsl(query)).get("per_page") != "1":
                    hook.fire()
                return reply

        data = {"organizations": [{"organization_id": self.ORG, "name": "Conformance Academy", "utc_offset": "+0500",
                                   "per_minute_limit": 100_000, "daily_limit": 1_000_000}],
                "clients": [{"client_id": self.CLIENT, "client_secret": self.SECRET,
                             "refresh_tokens": [self.REFRESH]}]}
        self.fake = HookedZohoFake(data)
        self.fake.start()

    def stop(self) -> None:
        self.fake.stop()

    def settings(self, *, page_size: int) -> dict[str, Any]:
        return {"api_base": self.fake.api_base, "accounts_base": self.fake.accounts_base,
                "organization_id": self.ORG, "client_id": self.CLIENT, "client_secret": self.SECRET,
                "refresh_token": self.REFRESH, "page_size": page_size, "timeout_seconds": 5, "max_attempts": 2,
                "max_retry_seconds": 3, "rate_limit_backoff_seconds": 0.05, "daily_budget": 100_000}

    def secrets(self) -> list[str]:
        return [self.SECRET, self.REFRESH]

    def invalid_settings(self) -> tuple[dict[str, Any], str]:
        return {**self.settings(page_size=4), "page_size": 500}, "page_size"

    def add_receipts(self, n: int, *, same_change_time: bool = False) -> list[str]:
        """Zoho times are whole seconds: receipts a second apart, or all in one second."""
        tie = self._stamp().replace(microsecond=0) if same_change_time else None
        ids = []
        for _ in range(n):
            seq, amount = self._next()
            stamp = tie or self._stamp().replace(microsecond=0)
            pid = self.fake.add_payment(student_name(seq), float(amount), email=student_email(seq),
                                        payment_mode="cash", currency_code=CURRENCY,
                                        created_time=stamp, updated_time=stamp)
            self._amounts[pid] = amount
            ids.append(pid)
        return ids

    def change(self, doc_id: str) -> None:
        self.fake.edit_payment(doc_id, amount=float(self._changed(doc_id)))

    def cancel(self, doc_id: str) -> None:
        """Zoho Books has no void for a customer payment: it is deleted."""
        self.delete(doc_id)

    def delete(self, doc_id: str) -> None:
        self.fake.delete_payment(doc_id)
        self._amounts.pop(doc_id, None)

    def break_auth(self) -> None:
        """The refresh token was revoked (and the hour of the access tokens is over)."""
        self.fake.revoke_refresh_token(self.REFRESH)
        self.fake.expire_tokens()

    def inject_errors(self, kind: str, count: int) -> None:
        if kind == "server_error":
            self.fake.faults.fail(503, count=count, match="GET /customerpayments")
        elif kind == "rate_limit":     # Zoho's 429 code 45, without Retry-After
            self.fake.faults.error(code=45, status=429, count=count, match="GET /customerpayments",
                                   message="You have made too many requests continuously. Please try again after "
                                           "some time.")
        else:
            super().inject_errors(kind, count)

    def clear_errors(self) -> None:
        self.fake.faults.clear()

    def between_pages(self, callback: Callable[[], None], connector: Any) -> None:
        self._hook.arm(callback)


# --- TallyPrime --------------------------------------------------------------------------------------
class TallyHarness(BaseHarness):
    """`TallyFake`: receipt vouchers crediting the student's ledger, the e-mail in a voucher UDF."""

    connector = "tally"
    COMPANY = "Conformance Academy"

    def start(self, workdir: Path) -> None:
        from sync.sandbox.tally import TallyFake

        hook = self._hook = _Once()

        class HookedTallyFake(TallyFake):
            def _answer(self, raw: bytes) -> tuple[bytes, str]:
                sent = self.stats().get("vouchers_sent", 0)
                answer = super()._answer(raw)
                if self.stats().get("vouchers_sent", 0) > sent:
                    hook.fire()
                return answer

        self.fake = HookedTallyFake({"company": self.COMPANY, "voucher_types": {"Fee Receipt": "Receipt"}}).start()

    def stop(self) -> None:
        self.fake.stop()

    def settings(self, *, page_size: int) -> dict[str, Any]:
        return {"url": self.fake.url, "company": self.COMPANY, "encoding": "utf-16", "page_size": page_size,
                "customer_email_field": "StudentEmail", "timeout_seconds": 5, "max_attempts": 2,
                "max_retry_seconds": 3}

    def secrets(self) -> list[str]:
        _skip("tally: TallyPrime's XML port takes no credentials")
        return []

    def invalid_settings(self) -> tuple[dict[str, Any], str]:
        return {**self.settings(page_size=4), "company": "  "}, "company"

    def add_receipts(self, n: int, *, same_change_time: bool = False) -> list[str]:
        if same_change_time:
            _skip("tally: every alteration takes the next AlterID, the change marker; two vouchers never share one")
        guids = []
        for _ in range(n):
            seq, amount = self._next()
            guid = self.fake.add_receipt(student_name(seq), str(amount), ledger="Cash",
                                         voucher_type="Fee Receipt" if seq % 2 else "Receipt",
                                         date=self._t0.date().isoformat(),
                                         udf={"StudentEmail": student_email(seq)})
            self._amounts[guid] = amount
            guids.append(guid)
        return guids

    def change(self, doc_id: str) -> None:
        self.fake.alter(doc_id, amount=str(self._changed(doc_id)))

    def cancel(self, doc_id: str) -> None:
        self.fake.cancel(doc_id)
        self._amounts.pop(doc_id, None)

    def delete(self, doc_id: str) -> None:
        self.fake.delete(doc_id)
        self._amounts.pop(doc_id, None)

    def break_auth(self) -> None:
        """TallyPrime has no credentials; closing the company is the access failure that stops the source."""
        self.fake.company_open = False

    def inject_errors(self, kind: str, count: int) -> None:
        if kind == "server_error":
            self.fake.faults.fail(500, count=count)
        else:
            _skip("tally: TallyPrime's XML port has no rate limit")

    def clear_errors(self) -> None:
        self.fake.faults.clear()

    def between_pages(self, callback: Callable[[], None], connector: Any) -> None:
        self._hook.arm(callback)


# --- SQL -----------------------------------------------------------------------------------------------
class SQLHarness(BaseHarness):
    """A receipts table in a SQLite file, or in PostgreSQL when `pg_url` is given (a table of its own)."""

    connector = "sql"

    def __init__(self, pg_url: str | None = None) -> None:
        super().__init__()
        self.pg_url = pg_url
        self._locker: Any = None

    def start(self, workdir: Path) -> None:
        import sqlalchemy as sa

        if self.pg_url:
            self.table = f"conformance_{uuid.uuid4().hex[:10]}"
            self.writer = sa.create_engine(self.pg_url)
            ddl = (f"CREATE TABLE {self.table} (document_id text, changed_at timestamptz, amount numeric(14,2), "
                   "currency text, posting_date date, student text, invoice text, status text, email text, "
                   "method text, reference_number text)")
        else:
            self.table = "receipts"
            self.path = workdir / "erp.db"
            self.writer = sa.create_engine(f"sqlite:///{self.path}")
            ddl = (f"CREATE TABLE {self.table} (document_id TEXT, changed_at TEXT, amount NUMERIC, currency TEXT, "
                   "posting_date TEXT, student TEXT, invoice TEXT, status TEXT, email TEXT, method TEXT, "
                   "reference_number TEXT)")
        with self.writer.begin() as conn:
            conn.execute(sa.text(ddl))

    def stop(self) -> None:
        import sqlalchemy as sa

        self.clear_errors()
        if self.pg_url:
            with self.writer.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {self.table}"))
        self.writer.dispose()

    def settings(self, *, page_size: int) -> dict[str, Any]:
        if self.pg_url:
            sep = "&" if "?" in self.pg_url else "?"
            url = f"{self.pg_url}{sep}options=-c%20lock_timeout%3D200"   # a locked table fails fast
        else:
            url = f"sqlite:///{self.path}?timeout=0"
        return {"url": url, "query": f"SELECT * FROM {self.table}", "page_size": page_size, "time_zone": "UTC",
                "max_attempts": 2, "max_retry_seconds": 2}

    def secrets(self) -> list[str]:
        from sqlalchemy.engine import make_url

        password = make_url(self.pg_url).password if self.pg_url else None
        if not password:
            _skip("sql: a SQLite file takes no credentials" if not self.pg_url else "sql: the URL has no password")
        return [str(password)]

    def invalid_settings(self) -> tuple[dict[str, Any], str]:
        return {**self.settings(page_size=4), "query": f"DELETE FROM {self.table}"}, "query"

    # --- writes (through the lock holder while one is held: it owns the table then) --------------------
    def _exec(self, sql: str, params: dict[str, Any] | list[dict[str, Any]]) -> None:
        import sqlalchemy as sa

        if self._locker is not None:
            self._locker.execute(sa.text(sql), params)
            return
        with self.writer.begin() as conn:
            conn.execute(sa.text(sql), params)

    def _time(self, moment: datetime) -> Any:
        return moment if self.pg_url else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    def _money(self, amount: Decimal) -> Any:
        return amount if self.pg_url else str(amount)   # sqlite3 binds no Decimal; NUMERIC affinity parses text

    def _day(self, moment: datetime) -> Any:
        return moment.date() if self.pg_url else moment.date().isoformat()

    def add_receipts(self, n: int, *, same_change_time: bool = False) -> list[str]:
        tie = self._stamp() if same_change_time else None
        rows, ids = [], []
        for _ in range(n):
            seq, amount = self._next()
            doc = f"RCPT-{seq:05d}"
            stamp = tie or self._stamp()
            rows.append({"d": doc, "t": self._time(stamp), "a": self._money(amount), "p": self._day(stamp),
                         "s": f"STU-{seq % N_STUDENTS}", "e": student_email(seq)})
            self._amounts[doc] = amount
            ids.append(doc)
        self._exec(f"INSERT INTO {self.table} VALUES (:d, :t, :a, 'PKR', :p, :s, '', 'submitted', :e, 'Cash', NULL)",
                   rows)
        return ids

    def _now(self) -> Any:
        return self._time(datetime.now(UTC) - timedelta(minutes=1))

    def change(self, doc_id: str) -> None:
        self._exec(f"UPDATE {self.table} SET amount = :a, changed_at = :t WHERE document_id = :d",
                   {"a": self._money(self._changed(doc_id)), "t": self._now(), "d": doc_id})

    def cancel(self, doc_id: str) -> None:
        self._exec(f"UPDATE {self.table} SET status = 'cancelled', changed_at = :t WHERE document_id = :d",
                   {"t": self._now(), "d": doc_id})
        self._amounts.pop(doc_id, None)

    def delete(self, doc_id: str) -> None:
        self._exec(f"DELETE FROM {self.table} WHERE document_id = :d", {"d": doc_id})
        self._amounts.pop(doc_id, None)

    def break_auth(self) -> None:
        import sqlalchemy as sa

        if not self.pg_url:
            _skip("sql: a SQLite file takes no credentials")
        with self.writer.begin() as conn:   # the account loses its read grant (the owner may revoke its own)
            conn.execute(sa.text(f"REVOKE ALL ON {self.table} FROM CURRENT_USER"))

    def inject_errors(self, kind: str, count: int) -> None:
        """The database holds an exclusive lock (the ERP's long write) until `clear_errors()`; `count` is
        not countable for a lock: the lock lasts."""
        import sqlalchemy as sa

        if kind != "server_error":
            _skip(f"sql: a database has no {kind.replace('_', ' ')}")
        if self._locker is not None:
            return
        conn = self.writer.connect()
        if self.pg_url:
            conn.begin()
            conn.execute(sa.text(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE"))
        else:
            conn.exec_driver_sql("PRAGMA locking_mode = EXCLUSIVE")
            conn.exec_driver_sql("BEGIN EXCLUSIVE")
            conn.exec_driver_sql(f"UPDATE {self.table} SET status = status WHERE 1 = 0")
        self._locker = conn

    def clear_errors(self) -> None:
        conn, self._locker = self._locker, None
        if conn is None:
            return
        if self.pg_url:
            conn.commit()
        else:
            conn.exec_driver_sql("COMMIT")
            conn.exec_driver_sql("PRAGMA locking_mode = NORMAL")
            conn.exec_driver_sql(f"SELECT count(*) FROM {self.table}")   # drops the exclusive lock
        conn.close()
        self.writer.dispose()

    def between_pages(self, callback: Callable[[], None], connector: Any) -> None:
        """After the connector's first page query returned its connection to the pool."""
        import sqlalchemy as sa

        engine = connector.engine
        state = {"page": False}
        once = _Once(callback)

        def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
            if "ORDER BY" in statement.upper() and "LIMIT" in statement.upper():
                state["page"] = True

        def checkin(dbapi_conn: Any, record: Any) -> None:
            if state["page"]:
                once.fire()

        sa.event.listen(engine, "before_cursor_execute", before)
        sa.event.listen(engine, "checkin", checkin)


__all__ = ["BaseHarness", "ERPNextHarness", "FilesHarness", "OdooHarness", "ZohoHarness", "TallyHarness",
           "SQLHarness"]
