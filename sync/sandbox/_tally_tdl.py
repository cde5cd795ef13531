"""The TallyPrime fake's request side (private; see `sync.sandbox.tally`): envelope, inline TDL, filter formulas.

Only what a collection export needs is understood: `HEADER` (`TALLYREQUEST=Export`,
`TYPE=Collection`, `ID`), `STATICVARIABLES/SVCURRENTCOMPANY`, and an inline
`TDL/TDLMESSAGE/COLLECTION NAME=<ID>` with `TYPE`, `FETCH` and `FILTER`/`FILTERS` naming
`SYSTEM TYPE="Formulae"` definitions. Formulas are a small language:

    expr   := and ( "OR" and )*
    and    := unary ( "AND" unary )*
    unary  := "NOT" unary | "(" expr ")" | atom
    atom   := $$IsReceipt:$VoucherTypeName   (IsSales, IsPayment, IsPurchase, IsJournal, IsContra,
                                              IsCreditNote, IsDebitNote likewise)
            | $Method [op literal]           op: = == != <> > >= < <=
            | Yes | No | number | "string"

`$Method` is AlterID, MasterID, VoucherTypeName, VoucherNumber, PartyLedgerName, Date,
IsCancelled, IsOptional or Reference (case-insensitive). Anything else is a `TdlError`, which
the server answers as a Tally `LINEERROR` - so a misspelt filter fails loudly in tests instead
of matching everything.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # noqa: S405 - the fake parses its own clients' requests on loopback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class TdlError(Exception):
    """A request the fake (like Tally) cannot process; the text becomes a LINEERROR."""


class UnknownRequest(Exception):
    """Not an export request at all: Tally answers `<RESPONSE>Unknown Request, cannot be processed</RESPONSE>`."""


@dataclass
class CollectionRequest:
    collection_id: str
    company: str | None
    type: str                                  # "Voucher" | "Company"
    fetch: set[str] = field(default_factory=set)   # upper-case names; "*" = everything
    filters: list[str] = field(default_factory=list)   # formula texts, all must hold


def decode_request(raw: bytes) -> tuple[str, str]:
    """(text, encoding) where encoding is "utf-16" or "utf-8": the answer goes back in the same one."""
    if raw.startswith(b"\xff\xfe"):
        return raw[2:].decode("utf-16-le"), "utf-16"
    if raw.startswith(b"\xfe\xff"):
        return raw[2:].decode("utf-16-be"), "utf-16"
    if len(raw) >= 2 and raw[1] == 0 and raw[0] != 0:
        return raw.decode("utf-16-le"), "utf-16"
    if len(raw) >= 2 and raw[0] == 0 and raw[1] != 0:
        return raw.decode("utf-16-be"), "utf-16"
    return raw.decode("utf-8-sig"), "utf-8"


def _child_text(elem: ET.Element | None, path: str) -> str:
    if elem is None:
        return ""
    found = elem.find(path)
    return (found.text or "").strip() if found is not None else ""


def _ci_find(elem: ET.Element, tag: str) -> list[ET.Element]:
    return [c for c in elem if c.tag.upper() == tag]


def parse_request(text: str) -> CollectionRequest:
    """Parse an export envelope; raises UnknownRequest or TdlError."""
    text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text)
    if "<!DOCTYPE" in text.upper():
        raise UnknownRequest("DOCTYPE")
    try:
        root = ET.fromstring(text)  # noqa: S314 - DOCTYPE refused above
    except ET.ParseError as exc:
        raise UnknownRequest(str(exc)) from None
    if root.tag.upper() != "ENVELOPE":
        raise UnknownRequest(root.tag)
    header = next(iter(_ci_find(root, "HEADER")), None)
    if header is None:
        raise UnknownRequest("no HEADER")
    values = {c.tag.upper(): (c.text or "").strip() for c in header}
    if values.get("TALLYREQUEST", "").lower() != "export":
        raise UnknownRequest("not an export")
    if values.get("TYPE", "").lower() != "collection":
        raise TdlError(f"Request TYPE {values.get('TYPE')!r} is not supported by the fake (Collection only)")
    if values.get("VERSION") not in ("1", None):
        raise TdlError(f"Unsupported VERSION {values.get('VERSION')!r}")
    cid = values.get("ID", "")
    desc = root.find("BODY/DESC")
    company = None
    statics = desc.find("STATICVARIABLES") if desc is not None else None
    if statics is not None:
        for c in statics:
            if c.tag.upper() == "SVCURRENTCOMPANY":
                company = (c.text or "").strip() or None
    tdl = desc.find("TDL/TDLMESSAGE") if desc is not None else None
    if tdl is None:
        raise TdlError(f"Could not find Collection '{cid}'")
    formulas: dict[str, str] = {}
    for s in _ci_find(tdl, "SYSTEM"):
        if (s.get("TYPE") or "").lower() in ("formulae", "formula") and s.get("NAME"):
            formulas[s.get("NAME", "").lower()] = (s.text or "").strip()
    coll = next((c for c in _ci_find(tdl, "COLLECTION") if (c.get("NAME") or "").lower() == cid.lower()), None)
    if coll is None:
        raise TdlError(f"Could not find Collection '{cid}'")
    ctype = next((((c.text or "").strip()) for c in _ci_find(coll, "TYPE")), "")
    if ctype.lower() in ("voucher", "vouchers"):
        ctype = "Voucher"
    elif ctype.lower() == "company":
        ctype = "Company"
    else:
        raise TdlError(f"Collection TYPE {ctype!r} is not supported by the fake")
    fetch: set[str] = set()
    for f in _ci_find(coll, "FETCH") + _ci_find(coll, "NATIVEMETHOD"):
        fetch.update(p.strip().upper() for p in (f.text or "").split(",") if p.strip())
    if coll.get("FETCH"):
        fetch.update(p.strip().upper() for p in coll.get("FETCH", "").split(",") if p.strip())
    filters: list[str] = []
    for f in _ci_find(coll, "FILTER") + _ci_find(coll, "FILTERS"):
        for name in (p.strip() for p in (f.text or "").split(",")):
            if not name:
                continue
            if name.lower() not in formulas:
                raise TdlError(f"Formula '{name}' is not defined")
            filters.append(formulas[name.lower()])
    return CollectionRequest(cid, company, ctype, fetch, filters)


# --- formulas --------------------------------------------------------------------------------------
_TOKEN = re.compile(r"""\s*(?:(?P<fn>\$\$\w+:\$\w+)|(?P<method>\$\w+)|(?P<op>==|!=|<>|>=|<=|=|>|<)|(?P<lp>\()|(?P<rp>\))|"""
                    r"""(?P<str>"[^"]*")|(?P<num>-?\d+(?:\.\d+)?)|(?P<word>[A-Za-z_]+))""")
PREDICATES = {"isreceipt": "Receipt", "issales": "Sales", "ispayment": "Payment", "ispurchase": "Purchase",
              "isjournal": "Journal", "iscontra": "Contra", "iscreditnote": "Credit Note",
              "isdebitnote": "Debit Note"}
METHODS = {"alterid", "masterid", "vouchertypename", "vouchernumber", "partyledgername", "date", "iscancelled",
           "isoptional", "reference"}


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise TdlError(f"Cannot evaluate formula near {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


Getter = Callable[[str], Any]        # method name (lower) -> value of the object
RootOf = Callable[[str], str | None]   # voucher type name -> predefined root type


def compile_formula(text: str) -> Callable[[Getter, RootOf], bool]:
    """Parse once; the result evaluates the formula for one object."""
    toks = _tokens(text)
    pos = 0

    def peek() -> tuple[str, str] | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> tuple[str, str]:
        nonlocal pos
        if pos >= len(toks):
            raise TdlError(f"Formula {text!r} ends early")
        pos += 1
        return toks[pos - 1]

    def literal(tok: tuple[str, str]) -> Any:
        kind, val = tok
        if kind == "num":
            return float(val)
        if kind == "str":
            return val[1:-1]
        if kind == "word" and val.lower() in ("yes", "no"):
            return val.lower() == "yes"
        raise TdlError(f"Expected a value in formula {text!r}, got {val!r}")

    def atom() -> Callable[[Getter, RootOf], Any]:
        kind, val = take()
        if kind == "lp":
            inner = expr()
            if take()[0] != "rp":
                raise TdlError(f"Unbalanced parentheses in {text!r}")
            return inner
        if kind == "fn":
            fname, arg = val[2:].split(":", 1)
            root_type = PREDICATES.get(fname.lower())
            if root_type is None or arg.lower() != "$vouchertypename":
                raise TdlError(f"Function '{val}' is not supported by the fake")
            return lambda get, root_of: root_of(str(get("vouchertypename"))) == root_type
        if kind == "method":
            name = val[1:].lower()
            if name not in METHODS:
                raise TdlError(f"Unknown method '{val}'")
            nxt = peek()
            if nxt is not None and nxt[0] == "op":
                op = take()[1]
                rhs = literal(take())
                return lambda get, root_of: _compare(get(name), op, rhs)
            return lambda get, root_of: bool(get(name))
        if kind in ("num", "str") or (kind == "word" and val.lower() in ("yes", "no")):
            v = literal((kind, val))
            return lambda get, root_of: v
        raise TdlError(f"Cannot evaluate {val!r} in formula {text!r}")

    def unary() -> Callable[[Getter, RootOf], Any]:
        nxt = peek()
        if nxt is not None and nxt[0] == "word" and nxt[1].upper() == "NOT":
            take()
            inner = unary()
            return lambda get, root_of: not inner(get, root_of)
        return atom()

    def conj() -> Callable[[Getter, RootOf], Any]:
        parts = [unary()]
        while (nxt := peek()) is not None and nxt[0] == "word" and nxt[1].upper() == "AND":
            take()
            parts.append(unary())
        return lambda get, root_of: all(p(get, root_of) for p in parts)

    def expr() -> Callable[[Getter, RootOf], Any]:
        parts = [conj()]
        while (nxt := peek()) is not None and nxt[0] == "word" and nxt[1].upper() == "OR":
            take()
            parts.append(conj())
        return lambda get, root_of: any(p(get, root_of) for p in parts)

    result = expr()
    if pos != len(toks):
        raise TdlError(f"Unexpected {toks[pos][1]!r} in formula {text!r}")
    return lambda get, root_of: bool(result(get, root_of))


def _compare(left: Any, op: str, right: Any) -> bool:
    if isinstance(right, float):
        try:
            left = float(left)
        except (TypeError, ValueError):
            return False
    elif isinstance(right, bool):
        left = bool(left)
    else:
        left, right = str(left).lower(), str(right).lower()
    if op in ("=", "=="):
        return left == right
    if op in ("!=", "<>"):
        return left != right
    if op == ">":
        return left > right
    if op == ">=":
        return left >= right
    if op == "<":
        return left < right
    return left <= right
