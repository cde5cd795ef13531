"""TallyPrime XML: request envelopes, answer decoding (UTF-16/UTF-8), amounts with Tally's sign rules.

Pure functions, no I/O; `connectors.tally._http` sends what these build and hands back what
they parse.

Facts relied on (erp-apis.md §4): requests are `POST` XML envelopes; answers come in UTF-16
(with BOM) or UTF-8; object XML writes a debit as a negative `AMOUNT` with
`ISDEEMEDPOSITIVE=Yes` and a credit as a positive one; report output uses thousands
separators, parentheses and `Dr`/`Cr` suffixes. Real exports also carry character
references Tally itself cannot avoid (`&#4;`) and undeclared `UDF:` element prefixes, both of
which a strict XML parser refuses; `clean_xml` removes them before parsing.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # noqa: S405 - DOCTYPE refused before parsing (no entity expansion)
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from xml.sax.saxutils import escape

from sync.errors import ConflictError, SourceError, TransientError
from sync.money import to_decimal

COLLECTION_RECEIPTS = "FeesyncReceipts"
COLLECTION_PAIRS = "FeesyncReceiptIds"
COLLECTION_COMPANIES = "FeesyncCompanies"

VOUCHER_FETCH = ("GUID", "ALTERID", "MASTERID", "DATE", "VOUCHERTYPENAME", "VOUCHERNUMBER", "REFERENCE",
                 "NARRATION", "PARTYLEDGERNAME", "ISCANCELLED", "ISOPTIONAL", "ALLLEDGERENTRIES.LIST",
                 "BILLALLOCATIONS")
PAIRS_FETCH = ("GUID", "ALTERID", "DATE", "VOUCHERTYPENAME", "ISCANCELLED", "ISOPTIONAL")


# --- requests ------------------------------------------------------------------------------------
def _envelope(collection_id: str, company: str | None, tdl: str) -> str:
    company_var = f"<SVCURRENTCOMPANY>{escape(company)}</SVCURRENTCOMPANY>" if company else ""
    return ("<ENVELOPE><HEADER><VERSION>1</VERSION><TALLYREQUEST>Export</TALLYREQUEST><TYPE>Collection</TYPE>"
            f"<ID>{escape(collection_id)}</ID></HEADER><BODY><DESC><STATICVARIABLES>"
            f"<SVEXPORTFORMAT>$$SysName:XML</SVEXPORTFORMAT>{company_var}</STATICVARIABLES>"
            f"<TDL><TDLMESSAGE>{tdl}</TDLMESSAGE></TDL></DESC></BODY></ENVELOPE>")


def alter_window(after: int, upto: int | None) -> str:
    """The AlterID filter formula: `$AlterID > after` and, when bounded, `$AlterID <= upto`."""
    formula = f"$AlterID > {int(after)}"
    if upto is not None:
        formula += f" AND $AlterID <= {int(upto)}"
    return formula


def voucher_request(company: str, after: int, upto: int | None, *, extra_fetch: tuple[str, ...] = (),
                    pairs_only: bool = False) -> str:
    """Receipts (any voucher type whose parent chain reaches Receipt) with `after < AlterID <= upto`."""
    cid = COLLECTION_PAIRS if pairs_only else COLLECTION_RECEIPTS
    fetch = ", ".join((PAIRS_FETCH if pairs_only else VOUCHER_FETCH) + tuple(extra_fetch))
    tdl = (f'<COLLECTION NAME="{cid}" ISMODIFY="No"><TYPE>Voucher</TYPE><FETCH>{escape(fetch)}</FETCH>'
           f"<FILTER>FeesyncIsReceipt, FeesyncAlterWindow</FILTER></COLLECTION>"
           '<SYSTEM TYPE="Formulae" NAME="FeesyncIsReceipt">$$IsReceipt:$VoucherTypeName</SYSTEM>'
           f'<SYSTEM TYPE="Formulae" NAME="FeesyncAlterWindow">{escape(alter_window(after, upto))}</SYSTEM>')
    return _envelope(cid, company, tdl)


def company_request() -> str:
    """The loaded companies with their last voucher AlterID (`$AltVchId`)."""
    tdl = (f'<COLLECTION NAME="{COLLECTION_COMPANIES}" ISMODIFY="No"><TYPE>Company</TYPE>'
           "<FETCH>NAME, GUID, ALTVCHID, ALTMSTID</FETCH></COLLECTION>")
    return _envelope(COLLECTION_COMPANIES, None, tdl)


def encode_request(text: str, encoding: str) -> tuple[bytes, str]:
    """Body bytes and Content-Type: UTF-16 little-endian with a BOM, or UTF-8."""
    if encoding == "utf-16":
        return b"\xff\xfe" + text.encode("utf-16-le"), "text/xml;charset=utf-16"
    return text.encode("utf-8"), "text/xml;charset=utf-8"


# --- answers -------------------------------------------------------------------------------------
_DECLARED = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_CHARSET = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9._-]+)", re.I)
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>")
# Character references to code points XML 1.0 forbids (Tally writes e.g. `&#4;` in narrations).
_BAD_CHAR_REF = re.compile(r"&#(?:x0*(?:[0-8bcef]|1[0-9a-f])|0*(?:[0-8]|1[124-9]|2[0-9]|3[01]));", re.I)
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_UDF_PREFIX = re.compile(r"<(/?)UDF:", re.I)


def decode_answer(raw: bytes, content_type: str | None = None) -> str:
    """Bytes of an answer -> text: BOM first, then UTF-16 without BOM, the XML declaration, the header, UTF-8."""
    if raw.startswith(b"\xff\xfe"):
        codec, body = "utf-16-le", raw[2:]
    elif raw.startswith(b"\xfe\xff"):
        codec, body = "utf-16-be", raw[2:]
    elif raw.startswith(b"\xef\xbb\xbf"):
        codec, body = "utf-8", raw[3:]
    elif len(raw) >= 2 and raw[0] == 0 and raw[1] != 0:
        codec, body = "utf-16-be", raw
    elif len(raw) >= 2 and raw[1] == 0 and raw[0] != 0:
        codec, body = "utf-16-le", raw
    else:
        declared = _DECLARED.match(raw)
        header = _CHARSET.search(content_type or "")
        codec = (declared.group(1).decode("ascii") if declared else header.group(1) if header else "utf-8")
        body = raw
        if codec.lower().replace("-", "").replace("_", "") in {"utf16", "ucs2"}:
            codec = "utf-8"   # a declaration claiming UTF-16 on bytes that are not: trust the bytes
    try:
        return body.decode(codec)
    except (UnicodeDecodeError, LookupError) as exc:
        raise SourceError(f"TallyPrime answered bytes that are not {codec}: {exc}") from None


def clean_xml(text: str) -> str:
    """Make Tally's XML parseable: no declaration, no forbidden characters, `UDF:` prefixes flattened."""
    text = _XML_DECL.sub("", text, count=1)
    text = _BAD_CHAR_REF.sub("", text)
    text = _BAD_CHARS.sub("", text)
    return _UDF_PREFIX.sub(lambda m: f"<{m.group(1)}UDF_", text)


def parse_answer(text: str) -> ET.Element:
    """Parse a non-empty answer into its root element; Tally's own error answers become SourceError."""
    cleaned = clean_xml(text)
    if "<!DOCTYPE" in cleaned.upper():
        raise SourceError("TallyPrime answer carries a DOCTYPE; refused")
    try:
        root = ET.fromstring(cleaned)  # noqa: S314 - DOCTYPE/entities refused above
    except ET.ParseError as exc:
        raise TransientError(f"TallyPrime answered XML that does not parse ({exc})") from None
    if root.tag.upper() == "RESPONSE":   # e.g. "Unknown Request, cannot be processed"
        raise SourceError(f"TallyPrime refused the request: {(root.text or '').strip()[:200]}")
    if root.tag.upper() != "ENVELOPE":
        raise SourceError(f"TallyPrime answered <{root.tag}>, not an ENVELOPE")
    errors = [(e.text or "").strip() for e in root.iter() if e.tag.upper() == "LINEERROR" and (e.text or "").strip()]
    status = root.find("HEADER/STATUS")
    if errors or (status is not None and (status.text or "").strip() not in ("", "1")):
        detail = "; ".join(errors)[:300] or f"STATUS {(status.text or '').strip() if status is not None else '?'}"
        raise SourceError(f"TallyPrime reported an error: {detail}")
    return root


# --- values --------------------------------------------------------------------------------------
def text_of(elem: ET.Element, tag: str) -> str | None:
    """Text of a direct child (stripped), or None when absent."""
    child = elem.find(tag)
    if child is None:
        return None
    return (child.text or "").strip()


def yes(value: str | None) -> bool | None:
    if value is None or value == "":
        return None
    return value.strip().lower() in ("yes", "true", "1")


def tally_date(value: str | None) -> date:
    """`yyyymmdd` (object XML) or ISO `yyyy-mm-dd`."""
    text = (value or "").strip()
    try:
        if re.fullmatch(r"\d{8}", text):
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        return date.fromisoformat(text)
    except ValueError:
        raise ConflictError("malformed_document", f"DATE {text[:20]!r} is not a Tally date", definitive=False) from None


@dataclass(frozen=True)
class Amount:
    """An amount as Tally printed it: magnitude plus what the text itself says about its side."""

    magnitude: Decimal
    negative: bool            # a minus sign (raw object XML: debit)
    parenthesised: bool       # report style "(1,234.50)"
    side: str | None          # "Dr" / "Cr" when suffixed


_DRCR = re.compile(r"\s*(?<![a-z])(dr|cr)\.?\s*$", re.I)
_CURRENCY = re.compile(r"^(?:[^\W\d_]+\.?|[^\w\s\-(.,])\s*")   # "Rs.", "PKR", "₹", "$"


def parse_amount(text: str | None, *, field: str = "AMOUNT") -> Amount:
    """Parse `-1234.50`, `1,234.50`, `(1,234.50)`, `1,234.50 Dr`, `₹ 1,234.50 Cr`, `$10 @ ₹ 80/$ = ₹ 800`."""
    raw = (text or "").strip()
    if not raw:
        return Amount(Decimal(0), False, False, None)
    t = raw.split("=")[-1].strip()   # forex: "<foreign> @ <rate> = <base>" -> the base-currency part
    side = None
    m = _DRCR.search(t)
    if m:
        side = m.group(1).capitalize()
        t = t[: m.start()].strip()
    negative = parens = False
    minus_signs = 0
    for _ in range(3):   # sign, parentheses and currency symbols, in whatever order Tally put them
        if re.match(r"(?i)(dr|cr)\b", t):   # Tally puts the side after the amount; before it, which is meant?
            raise ConflictError("malformed_document", f"{field} {raw[:40]!r}: Dr/Cr before the amount",
                                definitive=False)
        t = _CURRENCY.sub("", t).strip()
        if t.startswith("-"):
            negative, t, minus_signs = not negative, t[1:].strip(), minus_signs + 1
        elif t.startswith("(") and t.endswith(")"):
            parens, t = True, t[1:-1].strip()
    value = to_decimal(t, field=field)
    if value < 0:
        negative, value, minus_signs = not negative, -value, minus_signs + 1
    if minus_signs > 1 or (minus_signs and parens):
        # two ways of saying "negative" at once: cancelling them would guess
        raise ConflictError("malformed_document", f"{field} {raw[:40]!r}: more than one negative sign "
                            "(a minus and parentheses, or two minus signs)", definitive=False)
    return Amount(value, negative, parens, side)


def credit_value(amount_text: str | None, deemed_positive: bool | None, *, report: bool = False,
                 field: str = "AMOUNT") -> Decimal:
    """A ledger line as a signed credit: positive when the ledger is credited, negative when debited.

    Which side, in order of authority: a `Dr`/`Cr` suffix; `ISDEEMEDPOSITIVE` (Yes = debit);
    without either, report convention when `report` (the voucher's amounts are report-formatted)
    or the value is parenthesised: debits plain, credits in parentheses or negative; else the raw
    object-XML sign (negative = debit).
    """
    a = parse_amount(amount_text, field=field)
    if a.side is not None:
        debit = a.side == "Dr"
    elif deemed_positive is not None:
        debit = deemed_positive
    elif report or a.parenthesised:
        debit = not (a.parenthesised or a.negative)
    else:
        debit = a.negative
    return -a.magnitude if debit else a.magnitude


def is_report_style(amount_texts: list[str | None]) -> bool:
    """Report output parenthesises one side; a voucher with any parenthesised amount is in report style."""
    return any(parse_amount(t).parenthesised for t in amount_texts if t)
