"""The ERPNext fake's documents: loading, naming, docstatus moves, deletes and serialisation.

All methods take the store lock. Documents are stored as plain dicts keyed by column name
(absent key = null), child tables as lists of dicts. `modified`/`creation` are naive site-local
strings written the way `str(datetime)` writes them (no fraction when microseconds are 0).
"""

from __future__ import annotations

import copy
import json
import random
import re
import string
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from . import _erpnext_errors as errors
from . import _erpnext_rules as rules
from ._erpnext_errors import FrappeError
from ._erpnext_query import cint, parse_datetime
from ._erpnext_schema import CHILD_TAIL, STANDARD, DocTypeMeta, build_registry

_HASH_ALPHABET = string.digits + string.ascii_lowercase
_NO_COPY = frozenset({*STANDARD, "amended_from", "status", "clearance_date"})
_IGNORED_ON_COMPARE = frozenset({*STANDARD, *CHILD_TAIL, "status", "doctype"})
_SERIES_NUMBER_RE = re.compile(r"^(.*?)(\d+)$")


def _label(fieldname: str) -> str:
    return " ".join("ID" if w == "id" else w.capitalize() for w in fieldname.split("_"))


def _infer_type(value: Any) -> str | None:
    if isinstance(value, bool) or isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str) and parse_datetime(value) is not None:
        return "date" if len(value.strip()) <= 10 else "datetime"
    return None


def _transition_error(current: int, target: int, where: str) -> FrappeError:
    labels = {0: "Draft", 1: "Submitted", 2: "Cancelled"}
    return errors.validation(
        f"Cannot change docstatus from {current} ({labels.get(current, current)}) to {target} "
        f"({labels.get(target, target)})",
        where=where,
        exc_type="DocstatusTransitionError",
        msgprint=False,
    )


class Store:
    """Documents per doctype plus naming series; shared by the HTTP handler and the helpers."""

    def __init__(self, data: dict, clock: Callable[[], datetime]) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.tz = ZoneInfo(data.get("site_time_zone") or "UTC")
        self.registry = build_registry()
        self.docs: dict[str, dict[str, dict]] = {
            name: {} for name, meta in self.registry.items() if not meta.istable
        }
        self.series: dict[str, int] = {}
        self.labels: dict[str, str] = {}
        self.rng = random.Random(data.get("seed", 0))
        self.amend_naming = data.get("amend_naming") or "Amend Counter"
        self.admin_user = "Administrator"
        self._apply_custom_fields(data.get("custom_fields") or {})
        for doctype, roles in (data.get("permissions") or {}).items():
            meta = self.meta(doctype)
            meta.read_roles = meta.write_roles = frozenset(roles)
        for doctype, docs in (data.get("documents") or {}).items():
            meta = self.meta(doctype)
            for doc in docs:
                self._load(meta, doc)
        self._ensure_generated_docs(data)
        for prefix, current in (data.get("series") or {}).items():
            self.series[prefix] = max(self.series.get(prefix, 0), int(current))

    # --- metadata -------------------------------------------------------------------------
    def meta(self, doctype: str) -> DocTypeMeta:
        meta = self.registry.get(doctype)
        if meta is None:
            raise errors.doctype_not_found(doctype)
        return meta

    def parent_meta(self, doctype: str) -> DocTypeMeta:
        meta = self.meta(doctype)
        if meta.istable:
            raise errors.doctype_not_found(doctype)
        return meta

    def _apply_custom_fields(self, custom: dict[str, list[str]]) -> None:
        for doctype, fields in custom.items():
            meta = self.meta(doctype)
            after = meta.custom_anchor
            for item in fields:
                fieldname = item if isinstance(item, str) else item["fieldname"]
                meta.add_column(fieldname, after=after)
                after = fieldname
                label = item.get("label") if isinstance(item, dict) else None
                self.labels[fieldname] = label or _label(fieldname.removeprefix("custom_"))

    def label(self, fieldname: str) -> str:
        return self.labels.get(fieldname) or _label(fieldname)

    # --- time -----------------------------------------------------------------------------
    def now_local(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return now.astimezone(self.tz).replace(tzinfo=None)

    def today(self) -> date:
        return self.now_local().date()

    def stamp(self, modified: Any = None) -> str:
        """`modified` as Frappe writes it: site-local, naive, `str(datetime)`."""
        if modified is None:
            return str(self.now_local())
        if isinstance(modified, datetime):
            if modified.tzinfo is not None:
                modified = modified.astimezone(self.tz).replace(tzinfo=None)
            return str(modified)
        parsed = parse_datetime(modified)
        if parsed is None:
            raise ValueError(f"not a datetime: {modified!r}")
        return str(parsed)

    # --- values ---------------------------------------------------------------------------
    def normalize(self, meta: DocTypeMeta, column: str, value: Any) -> Any:
        kind = meta.type_of(column)
        if value is None:
            return None
        if kind == "float" and isinstance(value, int | float | str) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                return value
        if kind == "float" and isinstance(value, bool):
            return float(value)
        if kind == "int" and isinstance(value, bool | int | float | str):
            try:
                return int(float(value))
            except ValueError:
                return value
        if kind == "datetime":
            parsed = parse_datetime(value)
            return str(parsed) if parsed is not None else value
        if kind == "date" and isinstance(value, date):
            return value.isoformat()[:10]
        return value

    def new_hash(self) -> str:
        return "".join(self.rng.choice(_HASH_ALPHABET) for _ in range(10))

    def _set_fields(self, meta: DocTypeMeta, target: dict, source: dict, *, strict: bool) -> None:
        """Copy columns (normalised) and child tables; unknown keys are dropped (`strict`,
        as Frappe does on HTTP writes) or become extra columns (data file, helpers)."""
        for key, value in source.items():
            if key in meta.tables:
                if value is not None:
                    child_meta = self.registry[meta.tables[key]]
                    rows = []
                    for row in value or []:
                        new_row: dict = {}
                        self._set_fields(child_meta, new_row, dict(row), strict=strict)
                        rows.append(new_row)
                    target[key] = rows
                continue
            if key == "doctype" or key.startswith("__"):
                continue
            if not meta.has_column(key):
                if strict:
                    continue
                meta.add_column(key, type_hint=_infer_type(value))
            target[key] = self.normalize(meta, key, value)

    def _fill_children(self, meta: DocTypeMeta, doc: dict, *, new_names: bool) -> None:
        """Parent links, names and idx on child rows; the rows of a new document (`new_names`)
        also take its owner, timestamps and docstatus, as Frappe's insert does."""
        for table in meta.tables:
            rows = doc.setdefault(table, [])
            for idx, row in enumerate(rows, start=1):
                if new_names or not row.get("name"):
                    row["name"] = self.new_hash()
                row.setdefault("idx", idx)
                row.update(parent=doc["name"], parentfield=table, parenttype=meta.name)
                for key in ("owner", "creation", "modified", "modified_by", "docstatus"):
                    if new_names or row.get(key) is None:
                        row[key] = doc.get(key)

    # --- loading --------------------------------------------------------------------------
    def _load(self, meta: DocTypeMeta, source: dict) -> None:
        if meta.istable:
            raise ValueError(f"{meta.name} is a child doctype: put its rows inside their parent")
        doc: dict = {}
        self._set_fields(meta, doc, dict(source), strict=False)
        if not doc.get("name"):
            doc["name"], series = self._autoname(meta, doc)
            self._commit_series(series)
        now = self.stamp()
        for key, value in (
            ("owner", self.admin_user),
            ("modified_by", self.admin_user),
            ("creation", doc.get("modified") or now),
            ("modified", doc.get("creation") or now),
            ("docstatus", 0),
            ("idx", 0),
        ):
            if doc.get(key) is None and meta.has_column(key):
                doc[key] = value
        self._fill_children(meta, doc, new_names=False)
        self._note_series(meta, doc)
        self.docs[meta.name][doc["name"]] = doc

    def _ensure_generated_docs(self, data: dict) -> None:
        for doctype, fields in (data.get("custom_fields") or {}).items():
            anchor = self.registry[doctype].custom_anchor
            for item in fields:
                fieldname = item if isinstance(item, str) else item["fieldname"]
                name = f"{doctype}-{fieldname}"
                if name not in self.docs["Custom Field"]:
                    self._load(
                        self.registry["Custom Field"],
                        {
                            "name": name,
                            "dt": doctype,
                            "label": self.labels[fieldname],
                            "fieldname": fieldname,
                            "fieldtype": "Data",
                            "insert_after": anchor,
                            "is_system_generated": 0,
                            "length": 0,
                            "reqd": 0,
                            "unique": 0,
                            "no_copy": 0,
                            "allow_on_submit": 0,
                            "hidden": 0,
                            "read_only": 0,
                            "in_standard_filter": 0,
                        },
                    )
                    anchor = fieldname
        if "System Settings" not in self.docs["System Settings"]:
            self._load(
                self.registry["System Settings"],
                {
                    "name": "System Settings",
                    "time_zone": str(self.tz),
                    "language": "en",
                    "date_format": "dd-mm-yyyy",
                    "time_format": "HH:mm:ss",
                    "number_format": "#,###.##",
                    "float_precision": "3",
                    "currency_precision": "",
                    "rounding_method": "Banker's Rounding",
                    "allow_error_traceback": 1 if data.get("allow_error_traceback", True) else 0,
                    "enable_scheduler": 1,
                    "idx": "0",
                },
            )

    # --- naming ---------------------------------------------------------------------------
    def _series_prefix(self, series: str) -> str:
        today = self.today()
        parts = []
        for part in series.split("."):
            parts.append(
                {
                    "YYYY": f"{today:%Y}",
                    "YY": f"{today:%y}",
                    "MM": f"{today:%m}",
                    "DD": f"{today:%d}",
                }.get(part, part)
            )
        return "".join(p for p in parts if "#" not in p)

    def _autoname(self, meta: DocTypeMeta, doc: dict) -> tuple[str, tuple[str, int] | None]:
        kind, _, arg = meta.autoname.partition(":")
        if kind == "series":
            prefix = self._series_prefix(doc.get("naming_series") or arg)
            number = self.series.get(prefix, 0) + 1
            return f"{prefix}{number:05d}", (prefix, number)
        if kind == "field":
            if not doc.get(arg):
                raise errors.validation(
                    f"Value missing for {meta.name}: {self.label(arg)}", exc_type="MandatoryError"
                )
            return str(doc[arg]), None
        if kind == "custom_field":
            return f"{doc.get('dt')}-{doc.get('fieldname')}", None
        if kind == "single":
            return meta.name, None
        return self.new_hash(), None

    def _amended_name(self, meta: DocTypeMeta, doc: dict) -> tuple[str, tuple[str, int] | None]:
        mode = self.amend_naming
        if isinstance(mode, dict):
            mode = mode.get(meta.name) or mode.get("default") or "Amend Counter"
        if mode == "Default Naming":
            return self._autoname(meta, doc)
        source = str(doc["amended_from"])
        previous = self.docs[meta.name].get(source)
        if previous and previous.get("amended_from"):
            prefix, _, number = source.rpartition("-")
            return f"{prefix}-{cint(number) + 1}", None
        return f"{source}-1", None

    def _commit_series(self, series: tuple[str, int] | None) -> None:
        if series:
            prefix, number = series
            self.series[prefix] = max(self.series.get(prefix, 0), number)

    def _note_series(self, meta: DocTypeMeta, doc: dict) -> None:
        if not meta.autoname.startswith("series:"):
            return
        series = doc.get("naming_series") or meta.autoname.partition(":")[2]
        pattern = "".join(
            {"YYYY": r"\d{4}", "YY": r"\d{2}", "MM": r"\d{2}", "DD": r"\d{2}"}.get(p, re.escape(p))
            for p in series.split(".")
            if "#" not in p
        )
        m = re.fullmatch(f"({pattern})(\\d+)", str(doc["name"]))
        if m:
            prefix, number = m.group(1), int(m.group(2))
            self.series[prefix] = max(self.series.get(prefix, 0), number)

    def _revert_series_if_last(self, meta: DocTypeMeta, name: str) -> None:
        """Frappe's `revert_series_if_last`: deleting the newest number rolls the series back."""
        if not meta.autoname.startswith("series:"):
            return
        m = _SERIES_NUMBER_RE.match(name)
        if m and self.series.get(m.group(1)) == int(m.group(2)):
            self.series[m.group(1)] -= 1

    # --- reads ----------------------------------------------------------------------------
    def find(self, doctype: str, name: str) -> dict:
        doc = self.docs[self.parent_meta(doctype).name].get(name)
        if doc is None:
            raise errors.doc_not_found(doctype, name)
        return doc

    def as_dict(
        self, doctype: str, doc: dict, *, no_nulls: bool, marker: str | None = None
    ) -> dict:
        """A document the way Frappe serialises it (`as_dict(no_nulls=...)`)."""
        meta = self.registry[doctype]
        out = self._row_dict(meta, doc, no_nulls)
        out["doctype"] = doctype
        for table, child_doctype in meta.tables.items():
            child_meta = self.registry[child_doctype]
            rows = []
            for row in doc.get(table) or []:
                item = self._row_dict(child_meta, row, no_nulls)
                item["doctype"] = child_doctype
                if marker:
                    item[marker] = 1
                rows.append(item)
            out[table] = rows
        return out

    @staticmethod
    def _row_dict(meta: DocTypeMeta, row: dict, no_nulls: bool) -> dict:
        out = {}
        for column in meta.columns:
            value = row.get(column)
            if value is None and no_nulls:
                continue
            out[column] = value
        return out

    # --- writes ---------------------------------------------------------------------------
    def insert(
        self,
        doctype: str,
        source: dict,
        *,
        docstatus: int,
        user: str,
        http: bool,
        modified: Any = None,
    ) -> dict:
        meta = self.parent_meta(doctype)
        with self.lock:
            doc: dict = {}
            self._set_fields(meta, doc, dict(source), strict=http)
            if not meta.submittable:
                docstatus = 0
            doc["docstatus"] = 0
            for table in meta.tables:
                for idx, row in enumerate(doc.get(table) or [], start=1):
                    row.setdefault("idx", idx)
            rules.fill(self, doctype, doc, recompute=http)
            if http:
                rules.validate(self, doctype, doc, where="insert")
            series = None
            if doc.get("amended_from"):
                doc["name"], series = self._amended_name(meta, doc)
            elif http or not doc.get("name"):
                doc["name"], series = self._autoname(meta, doc)
            if doc["name"] in self.docs[doctype]:
                raise errors.duplicate_entry(doctype, doc["name"])
            now = self.stamp(modified)
            doc.update(
                owner=user if http else doc.get("owner") or user,
                creation=now,
                modified=now,
                modified_by=user,
                docstatus=docstatus,
                idx=doc.get("idx") or 0,
            )
            self._fill_children(meta, doc, new_names=True)
            rules.set_status(self, doctype, doc)
            self._commit_series(series)
            self.docs[doctype][doc["name"]] = doc
            if docstatus == 1:
                rules.on_docstatus(self, doctype, doc, sign=1, now=now, user=user)
            return doc

    def update(
        self,
        doctype: str,
        name: str,
        changes: dict,
        *,
        modified: Any = None,
        bump_modified: bool = True,
        user: str | None = None,
    ) -> dict:
        """A direct write (like `db_set`): no validation, no docstatus rules."""
        meta = self.parent_meta(doctype)
        with self.lock:
            doc = self.find(doctype, name)
            changes = {k: v for k, v in changes.items() if k not in ("name", "doctype")}
            self._set_fields(meta, doc, changes, strict=False)
            if modified is not None:
                doc["modified"] = self.stamp(modified)
            elif bump_modified:
                doc["modified"] = self.stamp()
            if user:
                doc["modified_by"] = user
            self._fill_children(meta, doc, new_names=False)
            return doc

    def transition(
        self,
        doctype: str,
        name: str,
        target: int,
        *,
        user: str,
        modified: Any = None,
        http: bool = False,
    ) -> dict:
        """Submit (0→1) or cancel (1→2), with Frappe's checks and ERPNext's side effects."""
        meta = self.parent_meta(doctype)
        with self.lock:
            doc = self.find(doctype, name)
            current = int(doc.get("docstatus") or 0)
            where = "update" if http else "method"
            if not meta.submittable:
                raise errors.validation(f"{doctype} is not submittable", where=where)
            if current == 2:
                raise errors.validation(
                    "Cannot edit cancelled document", where=where, msgprint=False
                )
            if (current, target) not in ((0, 1), (1, 2)):
                raise _transition_error(current, target, where)
            if http and target == 1:
                rules.validate(self, doctype, doc, where=where)
            now = self.stamp(modified)
            doc.update(docstatus=target, modified=now, modified_by=user)
            for table in meta.tables:
                for row in doc.get(table) or []:
                    row.update(docstatus=target, modified=now, modified_by=user)
            rules.set_status(self, doctype, doc)
            rules.on_docstatus(
                self, doctype, doc, sign=1 if target == 1 else -1, now=now, user=user
            )
            return doc

    def amend(
        self,
        doctype: str,
        name: str,
        changes: dict | None,
        *,
        submit: bool,
        user: str,
        modified: Any = None,
    ) -> dict:
        meta = self.parent_meta(doctype)
        with self.lock:
            source = self.find(doctype, name)
            if int(source.get("docstatus") or 0) != 2:
                raise errors.validation(
                    f"{doctype} {name} must be cancelled before it can be amended"
                )
            new = {
                k: copy.deepcopy(v)
                for k, v in source.items()
                if k not in _NO_COPY and k not in meta.tables
            }
            for table in meta.tables:
                new[table] = [
                    {k: v for k, v in row.items() if k not in _IGNORED_ON_COMPARE}
                    for row in source.get(table) or []
                ]
            new.update(changes or {})
            new["amended_from"] = name
            new.pop("name", None)
            return self.insert(
                doctype, new, docstatus=1 if submit else 0, user=user, http=False, modified=modified
            )

    def delete(self, doctype: str, name: str, *, user: str) -> None:
        meta = self.parent_meta(doctype)
        with self.lock:
            doc = self.find(doctype, name)
            if meta.submittable and int(doc.get("docstatus") or 0) == 1:
                raise errors.validation(
                    f"{doctype} {name}: Submitted Record cannot be deleted. You must <a href='https://"
                    "docs.erpnext.com//docs/user/manual/en/setting-up/articles/"
                    "delete-submitted-document' "
                    "target='_blank'> Cancel </a> it first.",
                    where="delete",
                )
            rules.check_not_linked(self, doctype, name)
            del self.docs[doctype][name]
            if doctype != "Deleted Document":
                now = self.stamp()
                data = json.dumps(
                    self.as_dict(doctype, doc, no_nulls=False),
                    indent=1,
                    sort_keys=True,
                    default=str,
                )
                tombstone = {
                    "name": self.new_hash(),
                    "owner": user,
                    "creation": now,
                    "modified": now,
                    "modified_by": user,
                    "docstatus": 0,
                    "idx": 0,
                    "deleted_name": name,
                    "deleted_doctype": doctype,
                    "restored": 0,
                    "data": data,
                }
                self.docs["Deleted Document"][tombstone["name"]] = tombstone
            self._revert_series_if_last(meta, name)

    def http_update(self, doctype: str, name: str, data: dict, *, user: str) -> dict:
        """`PUT /api/resource/{dt}/{name}`: `doc.update(data); doc.save()` with Frappe's rules."""
        meta = self.parent_meta(doctype)
        with self.lock:
            doc = self.find(doctype, name)
            data = {k: v for k, v in data.items() if k not in ("flags", "name", "doctype")}
            sent_modified = data.pop("modified", None)
            if sent_modified and self.normalize(meta, "modified", sent_modified) != doc.get(
                "modified"
            ):
                raise errors.validation(
                    f"Error: Document has been modified after you have opened it ({sent_modified}, "
                    f"{doc.get('modified')}). Please refresh to get the latest document.",
                    where="update",
                    exc_type="TimestampMismatchError",
                )
            current = int(doc.get("docstatus") or 0)
            target = cint(data.pop("docstatus", current))
            if current == 2:
                raise errors.validation(
                    "Cannot edit cancelled document", where="update", msgprint=False
                )
            if (current, target) not in ((0, 0), (0, 1), (1, 1), (1, 2)):
                raise _transition_error(current, target, "update")
            if current == 1 and target == 1:
                self._check_update_after_submit(meta, doc, data)
            if current == 1 and target != 1:
                return self.transition(doctype, name, target, user=user, http=True)
            working = copy.deepcopy(doc)
            self._set_fields(meta, working, data, strict=True)
            if current == 0:
                rules.fill(self, doctype, working, recompute=True)
                rules.validate(self, doctype, working, where="update")
            doc.clear()
            doc.update(working)
            self._fill_children(meta, doc, new_names=False)
            if current == 0 and target != 0:
                return self.transition(doctype, name, target, user=user, http=True)
            doc.update(modified=self.stamp(), modified_by=user)
            return doc

    def _check_update_after_submit(self, meta: DocTypeMeta, doc: dict, data: dict) -> None:
        def changed(row_meta: DocTypeMeta, old: dict, new: dict, prefix: str) -> None:
            for key, value in new.items():
                if (
                    key in _IGNORED_ON_COMPARE
                    or not row_meta.has_column(key)
                    or key in meta.allow_on_submit
                ):
                    continue
                before, after = old.get(key), self.normalize(row_meta, key, value)
                if before in ("", None) and after in ("", None) or before == after:
                    continue
                raise FrappeError(
                    "UpdateAfterSubmitError",
                    f"{prefix} Not allowed to change <strong>{self.label(key)}</strong> after "
                    "submission "
                    f"from <strong>{before}</strong> to <strong>{after}</strong>",
                    title="Cannot Update After Submit",
                    where="update",
                )

        changed(meta, doc, {k: v for k, v in data.items() if k not in meta.tables}, "")
        for table in meta.tables:
            if table not in data:
                continue
            old_rows = {row.get("name"): row for row in doc.get(table) or []}
            for row in data[table] or []:
                old = old_rows.get(row.get("name")) or {}
                changed(self.registry[meta.tables[table]], old, row, f"Row #{row.get('idx')}:")
