"""The ERPNext fake's list query: Frappe's `fields`/`filters`/`or_filters`/`order_by` over dicts.

Semantics follow `frappe.model.db_query` on MariaDB: child columns are a LEFT JOIN (one row per
child row), a null compares as its `ifnull` fallback ('' / 0 / 0001-01-01), text compares
case-insensitively, datetimes compare as datetimes (a bare date is midnight), and without
`order_by` the row order is arbitrary (here: a fixed scramble by name, never `modified`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from functools import lru_cache
from typing import Any

from . import _erpnext_errors as errors
from ._erpnext_errors import FrappeError
from ._erpnext_schema import DocTypeMeta

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PLAIN_RE = re.compile(rf"^`?({_NAME})`?$")
_TABLE_RE = re.compile(rf"^`?tab([^`.]+)`?\.`?({_NAME})`?$")
_DOTTED_RE = re.compile(rf"^({_NAME})\.({_NAME})$")
_ALIAS_RE = re.compile(r"^(.+?)\s+as\s+`?([A-Za-z_][A-Za-z0-9_ ]*?)`?$", re.IGNORECASE)
_DT_RE = re.compile(
    r"^(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6})\d*)?)?)?"
    r"\s*(?:Z|[+-]\d{2}:?\d{2})?$"
)
_ORDER_FORBIDDEN_RE = re.compile(r"[^a-z0-9\-_ ,`'\".()]")
IMPLEMENTED_OPERATORS = frozenset(
    {"=", "!=", "<", ">", "<=", ">=", "like", "not like", "in", "not in", "between", "is"}
)
KNOWN_OPERATORS = IMPLEMENTED_OPERATORS | {
    "timespan",
    "previous",
    "next",
    "fiscal year",
    "ancestors of",
    "not ancestors of",
    "descendants of",
    "not descendants of",
    "descendants of (inclusive)",
}
_MIN_DT = datetime(1, 1, 1)  # noqa: DTZ001 - Frappe's naive fallback '0001-01-01 00:00:00'
_MIN_DATE = date(1, 1, 1)


@dataclass(frozen=True)
class Col:
    """One column of the query: `table` is None for the parent, else a table fieldname."""

    table: str | None
    column: str
    key: str


@dataclass(frozen=True)
class Cond:
    col: Col
    op: str
    value: Any


@dataclass
class ListQuery:
    fields: list[Col]
    filters: list[Cond]
    or_filters: list[Cond]
    order: list[tuple[Col, bool]] | None  # (column, descending)
    start: int = 0
    page_length: int = 20  # 0 = all
    as_dict: bool = True
    distinct: bool = False


def not_implemented(what: str) -> FrappeError:
    return FrappeError(
        "NotImplementedError",
        f"The ERPNext fake does not implement {what}",
        status=500,
        module="builtins",
        where="list",
    )


# --- parsing ------------------------------------------------------------------------------
class Resolver:
    """Turns the field spellings Frappe accepts into `Col`s for one (parent) doctype."""

    def __init__(self, registry: dict[str, DocTypeMeta], meta: DocTypeMeta) -> None:
        self.registry = registry
        self.meta = meta

    def child_meta(self, table: str) -> DocTypeMeta:
        return self.registry[self.meta.tables[table]]

    def resolve(self, spec: str, *, error: Callable[[str], FrappeError] | None = None) -> Col:
        fail = error or errors.field_not_permitted
        text = spec.strip()
        table: str | None = None
        if m := _TABLE_RE.match(text):
            doctype, column = m.groups()
            if doctype != self.meta.name:
                table = self.meta.table_for_child(doctype)
                if table is None:
                    raise fail(spec)
        elif m := _DOTTED_RE.match(text):
            table, column = m.groups()
            if table not in self.meta.tables:
                raise fail(spec)
        elif m := _PLAIN_RE.match(text):
            column = m.group(1)
        else:
            raise fail(spec)
        meta = self.child_meta(table) if table else self.meta
        if not meta.has_column(column):
            raise fail(spec)
        return Col(table, column, column)

    def type_of(self, col: Col) -> str:
        return (self.child_meta(col.table) if col.table else self.meta).type_of(col.column)


def load_json_param(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise errors.json_decode(exc) from exc


def parse_fields(resolver: Resolver, raw: Any, *, comma_fallback: bool = False) -> list[Col]:
    """`fields` as Frappe takes it: JSON list (v1) or, for get_list, also a comma list."""
    if raw in (None, "", []):
        return [Col(None, "name", "name")]
    if isinstance(raw, str):
        if raw.strip() == "*":
            raw = ["*"]
        elif comma_fallback:
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                raw = [part.strip() for part in raw.split(",")]
        else:
            raw = load_json_param(raw)
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise errors.field_not_permitted(str(raw))
    out: list[Col] = []
    for spec in raw:
        if not isinstance(spec, str):
            raise not_implemented(f"nested child fields ({json.dumps(spec)})")
        text = spec.strip()
        if text == "*":
            out.extend(Col(None, c, c) for c in resolver.meta.columns)
            continue
        alias = None
        if m := _ALIAS_RE.match(text):
            text, alias = m.group(1).strip(), m.group(2).strip()
        if "(" in text:
            raise not_implemented(f"SQL functions in fields ({spec})")
        col = resolver.resolve(text)
        out.append(Col(col.table, col.column, alias or col.column))
    return out


def parse_filters(resolver: Resolver, raw: Any) -> list[Cond]:
    raw = load_json_param(raw)
    if raw in (None, "", [], {}):
        return []
    if isinstance(raw, dict):
        raw = [{key: value} for key, value in raw.items()]
    if not isinstance(raw, list):
        raise errors.validation("Filter must be a tuple or list (in a list)", where="list")
    return [_make_cond(resolver, f) for f in raw]


def _make_cond(resolver: Resolver, f: Any) -> Cond:
    meta = resolver.meta
    if isinstance(f, dict) and f:
        key, value = next(iter(f.items()))  # Frappe reads only the first pair of such a dict
        if isinstance(value, list | tuple) and value and isinstance(value[0], str):
            f = [meta.name, key, value[0], value[1] if len(value) > 1 else None]
        else:
            f = [meta.name, key, "=", value]
    if not isinstance(f, list | tuple):
        raise errors.validation("Filter must be a tuple or list (in a list)", where="list")
    if len(f) == 3:
        f = [meta.name, *f]
    elif len(f) > 4:
        f = list(f[:4])
    elif len(f) != 4:
        raise errors.validation(
            f"Filter must have 4 values (doctype, fieldname, operator, value): {f!s}", where="list"
        )
    doctype, fieldname, op, value = f
    if not isinstance(op, str) or op.strip().lower() not in KNOWN_OPERATORS:
        raise errors.bad_operator()
    op = op.strip().lower()
    if op not in IMPLEMENTED_OPERATORS:
        raise not_implemented(f"the filter operator {op!r}")
    if not isinstance(fieldname, str):
        raise errors.field_not_permitted(str(fieldname))
    if doctype in (None, meta.name) or "." in fieldname:
        col = resolver.resolve(fieldname)
    else:
        table = meta.table_for_child(str(doctype))
        if table is None:
            raise errors.field_not_permitted(fieldname)
        col = resolver.resolve(f"{table}.{fieldname}")
    if op == "is" and str(value).lower() not in ("set", "not set"):
        raise errors.validation(f"Invalid value for operator 'is': {value}", where="list")
    return Cond(col, op, value)


def parse_order_by(resolver: Resolver, raw: Any, joined: set[str]) -> list[tuple[Col, bool]] | None:
    if raw is None or not str(raw).strip():
        return None
    text = str(raw)
    lower = text.lower()
    if "select" in lower and "from" in lower:
        raise errors.illegal_sql("Cannot use sub-query in order by")
    if _ORDER_FORBIDDEN_RE.search(lower):
        raise errors.illegal_sql()
    order: list[tuple[Col, bool]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "(" in part:
            if part.split("(", 1)[0].strip().lower() == "sleep":
                raise errors.illegal_sql(f"Cannot use {part} in order/group by")
            raise not_implemented(f"SQL functions in order_by ({part})")
        words = part.rsplit(None, 1)
        descending = len(words) == 2 and words[1].lower() == "desc"
        if len(words) == 2 and words[1].lower() in ("asc", "desc"):
            part = words[0]
        col_text, bare = part.strip(), part.strip().replace("`", "")
        col = resolver.resolve(col_text, error=lambda _s, b=bare: errors.unknown_order_column(b))
        if col.table and col.table not in joined:
            table = resolver.meta.tables[col.table]
            raise errors.illegal_sql(f"Please select atleast 1 column from {table} to sort/group")
        order.append((col, descending))
    return order or None


# --- values -------------------------------------------------------------------------------
def parse_datetime(value: Any) -> datetime | None:
    """Naive datetime from what Frappe's get_datetime accepts (offsets are ignored, as there)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, date):
        return datetime.combine(value, time())
    m = _DT_RE.match(str(value).strip()) if value is not None else None
    if not m:
        return None
    y, mo, d, hh, mm, ss, frac = m.groups()
    try:
        return datetime(  # noqa: DTZ001 - Frappe datetimes are naive site-local values
            int(y),
            int(mo),
            int(d),
            int(hh or 0),
            int(mm or 0),
            int(ss or 0),
            int((frac or "0").ljust(6, "0")),
        )
    except ValueError:
        return None


def is_date_only(value: Any) -> bool:
    return (
        isinstance(value, str) and re.fullmatch(r"\s*\d{4}-\d{1,2}-\d{1,2}\s*", value) is not None
    )


def cint(value: Any, default: int = 0) -> int:
    """Frappe's `cint`: an int from anything, `default` when it is not a number."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def flt(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _text_key(value: Any) -> str:
    return str(value).casefold().rstrip(" ")


def typed_key(kind: str, value: Any) -> Any:
    """A comparable key: numbers as floats, datetimes as datetimes, text case-insensitive."""
    if kind in ("float", "int"):
        return flt(value)
    if kind in ("datetime", "date"):
        parsed = parse_datetime(value)
        if parsed is None:
            return (1, _text_key(value))
        return (0, parsed if kind == "datetime" else parsed.date())
    return _text_key("" if value is None else value)


def _fallback(kind: str) -> Any:
    return {"datetime": _MIN_DT, "date": _MIN_DATE, "float": 0.0, "int": 0}.get(kind, "")


@lru_cache(maxsize=256)
def _like_regex(pattern: str) -> re.Pattern[str]:
    out, escaped = [], False
    for ch in pattern:
        if escaped:
            out.append(re.escape(ch))
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def _as_text(value: Any) -> str:
    if isinstance(value, datetime | date):
        return str(value)
    return "" if value is None else str(value)


def matches(cond: Cond, row: dict, kind: str) -> bool:
    value = cell(row, cond.col)
    op, target = cond.op, cond.value
    numeric = kind in ("float", "int")
    if op == "is":
        blank = value is None or value == "" or (numeric and flt(value) == 0)
        return not blank if str(target).lower() == "set" else blank
    if value is None:
        if numeric:  # numeric columns are never coalesced by Frappe: NULL matches nothing
            return False
        value = _fallback(kind)
    if op in ("like", "not like"):
        hit = _like_regex(_as_text(target)).fullmatch(_as_text(value)) is not None
        return hit if op == "like" else not hit
    if op in ("in", "not in"):
        items = target if isinstance(target, list | tuple) else _as_text(target).split(",")
        wanted = [_as_text(v).strip() for v in items] or [""]
        key = typed_key(kind, value)
        hit = any(typed_key(kind, v) == key for v in wanted)
        return hit if op == "in" else not hit
    if op == "between":
        return _between(kind, value, target)
    left, right = typed_key(kind, value), typed_key(kind, target)
    try:
        return {
            "=": left == right,
            "!=": left != right,
            "<": left < right,
            ">": left > right,
            "<=": left <= right,
            ">=": left >= right,
        }[op]
    except TypeError:  # e.g. a datetime against an unparseable string: compare as text
        left, right = _text_key(_as_text(value)), _text_key(_as_text(target))
        return {
            "=": left == right,
            "!=": left != right,
            "<": left < right,
            ">": left > right,
            "<=": left <= right,
            ">=": left >= right,
        }[op]


def _between(kind: str, value: Any, target: Any) -> bool:
    bounds = target if isinstance(target, list | tuple) else _as_text(target).split(",")
    lo, hi = (list(bounds) + [None, None])[:2]
    if kind == "datetime":
        lo_dt, hi_dt = parse_datetime(lo), parse_datetime(hi)
        if hi_dt is not None and is_date_only(hi):
            hi_dt = datetime.combine(hi_dt.date(), time(23, 59, 59, 999999))
        val = parse_datetime(value)
        return None not in (lo_dt, hi_dt, val) and lo_dt <= val <= hi_dt  # type: ignore[operator]
    key = typed_key(kind, value)
    try:
        return typed_key(kind, lo) <= key <= typed_key(kind, hi)
    except TypeError:
        return False


def cell(row: dict, col: Col) -> Any:
    part = row.get(col.table) if col.table else row[None]
    return None if part is None else part.get(col.column)


# --- execution ----------------------------------------------------------------------------
def _scramble(name: Any) -> bytes:
    return hashlib.blake2b(str(name).encode(), digest_size=8).digest()


def joined_rows(docs: Iterable[dict], tables: list[str]) -> list[dict]:
    rows: list[dict] = []
    for doc in docs:
        combos: list[dict] = [{None: doc}]
        for table in tables:
            children = doc.get(table) or [None]
            combos = [{**combo, table: child} for combo in combos for child in children]
        rows.extend(combos)
    return rows


def select(resolver: Resolver, docs: Iterable[dict], query: ListQuery) -> list[dict]:
    """Joined, filtered and ordered rows (not yet projected or paged)."""
    tables: list[str] = []
    for col in [*query.fields, *(c.col for c in query.filters), *(c.col for c in query.or_filters)]:
        if col.table and col.table not in tables:
            tables.append(col.table)
    rows = joined_rows(docs, tables)

    def keep(row: dict) -> bool:
        if not all(matches(c, row, resolver.type_of(c.col)) for c in query.filters):
            return False
        return not query.or_filters or any(
            matches(c, row, resolver.type_of(c.col)) for c in query.or_filters
        )

    rows = [r for r in rows if keep(r)]
    if query.order:
        for col, desc in reversed(query.order):
            kind = resolver.type_of(col)

            def sort_key(row: dict, col: Col = col, kind: str = kind) -> tuple:
                value = cell(row, col)
                return (0,) if value is None else (1, typed_key(kind, value))

            rows.sort(key=sort_key, reverse=desc)
    else:
        rows.sort(
            key=lambda r: (
                _scramble(r[None].get("name")),
                *((r[t] or {}).get("idx") or 0 for t in tables),
            )
        )
    return rows


def project(rows: list[dict], query: ListQuery) -> list[Any]:
    out: list[Any] = []
    seen: set[str] = set()
    for row in rows:
        values = [cell(row, col) for col in query.fields]
        if query.distinct:
            marker = json.dumps(values, default=str)
            if marker in seen:
                continue
            seen.add(marker)
        out.append(
            {col.key: v for col, v in zip(query.fields, values, strict=True)}
            if query.as_dict
            else values
        )
    if query.page_length > 0:
        return out[query.start : query.start + query.page_length]
    return out[query.start :]
