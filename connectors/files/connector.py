"""CSV drop-folder connector.

One row per receipt, header required (see README "CSV format"):
`document_id, date, student, amount, currency, method, reference_number, invoice`
(`email` optional). `student` is the ERP customer / student code; an e-mail there (or in `email`)
is used for matching LMS students. `invoice` may name an ERP invoice (mapped via
`mapping.invoices`) or `plan:<LMS plan id>`. An optional `status` of `cancelled`, `canceled`,
`void` or `voided` makes the row a cancellation of that document (a pushed receipt then opens
`reversed_in_erp`, as in the other connectors); any other status is a receipt. Each file is
processed once, by the SHA-256 of its content; a malformed row becomes a conflict naming file
and row, the other rows go on.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sync.connector import SourceContext
from sync.contract import LMS_ID_PATTERN
from sync.errors import ConflictError, SourceError
from sync.events import (
    MAX_DOC_ID, FeeEvent, Malformed, PaymentCancelled, PaymentReceived, Position, Reference, Unchanged,
)
from sync.logs import get_logger
from sync.money import to_decimal

COLUMNS = ("document_id", "date", "student", "amount", "currency", "method", "reference_number", "invoice")
REQUIRED = ("document_id", "date", "student", "amount", "currency")
log = get_logger(component="files")
CANCELLED = frozenset({"cancelled", "canceled", "void", "voided"})   # optional `status` column


class FileSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: str
    pattern: str = "*.csv"
    encoding: str = "utf-8-sig"
    delimiter: str = ","
    max_file_bytes: int = Field(50_000_000, ge=1)
    # a file whose last line has no line end and that changed less than this long ago is still being
    # written: it waits for a later pass instead of being read with a cut-off last amount
    settle_seconds: float = Field(60.0, ge=0, le=86_400)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r} (e.g. utf-8-sig, utf-8, cp1252, utf-16)") from None
        return v

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: str) -> str:
        if len(v) != 1 or v in "\r\n\"" or v.isalnum():
            raise ValueError(f"delimiter {v!r} must be one character other than a letter, digit, quote or line end "
                             "(e.g. ',' or ';' or '\\t')")
        return v


class FileConnector:
    name: ClassVar[str] = "files"
    settings_model: ClassVar[type[BaseModel]] = FileSettings
    ordered: ClassVar[bool] = False

    def __init__(self, settings: FileSettings, *, transport: Any = None,
                 stop_event: threading.Event | None = None) -> None:
        self.settings = settings
        self.folder = Path(settings.folder)

    def server_now(self) -> datetime | None:
        return None

    def close(self) -> None:
        pass

    def probe(self) -> list[str]:
        if not self.folder.is_dir():
            return [f"files: folder {str(self.folder)!r} does not exist"]
        return []

    def fetch(self, since: Position | None, ctx: SourceContext, until: datetime | None = None) -> Iterator[FeeEvent]:
        if not self.folder.is_dir():
            raise SourceError(f"drop folder {str(self.folder)!r} does not exist")
        for path in sorted(self.folder.glob(self.settings.pattern)):
            if not path.is_file():
                continue
            stat = path.stat()
            mtime = datetime.fromtimestamp(stat.st_mtime, UTC)
            if stat.st_size > self.settings.max_file_bytes:
                # never skipped in silence: its receipts would be lost without a word
                version = f"size:{stat.st_size}:{stat.st_mtime_ns}"
                if not ctx.seen(path.name, version):
                    yield Malformed(doc_id=path.name, position=Position(mtime, path.name), version=version,
                                    problem=f"file {path.name} is {stat.st_size:,} bytes, above max_file_bytes "
                                            f"{self.settings.max_file_bytes:,}; it was not read (split it, or raise "
                                            "the limit)", location=path.name)
                continue
            content = path.read_bytes()
            digest = hashlib.sha256(content).hexdigest()
            if ctx.recall(f"file:{digest}") == "done":
                continue
            if content and not content.endswith((b"\n", b"\r")) and (
                    time.time() - stat.st_mtime < self.settings.settle_seconds):
                log.info("file.still_being_written", file=path.name, bytes=len(content),
                         settle_seconds=self.settings.settle_seconds)
                continue   # read on a later pass, once whole
            yield from self._rows(path, content, digest, mtime, ctx)
            ctx.remember(f"file:{digest}", "done")   # reached only when every row was handed over

    def _rows(self, path: Path, content: bytes, digest: str, mtime: datetime,
              ctx: SourceContext) -> Iterator[FeeEvent]:
        try:
            text = content.decode(self.settings.encoding)
        except UnicodeDecodeError as exc:
            yield Malformed(doc_id=f"{path.name}", position=Position(mtime, path.name), version=digest,
                            problem=f"file {path.name} is not {self.settings.encoding}: {exc.reason}",
                            location=path.name)
            return
        # newline="": the csv module sees the file's own line ends (\r\n, \n, or Excel's old-Mac bare \r)
        # strict: an unclosed quote is an error, not a cell that swallows every later row
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=self.settings.delimiter, strict=True)
        try:
            header = [h.strip() for h in (reader.fieldnames or [])]
        except csv.Error as exc:
            yield self._unreadable(path, mtime, digest, 1, exc)
            return
        repeated = sorted({h for h in header if h and header.count(h) > 1})
        if repeated:
            yield Malformed(doc_id=path.name, position=Position(mtime, path.name), version=digest,
                            problem=f"file {path.name}: header repeats {', '.join(repeated)}; which one holds the "
                                    "value is not guessed", location=path.name)
            return
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            yield Malformed(doc_id=path.name, position=Position(mtime, path.name), version=digest,
                            problem=f"file {path.name}: header lacks {', '.join(missing)}", location=path.name)
            return
        rows = enumerate(reader, start=2)
        read_to = reader.line_num   # physical lines consumed so far (a quoted cell may span several)
        while True:
            try:
                line_no, raw = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:   # an unclosed quote, a cell past the field limit: the rest is unreadable
                yield self._unreadable(path, mtime, digest, read_to + 1, exc)
                return
            read_to = reader.line_num
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if isinstance(v, str) or v is None}
            doc_id = row.get("document_id") or f"{path.name}:{line_no}"
            version = hashlib.sha256(repr(sorted(row.items())).encode()).hexdigest()[:24]
            pos = Position(mtime, doc_id)
            if ctx.seen(doc_id, version):
                yield Unchanged(doc_id=doc_id, position=pos, version=version)
                continue
            if (row.get("status") or "").lower() in CANCELLED and row.get("document_id"):
                yield PaymentCancelled(doc_id=doc_id, position=pos, version=version)
                continue
            try:
                yield self._event(row, doc_id, pos, version)
            except ConflictError as exc:
                yield Malformed(doc_id=doc_id, position=pos, version=version,
                                problem=f"{path.name} row {line_no}: {exc.detail}", location=f"{path.name}:{line_no}")

    @staticmethod
    def _unreadable(path: Path, mtime: datetime, digest: str, line: int, exc: csv.Error) -> Malformed:
        """The whole file as one conflict: rows before `line` were handed over, the rest cannot be read."""
        return Malformed(doc_id=path.name, position=Position(mtime, path.name), version=digest,
                         problem=f"file {path.name} cannot be read as CSV from line {line} on: {exc}; "
                                 "rows before it were read, fix the file and drop it again", location=path.name)

    def _event(self, row: dict[str, str], doc_id: str, pos: Position, version: str) -> PaymentReceived:
        for col in REQUIRED:
            if not row.get(col):
                raise ConflictError("malformed_document", f"{col} is empty", definitive=False)
        if len(doc_id) > MAX_DOC_ID:
            raise ConflictError("malformed_document", f"document_id is {len(doc_id)} characters long; at most "
                                f"{MAX_DOC_ID} (it becomes the LMS payment's notes and key)", definitive=False)
        try:
            day = date.fromisoformat(row["date"])
        except ValueError:
            raise ConflictError("malformed_document", f"date {row['date'][:20]!r} is not YYYY-MM-DD",
                                definitive=False) from None
        amount = to_decimal(row["amount"], field="amount")
        currency = row["currency"].upper()
        if len(currency) != 3 or not currency.isalpha():
            raise ConflictError("malformed_document", f"currency {row['currency'][:10]!r} is not an ISO code",
                                definitive=False)
        student = row["student"]
        email = row.get("email") or (student if "@" in student else None)
        refs: tuple[Reference, ...] = ()
        invoice = row.get("invoice") or ""
        if invoice.startswith("plan:"):
            if not re.fullmatch(LMS_ID_PATTERN, invoice[5:]):
                raise ConflictError("malformed_document", f"invoice {invoice[:40]!r}: `plan:` must be followed by "
                                    "an LMS plan id", definitive=False)
            refs = (Reference(invoice_id=None, amount=amount, lms_plan_id=invoice[5:]),)
        elif invoice:
            refs = (Reference(invoice_id=invoice, amount=amount),)
        return PaymentReceived(doc_id=doc_id, position=pos, version=version, customer=student, customer_email=email,
                               amount=amount, currency=currency, posting_date=day, method=row.get("method") or None,
                               reference_number=row.get("reference_number") or None, references=refs)
