"""TallyPrime connector: receipt vouchers by AlterID over Tally's XML-over-HTTP port.

* Request: an inline-TDL `Collection` export of `Voucher` objects filtered by
  `$$IsReceipt:$VoucherTypeName` (so user types under Receipt, such as "Fee Receipt", count)
  and an AlterID window `$AlterID > lo AND $AlterID <= hi`, `SVCURRENTCOMPANY` set, in UTF-16
  (LE with BOM, Tally's native form) or UTF-8. Answers are read in either encoding.
* Identity: the voucher `GUID` (never `VOUCHERNUMBER`: automatic numbering renumbers later
  vouchers when a back-dated one is inserted). Version: `ALTERID`, which Tally raises on
  every alteration of any voucher of the company.
* Cursor. AlterID is the only change marker Tally has, and it is strictly increasing, so the
  cursor is the AlterID itself dressed as the engine's `(changed_at, doc_id)` tuple:
  `changed_at = 1970-01-01T00:00:00Z + ALTERID seconds` and
  `doc_id = f"{alterid:012d}:{guid}"`. Aware UTC, monotonic, exact (integers survive
  `isoformat` round trips) and totally ordered like AlterID. **Seconds**, not microseconds,
  because the engine re-reads `lookback` behind the stored cursor on every poll: in this unit a
  source's `lookback = "10m"` re-reads the last 600 alterations, a cheap bounded overlap,
  where microseconds would turn the default into 600 million, i.e. the whole company on
  every poll. So for a Tally source, `lookback` and `lag` count AlterIDs ("10m" = 600,
  "2s" = 2). A `since`/`until` from 2000 on is a calendar time instead (`backfill --since
  2026-01-01`, `reconcile --since`): it filters by voucher DATE over every AlterID.
  `server_now()` is the company's last voucher AlterID (`$AltVchId`) in
  the same unit, so the signpost caps the cursor at what existed when the run began.
* Paging: AlterID windows of `page_size` up to the company's `$AltVchId`, read at the start
  of each fetch (alterations made during the run land above it and are read next time). A
  cursor above `$AltVchId` means the books went back (a restored backup): everything is re-read.
* Content: the amount is the party ledger line (`PARTYLEDGERNAME`) credited in the receipt,
  with Tally's sign rules (object XML: credit positive, debit negative with
  `ISDEEMEDPOSITIVE=Yes`; report formats `(1,234.50)`, `1,234.50 Dr`/`Cr` also parsed: a
  voucher with any parenthesised amount is read in report convention). The
  debited cash/bank ledger's name is the mode of payment (map it in `mapping.payment_methods`,
  e.g. `"HBL Bank" = "bank_transfer"`); `REFERENCE` is the reference number; each named bill
  allocation of the party line is a `Reference` (bill name = invoice id, `plan:<id>` = an
  LMS plan); the e-mail comes from the optional voucher UDF `customer_email_field`.
* `ISCANCELLED=Yes` -> `PaymentCancelled`. `ISOPTIONAL=Yes` (memorandum) -> skipped, unless
  this connector handed the same GUID over as a receipt before, in which case it is a
  `PaymentCancelled` (a pushed receipt made optional must reach a person).
* Deletions leave nothing in Tally: `snapshot()` pulls every receipt's GUID+AlterID pair in
  an AlterID window for the engine's reconcile diff.
* Company state: Tally answers an **empty body** when no company is open, and lists the
  loaded companies on request; both "none open" and "ours not open" stop the source
  (`StopSource`) with a clear message. An empty collection in a valid envelope after our
  company was confirmed open is "nothing new".
"""

from __future__ import annotations

import re
import threading
import xml.etree.ElementTree as ET  # noqa: S405 - parsing happens in _xml.parse_answer
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.tally import _xml
from connectors.tally._http import TallyHTTP
from sync.connector import SourceContext
from sync.errors import ConflictError, StopSource
from sync.events import (
    FeeEvent,
    Malformed,
    PaymentCancelled,
    PaymentReceived,
    Position,
    Reference,
    Unchanged,
)
from sync.logs import get_logger

log = get_logger(component="tally")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CALENDAR_FROM = datetime(2000, 1, 1, tzinfo=UTC)
_MEMO = "tally-receipt:"


def alter_time(alterid: int) -> datetime:
    """The synthetic change time of an AlterID (see the module docstring)."""
    return EPOCH + timedelta(seconds=alterid)


def alter_position(alterid: int, guid: str) -> Position:
    return Position(alter_time(alterid), f"{alterid:012d}:{guid}")


def is_calendar(moment: datetime) -> bool:
    """True for a real calendar time; AlterIDs would need ~950 million alterations to reach 2000."""
    return moment >= CALENDAR_FROM


def _in_days(text: str | None, day_from: date | None, day_to: date | None) -> bool:
    try:
        day = _xml.tally_date(text)
    except ConflictError:
        return True   # unreadable date: let normalising report it
    return (day_from is None or day >= day_from) and (day_to is None or day < day_to)


def first_alterid_from(moment: datetime) -> int:
    """The smallest AlterID whose synthetic time is >= `moment` (0 for anything before the epoch)."""
    delta = moment - EPOCH
    whole = delta.days * 86400 + delta.seconds + (1 if delta.microseconds else 0)
    return max(0, whole)


class TallySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = "http://127.0.0.1:9000"
    company: str
    encoding: Literal["utf-16", "utf-8"] = "utf-16"
    page_size: int = Field(5000, ge=1, le=10_000_000)     # AlterIDs per request window
    timeout_seconds: float = Field(60.0, gt=0, le=3600)
    max_attempts: int = Field(4, ge=1, le=10)
    max_retry_seconds: float = Field(120.0, gt=0, le=86_400)
    currency: str = "PKR"                                  # Tally amounts carry no ISO code
    customer_email_field: str | None = None                # a voucher UDF holding the student's e-mail
    reconcile_window: int | None = Field(None, ge=1)       # latest AlterIDs a reconcile covers; None = all

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("company")
    @classmethod
    def _company(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name the TallyPrime company")
        return v.strip()

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        v = v.strip().upper()
        if len(v) != 3 or not v.isalpha():
            raise ValueError("must be an ISO currency code such as PKR")
        return v

    @field_validator("customer_email_field")
    @classmethod
    def _udf(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", v):
            raise ValueError("must be a TDL field/UDF name (letters, digits, underscore)")
        return v


@dataclass(frozen=True)
class CompanyInfo:
    name: str
    last_alter_id: int | None    # $AltVchId: the highest voucher AlterID; None when Tally did not say


def _int(text: str | None) -> int | None:
    t = (text or "").strip()
    return int(t) if re.fullmatch(r"-?\d+", t) else None


class TallyConnector:
    name: ClassVar[str] = "tally"
    settings_model: ClassVar[type[BaseModel]] = TallySettings
    ordered: ClassVar[bool] = True

    def __init__(self, settings: TallySettings, *, transport: Any = None,
                 stop_event: threading.Event | None = None, sleep: Callable[[float], Any] | None = None) -> None:
        self.settings = settings
        self.http = TallyHTTP(url=settings.url, encoding=settings.encoding, timeout=settings.timeout_seconds,
                              max_attempts=settings.max_attempts, max_seconds=settings.max_retry_seconds,
                              transport=transport, stop_event=stop_event, sleep=sleep)
        self._extra_fetch = (settings.customer_email_field,) if settings.customer_email_field else ()

    # --- contract ----------------------------------------------------------------------------
    def server_now(self) -> datetime | None:
        top = self.company().last_alter_id
        return alter_time(top) if top is not None else None

    def close(self) -> None:
        self.http.close()

    def probe(self) -> list[str]:
        """Reach Tally, confirm the company is open and run one receipt request of the real shape."""
        try:
            self.company()
            self.http.post(_xml.voucher_request(self.settings.company, 0, 1, extra_fetch=self._extra_fetch),
                           "receipts probe")
        except Exception as exc:  # noqa: BLE001 - `check` reports every failure as text
            return [f"tally {self.settings.url} ({self.settings.company}): {type(exc).__name__}: {exc}"]
        return []

    def fetch(self, since: Position | None, ctx: SourceContext, until: datetime | None = None) -> Iterator[FeeEvent]:
        exclusive = since is not None and not is_calendar(since.changed_at)
        for voucher, alterid, guid in self._walk(since.changed_at if since else None, until, pairs_only=False):
            pos = alter_position(alterid, guid)
            if exclusive and since is not None and pos <= since and pos.changed_at >= since.changed_at:
                continue   # the cursor's own voucher (below it only after the books went back: keep those)
            event = self._event_for(voucher, alterid, guid, pos, ctx)
            if event is not None:
                yield event

    def snapshot(self, since: datetime, until: datetime | None = None) -> dict[str, str]:
        """GUID -> AlterID of every receipt (cancelled ones included, optional ones not) in [since, until)."""
        out: dict[str, str] = {}
        for voucher, alterid, guid in self._walk(since, until, pairs_only=True):
            if _xml.yes(_xml.text_of(voucher, "ISOPTIONAL")):
                continue
            out[guid] = str(alterid)
        return out

    def reconcile_since(self) -> datetime:
        """Where a reconcile pass should start: `reconcile_window` AlterIDs below the company's last one."""
        if self.settings.reconcile_window is None:
            return EPOCH
        top = self.company().last_alter_id or 0
        return alter_time(max(0, top - self.settings.reconcile_window))

    # --- requests ----------------------------------------------------------------------------
    def company(self) -> CompanyInfo:
        """The configured company as Tally lists it; StopSource when it (or any company) is not open."""
        root = self.http.post(_xml.company_request(), "company list")
        found: list[tuple[str, ET.Element]] = []
        for elem in root.iter():
            if elem.tag.upper() != "COMPANY":
                continue
            name = (_xml.text_of(elem, "NAME") or elem.get("NAME") or "").strip()
            if name:
                found.append((name, elem))
        if not found:
            raise StopSource(f"TallyPrime at {self.settings.url} has no company open; open "
                             f"{self.settings.company!r} in TallyPrime", system="erp")
        want = self.settings.company.casefold()
        for name, elem in found:
            if name.casefold() == want:
                return CompanyInfo(name, _int(_xml.text_of(elem, "ALTVCHID")))
        open_names = ", ".join(sorted(n for n, _ in found))[:200]
        raise StopSource(f"company {self.settings.company!r} is not open in TallyPrime at {self.settings.url} "
                         f"(open: {open_names})", system="erp")

    def _walk(self, since: datetime | None, until: datetime | None, *,
              pairs_only: bool) -> Iterator[tuple[ET.Element, int, str]]:
        """Receipt vouchers from `since` to before `until`, ascending by AlterID, window by window.

        A bound before 2000 is a synthetic AlterID time (the cursor); a later one is a calendar
        time (`backfill --since 2026-01-01`, `reconcile --since`) and filters by voucher DATE,
        with a day of slack each side (posting dates are local dates): a superset, which the
        ledger deduplicates, read over every AlterID.
        """
        after, day_from, day_to = 0, None, None
        if since is not None:
            if is_calendar(since):
                day_from = (since - timedelta(days=1)).date()
            else:
                after = max(0, first_alterid_from(since) - 1)
        limit = self.company().last_alter_id
        if limit is not None and after > limit:
            # The cursor is ahead of the company's last AlterID: the books went back (restored from
            # a backup, rewritten). New vouchers may take AlterIDs below the cursor: read them all.
            log.warning("tally.alterids_went_back", cursor_alter_id=after, company_alter_id=limit,
                        hint="restored company? re-reading every receipt; the ledger drops what it decided")
            after = 0
        if until is not None:
            if is_calendar(until):
                day_to = (until + timedelta(days=1)).date()
            else:
                below = first_alterid_from(until) - 1
                limit = below if limit is None else min(limit, below)
        lo = after
        while limit is None or lo < limit:
            hi = None if limit is None else min(lo + self.settings.page_size, limit)
            root = self.http.post(_xml.voucher_request(self.settings.company, lo, hi, extra_fetch=self._extra_fetch,
                                                       pairs_only=pairs_only),
                                  "receipt pairs" if pairs_only else "receipts")
            batch: list[tuple[int, str, ET.Element]] = []
            for v in root.iter():
                if v.tag.upper() != "VOUCHER":
                    continue
                guid = _xml.text_of(v, "GUID") or v.get("REMOTEID") or ""
                alterid = _int(_xml.text_of(v, "ALTERID"))
                if not guid or alterid is None:
                    log.warning("tally.voucher_unplaceable", guid=guid or None, reason="no GUID or ALTERID")
                    continue
                if alterid <= lo or (hi is not None and alterid > hi):
                    continue   # outside the window we asked for: never trust a filter alone
                if (day_from or day_to) and not _in_days(_xml.text_of(v, "DATE"), day_from, day_to):
                    continue
                batch.append((alterid, guid, v))
            batch.sort(key=lambda t: (t[0], t[1]))
            for alterid, guid, v in batch:
                yield v, alterid, guid
            if hi is None:
                return
            lo = hi

    # --- normalising -------------------------------------------------------------------------
    def _event_for(self, v: ET.Element, alterid: int, guid: str, pos: Position, ctx: SourceContext) -> FeeEvent | None:
        version = str(alterid)
        if ctx.seen(guid, version):
            return Unchanged(doc_id=guid, position=pos, version=version)
        raw = {k: _xml.text_of(v, k.upper()) for k in ("Guid", "AlterId", "MasterId", "Date", "VoucherTypeName",
                                                         "VoucherNumber", "PartyLedgerName", "Reference")}
        if _xml.yes(_xml.text_of(v, "ISOPTIONAL")):
            if ctx.recall(_MEMO + guid):
                return PaymentCancelled(doc_id=guid, position=pos, version=version, raw=raw)
            return None   # a memorandum voucher is not a receipt
        if _xml.yes(_xml.text_of(v, "ISCANCELLED")):
            return PaymentCancelled(doc_id=guid, position=pos, version=version, raw=raw)
        where = f"voucher {raw['VoucherTypeName'] or '?'} {raw['VoucherNumber'] or '?'} (GUID {guid})"
        try:
            event = self._normalise(v, guid, pos, version, raw)
        except ConflictError as exc:
            return Malformed(doc_id=guid, position=pos, version=version, problem=f"{where}: {exc.detail}",
                             location=where, raw=raw)
        except (TypeError, ValueError) as exc:
            return Malformed(doc_id=guid, position=pos, version=version,
                             problem=f"{where}: {type(exc).__name__}: {exc}", location=where, raw=raw)
        if not ctx.recall(_MEMO + guid):
            ctx.remember(_MEMO + guid, "1")
        return event

    def _normalise(self, v: ET.Element, guid: str, pos: Position, version: str,
                   raw: dict[str, Any]) -> PaymentReceived:
        party = _xml.text_of(v, "PARTYLEDGERNAME")
        if not party:
            raise ConflictError("malformed_document", "PARTYLEDGERNAME (the student's ledger) is empty",
                                definitive=False)
        entries = v.findall("ALLLEDGERENTRIES.LIST") or v.findall("LEDGERENTRIES.LIST")
        party_lines: list[ET.Element] = []
        debits: list[tuple[Decimal, str]] = []
        amount = Decimal(0)
        report = _xml.is_report_style([_xml.text_of(e, "AMOUNT") for e in entries])
        for e in entries:
            ledger = _xml.text_of(e, "LEDGERNAME") or ""
            value = _xml.credit_value(_xml.text_of(e, "AMOUNT"), _xml.yes(_xml.text_of(e, "ISDEEMEDPOSITIVE")),
                                      report=report, field=f"AMOUNT of ledger {ledger!r}")
            if ledger.casefold() == party.casefold():
                party_lines.append(e)
                amount += value
            elif value < 0:
                debits.append((-value, ledger))
        if not party_lines:
            raise ConflictError("malformed_document", f"no ledger line for the party {party!r}", definitive=False)
        if amount <= 0:
            raise ConflictError("malformed_document", f"the party {party!r} is not credited in this receipt "
                                f"(net {amount}); a refund or a wrong voucher type?", definitive=False)
        refs: list[Reference] = []
        for e in party_lines:
            for b in e.findall("BILLALLOCATIONS.LIST"):
                name = _xml.text_of(b, "NAME") or ""
                kind = (_xml.text_of(b, "BILLTYPE") or "").casefold()
                if not name or kind == "on account":
                    continue
                bill_amount = _xml.parse_amount(_xml.text_of(b, "AMOUNT"), field=f"bill {name!r} AMOUNT").magnitude
                if bill_amount == 0:
                    continue
                if name.lower().startswith("plan:") and name[5:].strip():
                    refs.append(Reference(invoice_id=None, amount=bill_amount, doctype="Bill", lms_plan_id=name[5:].strip()))
                else:
                    refs.append(Reference(invoice_id=name, amount=bill_amount, doctype="Bill"))
        method = max(debits)[1] if debits else None
        return PaymentReceived(
            doc_id=guid, position=pos, version=version, customer=party, customer_email=self._email(v),
            amount=amount, currency=self.settings.currency, posting_date=_xml.tally_date(_xml.text_of(v, "DATE")),
            method=method or None, reference_number=_xml.text_of(v, "REFERENCE") or None, references=tuple(refs),
            unallocated=amount - sum((r.amount for r in refs), Decimal(0)), raw=raw)

    def _email(self, v: ET.Element) -> str | None:
        """The UDF named by `customer_email_field`: `<NAME>`, `<NAME.LIST><NAME>` or `<UDF:NAME.LIST>` forms."""
        field = self.settings.customer_email_field
        if not field:
            return None
        wanted = {field.upper(), f"UDF_{field.upper()}"}
        for child in v:
            tag = child.tag.upper()
            base = tag[:-5] if tag.endswith(".LIST") else tag
            if base not in wanted:
                continue
            texts = [(t.text or "").strip() for t in child.iter()]
            value = next((t for t in texts if t), "")
            if value:
                return value
        return None
