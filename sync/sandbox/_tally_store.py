"""The TallyPrime fake's books (private; see `sync.sandbox.tally`): vouchers, AlterIDs, mutations, XML rendering."""

from __future__ import annotations

import copy
import re
import threading
import uuid
from datetime import date
from decimal import Decimal
from typing import Any
from xml.sax.saxutils import escape, quoteattr

PREDEFINED_TYPES = ("Receipt", "Payment", "Sales", "Purchase", "Journal", "Contra", "Credit Note", "Debit Note",
                    "Memorandum", "Reversing Journal", "Sales Order", "Purchase Order", "Delivery Note",
                    "Receipt Note", "Stock Journal", "Physical Stock")
AMOUNT_STYLES = ("raw", "report", "drcr")
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _dec(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value).replace(",", ""))


def _date(value: Any) -> date:
    if isinstance(value, date):
        return value
    text = str(value).strip()
    if re.fullmatch(r"\d{8}", text):
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    return date.fromisoformat(text)


def xml_text(value: Any) -> str:
    """Escape like Tally: markup escaped, control characters written as (XML-illegal) `&#N;` references."""
    return _CTRL.sub(lambda m: f"&#{ord(m.group())};", escape(str(value)))


def format_amount(value: Decimal, style: str) -> str:
    """Raw object XML: credit `1234.50`, debit `-1234.50`. Report: debit `1,234.50`, credit `(1,234.50)`.
    Dr/Cr: `1,234.50 Dr` / `1,234.50 Cr`."""
    if style == "raw":
        return f"{value:.2f}"
    mag = format(abs(value), ",.2f")
    if style == "report":
        return f"({mag})" if value > 0 else mag
    return f"{mag} {'Cr' if value > 0 else 'Dr'}" if value != 0 else mag


class TallyBooks:
    """One company's vouchers. Every mutation takes a new, higher AlterID (company-wide counter)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.lock = threading.RLock()
        self.company: str = data.get("company", "Demo Institute")
        self.other_companies: list[str] = list(data.get("other_companies", []))
        self.company_guid: str = data.get("company_guid") or str(uuid.uuid5(uuid.NAMESPACE_URL, f"tally:{self.company}"))
        self.voucher_types: dict[str, str] = {t: t for t in PREDEFINED_TYPES}
        self.voucher_types.update(data.get("voucher_types", {}))
        self.amount_style: str = data.get("amount_style", "raw")
        if self.amount_style not in AMOUNT_STYLES:
            raise ValueError(f"amount_style must be one of {AMOUNT_STYLES}")
        self.emit_deemed_positive: bool = bool(data.get("emit_deemed_positive", True))
        self.vouchers: dict[str, dict[str, Any]] = {}
        self.last_alter_id = int(data.get("last_alter_id", 0))
        self.last_master_id = 0
        self.deleted_alter_ids: list[int] = []
        for raw in data.get("vouchers", []):
            self._insert(copy.deepcopy(raw), keep_ids=True)

    # --- identity ---------------------------------------------------------------------------
    def _next_alter(self) -> int:
        self.last_alter_id += 1
        return self.last_alter_id

    def root_type(self, name: str) -> str | None:
        seen: set[str] = set()
        while name not in seen:
            seen.add(name)
            parent = self.voucher_types.get(name)
            if parent is None:
                return None
            if parent == name:
                return name
            name = parent
        return None

    def _next_number(self, vtype: str) -> str:
        nums = [int(v["number"]) for v in self.vouchers.values() if v["type"] == vtype and str(v["number"]).isdigit()]
        return str(max(nums, default=0) + 1)

    def _insert(self, v: dict[str, Any], *, keep_ids: bool) -> dict[str, Any]:
        if v.get("type", "Receipt") not in self.voucher_types:
            raise ValueError(f"unknown voucher type {v.get('type')!r}; declare it in voucher_types")
        master = int(v["master_id"]) if keep_ids and v.get("master_id") else self.last_master_id + 1
        self.last_master_id = max(self.last_master_id, master)
        if keep_ids and v.get("alter_id"):
            alter = int(v["alter_id"])
            self.last_alter_id = max(self.last_alter_id, alter)
        else:
            alter = self._next_alter()
        guid = v.get("guid") or f"{self.company_guid}-{master:08x}"
        if guid in self.vouchers:
            raise ValueError(f"duplicate GUID {guid}")
        vtype = v.get("type", "Receipt")
        voucher = {
            "guid": guid, "alter_id": alter, "master_id": master, "date": _date(v.get("date", "2026-11-02")),
            "type": vtype, "number": str(v["number"]) if v.get("number") is not None else self._next_number(vtype),
            "reference": v.get("reference"), "narration": v.get("narration"), "party": v.get("party"),
            "cancelled": bool(v.get("cancelled", False)), "optional": bool(v.get("optional", False)),
            "udf": dict(v.get("udf") or {}),
            "entries": [{"ledger": e["ledger"], "amount": _dec(e["amount"]),
                         "bills": [{"name": b["name"], "type": b.get("type", "Agst Ref"), "amount": _dec(b["amount"])}
                                   for b in e.get("bills", [])]} for e in v.get("entries", [])],
        }
        self.vouchers[guid] = voucher
        return voucher

    # --- mutations ----------------------------------------------------------------------------
    @staticmethod
    def receipt_entries(party: str, amount: Any, ledger: str, bills: list[Any] | None) -> list[dict[str, Any]]:
        amt = _dec(amount)
        norm_bills = []
        for b in bills or []:
            if isinstance(b, dict):
                norm_bills.append({"name": b["name"], "type": b.get("type", "Agst Ref"), "amount": _dec(b["amount"])})
            else:
                name, bill_amount = b
                norm_bills.append({"name": name, "type": "Agst Ref", "amount": _dec(bill_amount)})
        return [{"ledger": party, "amount": amt, "bills": norm_bills}, {"ledger": ledger, "amount": -amt, "bills": []}]

    def add(self, voucher: dict[str, Any]) -> str:
        with self.lock:
            return self._insert(copy.deepcopy(voucher), keep_ids=False)["guid"]

    def alter(self, guid: str, changes: dict[str, Any]) -> int:
        with self.lock:
            v = self.vouchers[guid]
            rebuild = any(k in changes for k in ("amount", "ledger", "bills", "party"))
            if rebuild and "entries" not in changes:
                party_line = next((e for e in v["entries"] if e["ledger"] == v["party"]), None)
                amount = changes.get("amount", party_line["amount"] if party_line else 0)
                debit = next((e["ledger"] for e in v["entries"] if e["ledger"] != v["party"]), "Cash")
                bills = changes.get("bills", party_line["bills"] if party_line else [])
                party = changes.get("party", v["party"])
                v["entries"] = self.receipt_entries(party, amount, changes.get("ledger", debit), bills)
            for key, value in changes.items():
                if key in ("amount", "ledger", "bills"):
                    continue
                if key == "entries":
                    v["entries"] = self._insert_entries(value)
                elif key == "date":
                    v["date"] = _date(value)
                elif key == "udf":
                    v["udf"].update(value)
                elif key in ("party", "reference", "narration", "number", "type", "cancelled", "optional"):
                    v[key] = value
                else:
                    raise KeyError(f"cannot alter {key!r}")
            v["alter_id"] = self._next_alter()
            return v["alter_id"]

    @staticmethod
    def _insert_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"ledger": e["ledger"], "amount": _dec(e["amount"]),
                 "bills": [{"name": b["name"], "type": b.get("type", "Agst Ref"), "amount": _dec(b["amount"])}
                           for b in e.get("bills", [])]} for e in entries]

    def delete(self, guid: str) -> None:
        with self.lock:
            del self.vouchers[guid]
            self.deleted_alter_ids.append(self._next_alter())

    def renumber(self) -> list[str]:
        """Number every voucher type 1..n by (date, master id), as automatic numbering does after a
        back-dated insert; the vouchers whose number changed get new AlterIDs. Returns their GUIDs."""
        with self.lock:
            changed = []
            by_type: dict[str, list[dict[str, Any]]] = {}
            for v in self.vouchers.values():
                by_type.setdefault(v["type"], []).append(v)
            for vs in by_type.values():
                for i, v in enumerate(sorted(vs, key=lambda x: (x["date"], x["master_id"])), start=1):
                    if v["number"] != str(i):
                        v["number"] = str(i)
                        changed.append(v)
            for v in sorted(changed, key=lambda x: x["alter_id"]):
                v["alter_id"] = self._next_alter()
            return [v["guid"] for v in changed]

    # --- reading ------------------------------------------------------------------------------
    def getter(self, v: dict[str, Any]) -> Any:
        def get(name: str) -> Any:
            return {"alterid": v["alter_id"], "masterid": v["master_id"], "vouchertypename": v["type"],
                    "vouchernumber": v["number"], "partyledgername": v["party"] or "",
                    "date": v["date"].strftime("%Y%m%d"), "iscancelled": v["cancelled"],
                    "isoptional": v["optional"], "reference": v["reference"] or ""}[name]
        return get

    def render_voucher(self, v: dict[str, Any], fetch: set[str], style: str | None = None) -> str:
        """A voucher as object XML, with the fields `fetch` names (`*` = all)."""
        style = style or self.amount_style
        every = "*" in fetch

        def want(*names: str) -> bool:
            return every or any(n in fetch for n in names)

        def tag(name: str, value: Any, typ: str) -> str:
            return f'<{name} TYPE="{typ}">{xml_text(value)}</{name}>'

        parts = [f'<VOUCHER REMOTEID={quoteattr(v["guid"])} VCHKEY={quoteattr(v["guid"] + ":00000008")} '
                 f'VCHTYPE={quoteattr(v["type"])} ACTION="Create" OBJVIEW="Accounting Voucher View">']
        if want("DATE"):
            parts.append(tag("DATE", v["date"].strftime("%Y%m%d"), "Date"))
        if want("GUID"):
            parts.append(tag("GUID", v["guid"], "String"))
        if want("NARRATION") and v["narration"] is not None:
            parts.append(tag("NARRATION", v["narration"], "String"))
        if want("VOUCHERTYPENAME"):
            parts.append(tag("VOUCHERTYPENAME", v["type"], "String"))
        if want("VOUCHERNUMBER"):
            parts.append(tag("VOUCHERNUMBER", v["number"], "String"))
        if want("REFERENCE") and v["reference"] is not None:
            parts.append(tag("REFERENCE", v["reference"], "String"))
        if want("PARTYLEDGERNAME") and v["party"] is not None:
            parts.append(tag("PARTYLEDGERNAME", v["party"], "String"))
        if want("ISCANCELLED"):
            parts.append(tag("ISCANCELLED", "Yes" if v["cancelled"] else "No", "Logical"))
        if want("ISOPTIONAL"):
            parts.append(tag("ISOPTIONAL", "Yes" if v["optional"] else "No", "Logical"))
        if want("ALTERID"):
            parts.append(tag("ALTERID", f" {v['alter_id']}", "Number"))   # Tally pads numbers
        if want("MASTERID"):
            parts.append(tag("MASTERID", f" {v['master_id']}", "Number"))
        for i, (name, value) in enumerate(sorted(v["udf"].items()), start=30):
            if want(name.upper()):
                up = name.upper()
                parts.append(f'<UDF:{up}.LIST DESC="`{escape(name)}`" ISLIST="YES" TYPE="String" INDEX="{i}">'
                             f'<UDF:{up} DESC="`{escape(name)}`">{xml_text(value)}</UDF:{up}></UDF:{up}.LIST>')
        if want("ALLLEDGERENTRIES", "ALLLEDGERENTRIES.LIST", "ALLLEDGERENTRIES.*"):
            bills_too = want("BILLALLOCATIONS", "BILLALLOCATIONS.LIST", "ALLLEDGERENTRIES.BILLALLOCATIONS",
                             "BILLALLOCATIONS.*", "ALLLEDGERENTRIES.*")
            for e in v["entries"]:
                parts.append("<ALLLEDGERENTRIES.LIST>")
                parts.append(tag("LEDGERNAME", e["ledger"], "String"))
                if self.emit_deemed_positive:
                    parts.append(tag("ISDEEMEDPOSITIVE", "Yes" if e["amount"] < 0 else "No", "Logical"))
                parts.append(tag("AMOUNT", format_amount(e["amount"], style), "Amount"))
                if bills_too:
                    sign = -1 if e["amount"] < 0 else 1
                    for b in e["bills"]:
                        parts.append("<BILLALLOCATIONS.LIST>")
                        parts.append(tag("NAME", b["name"], "String"))
                        parts.append(tag("BILLTYPE", b["type"], "String"))
                        parts.append(tag("AMOUNT", format_amount(sign * abs(b["amount"]), style), "Amount"))
                        parts.append("</BILLALLOCATIONS.LIST>")
                parts.append("</ALLLEDGERENTRIES.LIST>")
        parts.append("</VOUCHER>")
        return "".join(parts)

    def render_company(self, name: str, fetch: set[str]) -> str:
        every = "*" in fetch
        ours = name == self.company
        fields = [("NAME", name, "String"), ("GUID", self.company_guid if ours else str(uuid.uuid5(
            uuid.NAMESPACE_URL, f"tally:{name}")), "String"),
            ("ALTVCHID", f" {self.last_alter_id if ours else 0}", "Number"), ("ALTMSTID", " 0", "Number")]
        inner = "".join(f'<{t} TYPE="{typ}">{xml_text(val)}</{t}>' for t, val, typ in fields if every or t in fetch)
        return f'<COMPANY NAME={quoteattr(name)} RESERVEDNAME="">{inner}</COMPANY>'

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(v) for v in sorted(self.vouchers.values(), key=lambda x: x["alter_id"])]
