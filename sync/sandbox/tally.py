"""A TallyPrime fake: the XML-over-HTTP port (collection exports of vouchers) on loopback.

Used by the Tally connector's tests and for dry runs. Standard library only
(`http.server.ThreadingHTTPServer`, HTTP/1.1 keep-alive, `Content-Length` on every answer).

Usage::

    with TallyFake({"company": "Zensbot Academy", "voucher_types": {"Fee Receipt": "Receipt"}}) as tally:
        guid = tally.add_receipt("Ayesha Khan", 18000, voucher_type="Fee Receipt", date="2026-11-02",
                                 bills=[("INV-1", 18000)], udf={"StudentEmail": "ayesha@example.pk"})
        tally.alter(guid, amount=17000)        # new, higher AlterID
        tally.cancel(guid); tally.delete(guid); tally.renumber()
        tally.company_open = False             # every request now gets an empty 200 answer
        tally.faults.fail(500, count=2); tally.faults.slow(0.5); tally.faults.drop()
        tally.url, tally.port, tally.stats(), tally.vouchers()

    python -m sync.sandbox.tally --data books.json --port 9000   # foreground (SIGINT stops it)

Data format (JSON)
------------------
::

    {"company": "Zensbot Academy",            # the one company whose books these are
     "other_companies": ["Another Co"],        # also "loaded", with no vouchers (optional)
     "voucher_types": {"Fee Receipt": "Receipt", "Online Fee": "Fee Receipt"},   # name -> parent
     "amount_style": "raw",                    # raw | report | drcr (how AMOUNT is printed)
     "emit_deemed_positive": true,             # write ISDEEMEDPOSITIVE on ledger lines
     "vouchers": [
       {"guid": "…-00000001", "alter_id": 7, "master_id": 1, "date": "2026-11-02", "type": "Fee Receipt",
        "number": "1", "reference": "CHQ-77", "narration": "Nov fee", "party": "Ayesha Khan",
        "cancelled": false, "optional": false, "udf": {"StudentEmail": "ayesha@example.pk"},
        "entries": [{"ledger": "Ayesha Khan", "amount": "18000.00",
                     "bills": [{"name": "INV-1", "type": "Agst Ref", "amount": "18000.00"}]},
                    {"ledger": "Cash", "amount": "-18000.00"}]}]}

Entry amounts follow Tally's object convention: credit positive, debit negative (a receipt
credits the party and debits cash/bank). Everything but `entries`/`party`/`type` has a default:
`guid` = company GUID + `-` + master id in 8 hex digits (Tally's shape), `master_id`/`alter_id`
the next numbers, `number` the next per voucher type, `date` 2026-11-02. Predefined voucher
types (Receipt, Payment, Sales, Purchase, Journal, Contra, Credit Note, Debit Note, …) are
their own parents; `$$IsReceipt` is true for a type whose parent chain reaches Receipt.

What it models
--------------
* Requests: `POST` (any path) of an `ENVELOPE` with `TALLYREQUEST=Export`, `TYPE=Collection`,
  `ID`, `SVCURRENTCOMPANY` and an inline `TDL/TDLMESSAGE/COLLECTION NAME=<ID>` of `TYPE`
  Voucher or Company. `FILTER`/`FILTERS` name `SYSTEM TYPE="Formulae"` formulas, evaluated
  by a small TDL subset (`$$IsReceipt:$VoucherTypeName` and the other type predicates,
  `$AlterID > n`, `AND`/`OR`/`NOT`, comparisons on AlterID, MasterID, VoucherTypeName,
  IsCancelled, IsOptional, …); anything else is answered as a Tally `LINEERROR`, so a
  misspelt filter fails instead of matching everything. `FETCH` is honoured: only the
  fields named are written (`*` = all; `ALLLEDGERENTRIES[.LIST]` for ledger lines,
  `BILLALLOCATIONS` for bill-wise breakup, a UDF by its name).
* Encoding: answers in the request's encoding (a UTF-16 request, with or without BOM, gets
  UTF-16LE with BOM; anything else UTF-8), `Content-Type: text/xml; charset=…`.
* Answers: `ENVELOPE/HEADER/STATUS=1` and `BODY/DATA/COLLECTION` holding `VOUCHER` elements
  in object XML: `DATE` yyyymmdd, numbers padded with a space (`<ALTERID> 12</ALTERID>`),
  `ISDEEMEDPOSITIVE` on ledger lines, UDFs as undeclared `UDF:` prefixed elements, control
  characters in text written as the XML-illegal references Tally writes (`&#4;`). Company
  collections list the loaded companies with `ALTVCHID` (the last voucher AlterID).
* Company state: with `company_open=False` every request gets `200` with an **empty body**
  (what Tally does); naming a company that is not loaded gets `STATUS=0` + `LINEERROR`.
  A non-export request gets `<RESPONSE>Unknown Request, cannot be processed</RESPONSE>`;
  `GET` gets `<RESPONSE>TallyPrime Server is Running</RESPONSE>`.
* Changes: every add/alter/cancel/renumber takes the next company-wide AlterID; `delete`
  leaves nothing behind (the counter still moves); `renumber()` renumbers each voucher type
  by date and gives the renumbered vouchers new AlterIDs.
* Faults (`faults`): `fail(status, count)` answers a status before anything else, `slow(seconds,
  count)` sleeps before answering, `drop(count)` closes the connection without an answer.

What it does not model (U in erp-apis.md §4 unless said): reports (`TYPE=Data`), imports,
date-range variables, master collections other than Company, per-company books for the
`other_companies`, multi-currency amounts, whether a cancelled voucher keeps its ledger
amounts (here it does), TallyPrime Server authentication, and Tally's habit of hanging on
huge exports.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

from sync.sandbox import _tally_tdl as tdl
from sync.sandbox._tally_store import TallyBooks

__all__ = ["TallyFake", "Faults", "main"]

_MAX_BODY = 8 << 20


class Faults:
    """Counted faults, consumed as they fire: `fail` (a status), `slow` (sleep, then answer), `drop` (no answer)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fail: list[list[int]] = []       # [status, count]
        self._slow: list[list[float]] = []     # [seconds, count]
        self._drop = 0

    def fail(self, status: int = 500, count: int = 1) -> None:
        with self._lock:
            self._fail.append([int(status), int(count)])

    def slow(self, seconds: float, count: int = 1) -> None:
        with self._lock:
            self._slow.append([float(seconds), int(count)])

    def drop(self, count: int = 1) -> None:
        with self._lock:
            self._drop += int(count)

    def clear(self) -> None:
        with self._lock:
            self._fail.clear()
            self._slow.clear()
            self._drop = 0

    def take(self) -> tuple[float, int | None, bool]:
        """(seconds to sleep, status to fail with, drop?) for the next request."""
        with self._lock:
            delay = 0.0
            if self._slow:
                delay = self._slow[0][0]
                self._slow[0][1] -= 1
                if self._slow[0][1] <= 0:
                    self._slow.pop(0)
            status = None
            if self._fail:
                status = self._fail[0][0]
                self._fail[0][1] -= 1
                if self._fail[0][1] <= 0:
                    self._fail.pop(0)
            drop = False
            if status is None and self._drop > 0:
                self._drop -= 1
                drop = True
            return delay, status, drop


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: TallyFake

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

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return   # the client gave up (timeout, dropped keep-alive): nothing to report
        super().handle_error(request, client_address)

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
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by design
        pass

    def _send(self, status: int, body: bytes, content_type: str = "text/xml; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(200, b"<RESPONSE>TallyPrime Server is Running</RESPONSE>")

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._send(413, b"")
            return
        raw = self.rfile.read(length) if length else b""
        delay, status, drop = fake.faults.take()
        if delay:
            time.sleep(delay)
        if status is not None:
            fake._count("failed")
            self._send(status, b"")
            return
        if drop:
            fake._count("dropped")
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        body, content_type = fake._answer(raw)
        self._send(200, body, content_type)


def _encode(text: str, encoding: str) -> tuple[bytes, str]:
    if encoding == "utf-16":
        return b"\xff\xfe" + text.encode("utf-16-le"), "text/xml; charset=utf-16"
    return text.encode("utf-8"), "text/xml; charset=utf-8"


def _envelope(status: int, data: str) -> str:
    return (f"<ENVELOPE><HEADER><VERSION>1</VERSION><STATUS>{status}</STATUS></HEADER>"
            f"<BODY><DESC></DESC><DATA>{data}</DATA></BODY></ENVELOPE>")


class TallyFake:
    """The fake server. Thread-safe; `vouchers()` returns copies."""

    def __init__(self, data: dict[str, Any], *, host: str = "127.0.0.1", port: int = 0,
                 company_open: bool = True) -> None:
        self.books = TallyBooks(data)
        self.company_open = company_open
        self.faults = Faults()
        self.host = host
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self._requested_port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # noqa: S104 - display only
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self) -> TallyFake:
        if self._server is not None:
            return self
        server = _Server((self.host, self._requested_port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"tally-fake-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
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

    def __enter__(self) -> TallyFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- books ----------------------------------------------------------------------------
    @property
    def company(self) -> str:
        return self.books.company

    @property
    def last_alter_id(self) -> int:
        return self.books.last_alter_id

    @property
    def amount_style(self) -> str:
        """How AMOUNT is printed: "raw" (object XML), "report" (debit `1,234.50`, credit `(1,234.50)`),
        "drcr" (`1,234.50 Dr`/`Cr`). Settable while serving."""
        return self.books.amount_style

    @amount_style.setter
    def amount_style(self, style: str) -> None:
        if style not in ("raw", "report", "drcr"):
            raise ValueError("amount_style must be raw, report or drcr")
        self.books.amount_style = style

    def add_receipt(self, party: str, amount: Any, *, date: Any = "2026-11-02", voucher_type: str = "Receipt",
                    ledger: str = "Cash", bills: list[Any] | None = None, reference: str | None = None,
                    narration: str | None = None, udf: dict[str, str] | None = None, number: str | None = None,
                    optional: bool = False, cancelled: bool = False) -> str:
        """Add a receipt crediting `party` and debiting `ledger` by `amount`; `bills` are
        `(name, amount)` pairs or dicts with `type`. Returns the new voucher's GUID."""
        return self.books.add({"party": party, "type": voucher_type, "date": date, "reference": reference,
                               "narration": narration, "udf": udf, "number": number, "optional": optional,
                               "cancelled": cancelled,
                               "entries": TallyBooks.receipt_entries(party, amount, ledger, bills)})

    def add_voucher(self, voucher: dict[str, Any]) -> str:
        """Add any voucher in the data format (e.g. a Sales voucher the receipt filter must skip)."""
        return self.books.add(voucher)

    def alter(self, guid: str, **changes: Any) -> int:
        """Change fields (`amount`, `party`, `ledger`, `bills`, `date`, `reference`, `narration`, `udf`,
        `number`, `type`, `optional`, `cancelled`, `entries`); returns the new AlterID."""
        return self.books.alter(guid, changes)

    def cancel(self, guid: str) -> int:
        return self.books.alter(guid, {"cancelled": True})

    def delete(self, guid: str) -> None:
        self.books.delete(guid)

    def renumber(self) -> list[str]:
        return self.books.renumber()

    def vouchers(self) -> list[dict[str, Any]]:
        return self.books.snapshot()

    def stats(self) -> dict[str, Any]:
        """{"requests", "answered", "empty", "errors", "failed", "dropped", "vouchers_sent",
        "utf-16", "utf-8", "collection:<ID>": n}."""
        with self._stats_lock:
            return dict(self._stats)

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n

    # --- answers ---------------------------------------------------------------------------
    def _answer(self, raw: bytes) -> tuple[bytes, str]:
        self._count("requests")
        try:
            text, encoding = tdl.decode_request(raw)
        except UnicodeDecodeError:
            self._count("errors")
            return _encode("<RESPONSE>Unknown Request, cannot be processed</RESPONSE>", "utf-8")
        self._count(encoding)
        if not self.company_open:
            self._count("empty")
            return b"", "text/xml; charset=utf-16" if encoding == "utf-16" else "text/xml; charset=utf-8"
        try:
            req = tdl.parse_request(text)
            self._count(f"collection:{req.collection_id}")
            body = self._collection(req)
        except tdl.UnknownRequest:
            self._count("errors")
            return _encode("<RESPONSE>Unknown Request, cannot be processed</RESPONSE>", encoding)
        except tdl.TdlError as exc:
            self._count("errors")
            return _encode(_envelope(0, f"<LINEERROR>{escape(str(exc))}</LINEERROR>"), encoding)
        self._count("answered")
        return _encode(body, encoding)

    def _collection(self, req: tdl.CollectionRequest) -> str:
        books = self.books
        loaded = [books.company, *books.other_companies]
        if req.company is not None and req.company.casefold() not in {c.casefold() for c in loaded}:
            raise tdl.TdlError(f"Could not set 'SVCurrentCompany' to '{req.company}'")
        filters = [tdl.compile_formula(f) for f in req.filters]
        with books.lock:
            if req.type == "Company":
                items = [books.render_company(name, req.fetch) for name in loaded]
                return _envelope(1, "<COLLECTION>" + "".join(items) + "</COLLECTION>")
            if req.company is not None and req.company.casefold() != books.company.casefold():
                return _envelope(1, "<COLLECTION></COLLECTION>")   # a loaded company with no vouchers
            out = []
            for v in sorted(books.vouchers.values(), key=lambda x: x["master_id"]):   # Tally's own order
                get = books.getter(v)
                if all(f(get, books.root_type) for f in filters):
                    out.append(books.render_voucher(v, req.fetch))
        self._count("vouchers_sent", len(out))
        return _envelope(1, "<COLLECTION>" + "".join(out) + "</COLLECTION>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sync.sandbox.tally", description="TallyPrime XML-port fake")
    parser.add_argument("--data", required=True, help="books JSON (format in the module docstring)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    with open(args.data, encoding="utf-8") as fh:
        data = json.load(fh)
    fake = TallyFake(data, host=args.host, port=args.port).start()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sys.stderr.write(f"TallyPrime fake for {fake.company!r} on {fake.url}\n")
    stop.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
