"""The Odoo fake's data (private; see `sync.sandbox.odoo`): records, versioned fields, domains, order.

Everything here runs under the store's lock. Records are kept in an internal shape and turned
into what the ORM would answer (`[id, "name"]` pairs, `False` for empty, naive UTC datetime
strings) only when read.
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

Clock = Callable[[], datetime]

STATES = {16: ("draft", "posted", "cancel"), 17: ("draft", "posted", "cancel"),
          18: ("draft", "in_process", "paid", "canceled", "rejected"),
          19: ("draft", "in_process", "paid", "canceled", "rejected")}
DEFAULT_ORDER = {"account.payment": "date desc, name desc", "account.move": "date desc, name desc, id desc",
                 "res.partner": "complete_name asc, id desc", "res.currency": "active desc, name asc",
                 "account.journal": "sequence asc, type asc, code asc"}
MODEL_LABEL = {"account.payment": "Payments", "account.move": "Journal Entry", "res.partner": "Contact",
               "res.currency": "Currency", "account.journal": "Journal", "res.users": "User"}
_DT = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?)?$")
_ORDER_TERM = re.compile(r"^\s*([a-z_][a-z0-9_]*)(?:\s+(asc|desc))?(?:\s+nulls\s+(first|last))?\s*$", re.I)


class OdooError(Exception):
    """An Odoo exception as the server would serialise it (`name` is the dotted class name)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def access_denied() -> OdooError:
    return OdooError("odoo.exceptions.AccessDenied", "Access Denied")


def value_error(message: str) -> OdooError:
    return OdooError("builtins.ValueError", message)


def parse_dt(value: Any) -> datetime | None:
    """A naive UTC datetime from an Odoo string (`YYYY-MM-DD[ HH:MM:SS[.ffffff]]`), datetime or date."""
    if value is None or value is False:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)  # noqa: DTZ001 - Odoo stores naive UTC
    m = _DT.match(str(value).strip())
    if not m:
        raise value_error(f"time data {str(value)[:40]!r} does not match format '%Y-%m-%d %H:%M:%S'")
    y, mo, d, h, mi, s, frac = m.groups()
    micro = int((frac or "0").ljust(6, "0"))
    return datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), micro)  # noqa: DTZ001 - naive UTC


def format_dt(value: datetime | None, *, micro: bool) -> str | bool:
    if value is None:
        return False
    if micro and value.microsecond:
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value.strftime("%Y-%m-%d %H:%M:%S")


# --- the fields each model shows, per version -------------------------------------------------
_PAYMENT_COMMON = ("id", "display_name", "name", "date", "amount", "amount_signed", "currency_id",
                   "company_currency_id", "partner_id", "journal_id", "payment_method_line_id", "payment_type",
                   "partner_type", "state", "write_date", "create_date", "payment_reference", "is_reconciled",
                   "is_matched", "move_id", "reconciled_invoice_ids", "reconciled_invoices_count", "company_id")
PAYMENT_FIELDS = {16: _PAYMENT_COMMON + ("ref",), 17: _PAYMENT_COMMON + ("ref",),
                  18: _PAYMENT_COMMON + ("memo", "invoice_ids"), 19: _PAYMENT_COMMON + ("memo", "invoice_ids")}
MOVE_FIELDS = ("id", "display_name", "name", "date", "partner_id", "amount_total", "amount_residual", "currency_id",
               "move_type", "state", "payment_state", "invoice_payments_widget", "write_date", "create_date", "ref")
PARTNER_FIELDS = ("id", "display_name", "name", "complete_name", "email", "write_date", "create_date", "active",
                  "is_company")
CURRENCY_FIELDS = ("id", "display_name", "name", "active")
JOURNAL_FIELDS = ("id", "display_name", "name", "type", "code", "sequence")
MANY2ONE = {"currency_id": "res.currency", "company_currency_id": "res.currency", "partner_id": "res.partner",
            "journal_id": "account.journal", "payment_method_line_id": "account.payment.method.line",
            "move_id": "account.move", "company_id": "res.company"}
X2MANY = {"reconciled_invoice_ids", "invoice_ids"}
DATETIME_FIELDS = {"write_date", "create_date"}


class OdooStore:
    """The fake database: one company, one database name, the models the connector reads."""

    def __init__(self, data: dict[str, Any], *, version: int, clock: Clock, micro_output: bool) -> None:
        if version not in STATES:
            raise ValueError(f"unsupported Odoo version {version!r} (16, 17, 18 or 19)")
        self.version = version
        self.clock = clock
        self.micro_output = micro_output
        self.lock = threading.RLock()
        self.database = str(data.get("database", "odoo"))
        self.users: list[dict[str, Any]] = []
        for i, u in enumerate(data.get("users") or []):
            self.users.append({"uid": int(u.get("uid", 2 + i)), "login": str(u["login"]),
                               "api_key": str(u["api_key"]), "password": u.get("password"),
                               "models": set(u["models"]) if u.get("models") is not None else None})
        self.currencies: dict[int, dict[str, Any]] = {}
        for i, name in enumerate(data.get("currencies") or ["PKR", "USD"]):
            self._currency_id(str(name), preferred=i + 1)
        self.journals: dict[int, dict[str, Any]] = {}
        for i, j in enumerate(data.get("journals") or [{"name": "Cash", "type": "cash", "code": "CSH1"},
                                                       {"name": "Bank", "type": "bank", "code": "BNK1"}]):
            jid = int(j.get("id", i + 1))
            self.journals[jid] = {"id": jid, "name": j["name"], "type": j.get("type", "bank"),
                                  "code": j.get("code", j["name"][:4].upper()), "sequence": j.get("sequence", 10 + i)}
        self.partners: dict[int, dict[str, Any]] = {}
        for p in data.get("partners") or []:
            self.add_partner(**p)
        self.invoices: dict[int, dict[str, Any]] = {}
        for inv in data.get("invoices") or []:
            self.add_invoice(**inv)
        self.payments: dict[int, dict[str, Any]] = {}
        for pay in data.get("payments") or []:
            self.add_payment(**pay)

    # --- ids and helpers ---------------------------------------------------------------------
    def now(self) -> datetime:
        moment = self.clock()
        return (moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)).replace(tzinfo=None)

    def _currency_id(self, name: str, preferred: int | None = None) -> int:
        for cid, c in self.currencies.items():
            if c["name"] == name:
                return cid
        cid = preferred if preferred and preferred not in self.currencies else max(self.currencies, default=0) + 1
        self.currencies[cid] = {"id": cid, "name": name, "active": True}
        return cid

    def _journal_id(self, journal: Any) -> int:
        if isinstance(journal, int) and journal in self.journals:
            return journal
        for jid, j in self.journals.items():
            if j["name"] == journal:
                return jid
        jid = max(self.journals, default=0) + 1
        self.journals[jid] = {"id": jid, "name": str(journal), "type": "bank", "code": str(journal)[:4].upper(),
                              "sequence": 10 + jid}
        return jid

    @staticmethod
    def _next_id(table: dict[int, Any], wanted: Any) -> int:
        if wanted is not None:
            if int(wanted) in table:
                raise ValueError(f"duplicate id {wanted}")
            return int(wanted)
        return max(table, default=0) + 1

    # --- seeding and mutation (callers hold the lock) ----------------------------------------
    def add_partner(self, name: str, email: Any = False, id: Any = None, **extra: Any) -> int:  # noqa: A002
        pid = self._next_id(self.partners, id)
        self.partners[pid] = {"id": pid, "name": name, "email": email or False, "active": True,
                              "is_company": bool(extra.pop("is_company", False)),
                              "write_date": parse_dt(extra.pop("write_date", None)) or self.now(),
                              "create_date": parse_dt(extra.pop("create_date", None)) or self.now(), **extra}
        return pid

    def add_invoice(self, name: str, partner_id: int, amount_total: Any, id: Any = None,  # noqa: A002
                    currency: str = "PKR", date: str | None = None, **extra: Any) -> int:
        iid = self._next_id(self.invoices, id)
        self.invoices[iid] = {"id": iid, "name": name, "partner_id": int(partner_id),
                              "amount_total": float(amount_total), "currency": currency,
                              "date": date or self.now().date().isoformat(), "move_type": "out_invoice",
                              "state": extra.pop("state", "posted"), "ref": extra.pop("ref", False),
                              "write_date": parse_dt(extra.pop("write_date", None)) or self.now(),
                              "create_date": parse_dt(extra.pop("create_date", None)) or self.now(),
                              "widget": extra.pop("invoice_payments_widget", None), **extra}
        return iid

    def add_payment(self, partner_id: int | None, amount: Any, *, id: Any = None,  # noqa: A002
                    name: str | None = None, currency: str = "PKR", date: str | None = None,
                    journal: Any = "Cash", state: str | None = None, payment_type: str = "inbound",
                    partner_type: str = "customer", invoices: Any = None, ref: Any = False, memo: Any = None,
                    payment_reference: Any = False, write_date: Any = None, create_date: Any = None,
                    move_id: Any = None, **extra: Any) -> int:
        pid = self._next_id(self.payments, id)
        if isinstance(invoices, dict):
            allocations = {int(k): float(v) for k, v in invoices.items()}
        elif invoices:
            ids = [int(i) for i in invoices]
            allocations = {i: (float(amount) if len(ids) == 1 else None) for i in ids}
        else:
            allocations = {}
        if state is None:
            state = "posted" if self.version < 18 else ("paid" if allocations else "in_process")
        if state not in STATES[self.version]:
            raise ValueError(f"state {state!r} does not exist in Odoo {self.version} (use {STATES[self.version]})")
        stamp = parse_dt(write_date) or self.now()
        journal_id = self._journal_id(journal)
        if name is None:
            name = "/" if state == "draft" else f"P{self.journals[journal_id]['code']}/{stamp.year}/{pid:05d}"
        self.payments[pid] = {
            "id": pid, "name": name, "partner_id": int(partner_id) if partner_id else None, "amount": float(amount),
            "currency": currency, "date": date or stamp.date().isoformat(), "journal_id": journal_id,
            "state": state, "payment_type": payment_type, "partner_type": partner_type,
            "memo": memo if memo is not None else (ref or False), "payment_reference": payment_reference or False,
            "write_date": stamp, "create_date": parse_dt(create_date) or stamp, "allocations": allocations,
            "move_id": move_id if move_id is not None else (False if self.version >= 18 and state == "draft" else pid),
            **extra}
        return pid

    def write_payment(self, pid: int, at: Any = None, **vals: Any) -> None:
        rec = self._payment(pid)
        for key, value in vals.items():
            if key == "invoices":
                rec["allocations"] = ({int(k): float(v) for k, v in value.items()} if isinstance(value, dict)
                                      else {int(i): None for i in value or []})
            elif key in ("ref", "memo"):
                rec["memo"] = value
            elif key == "journal":
                rec["journal_id"] = self._journal_id(value)
            elif key == "state":
                if value not in STATES[self.version]:
                    raise ValueError(f"state {value!r} does not exist in Odoo {self.version}")
                rec["state"] = value
            elif key == "amount":
                rec["amount"] = float(value)
            else:
                rec[key] = value
        rec["write_date"] = parse_dt(at) or self.now()

    def _payment(self, pid: int) -> dict[str, Any]:
        try:
            return self.payments[int(pid)]
        except KeyError:
            raise KeyError(f"account.payment {pid} does not exist") from None

    # --- auth --------------------------------------------------------------------------------
    def authenticate(self, db: Any, login: Any, secret: Any) -> int | bool:
        self.check_db(db)
        for u in self.users:
            if u["login"] == login and secret in (u["api_key"], u["password"]) and secret:
                return u["uid"]
        return False

    def user_by_uid(self, db: Any, uid: Any, secret: Any) -> dict[str, Any]:
        self.check_db(db)
        for u in self.users:
            if u["uid"] == uid and secret and secret in (u["api_key"], u["password"]):
                return u
        raise access_denied()

    def user_by_key(self, key: str) -> dict[str, Any] | None:
        return next((u for u in self.users if key and u["api_key"] == key), None)

    def check_db(self, db: Any) -> None:
        if db != self.database:
            raise OdooError("psycopg2.OperationalError",
                            f'connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed: '
                            f'FATAL:  database "{db}" does not exist')

    # --- the ORM surface ---------------------------------------------------------------------
    def execute(self, user: dict[str, Any], model: str, method: str, args: list[Any],
                kwargs: dict[str, Any]) -> Any:
        if model == "res.users" and method == "context_get":
            return {"lang": "en_US", "tz": "UTC", "uid": user["uid"]}
        if model not in self._models():
            raise OdooError("builtins.KeyError", model)
        if user["models"] is not None and model not in user["models"]:
            raise OdooError("odoo.exceptions.AccessError",
                            f"You are not allowed to access '{MODEL_LABEL.get(model, model)}' ({model}) records.\n\n"
                            "This operation is allowed for the following groups:\n\t- Accounting/Billing\n\n"
                            "Contact your administrator to request access if necessary.")
        kw = dict(kwargs or {})
        kw.pop("context", None)
        if method == "search_read":
            domain = args[0] if args else kw.pop("domain", [])
            fields = args[1] if len(args) > 1 else kw.pop("fields", None)
            return self.search_read(model, domain or [], fields, offset=int(kw.pop("offset", 0) or 0),
                                    limit=kw.pop("limit", None), order=kw.pop("order", None))
        if method == "search":
            domain = args[0] if args else kw.pop("domain", [])
            rows = self._search(model, domain or [], offset=int(kw.pop("offset", 0) or 0), limit=kw.pop("limit", None),
                                order=kw.pop("order", None))
            return [r["id"] for r in rows]
        if method == "search_count":
            domain = args[0] if args else kw.pop("domain", [])
            return len(self._search(model, domain or [], offset=0, limit=None, order=None))
        if method == "read":
            ids = args[0] if args else kw.pop("ids", [])
            fields = args[1] if len(args) > 1 else kw.pop("fields", None)
            return self.read(model, ids, fields)
        if method == "fields_get":
            return {f: {"type": "char", "string": f} for f in self._fields(model)}
        raise OdooError("builtins.AttributeError", f"The method '{method}' does not exist on the model '{model}'")

    def _models(self) -> dict[str, dict[int, dict[str, Any]]]:
        return {"account.payment": self.payments, "account.move": self.invoices, "res.partner": self.partners,
                "res.currency": self.currencies, "account.journal": self.journals}

    def _fields(self, model: str) -> tuple[str, ...]:
        if model == "account.payment":
            extra = sorted({k for r in self.payments.values() for k in r if k.startswith("x_")})
            return PAYMENT_FIELDS[self.version] + tuple(extra)
        if model == "account.move":
            extra = sorted({k for r in self.invoices.values() for k in r if k.startswith("x_")})
            return MOVE_FIELDS + tuple(extra)
        if model == "res.partner":
            return PARTNER_FIELDS
        if model == "res.currency":
            return CURRENCY_FIELDS
        return JOURNAL_FIELDS

    def search_read(self, model: str, domain: list[Any], fields: list[str] | None, *, offset: int,
                    limit: Any, order: str | None) -> list[dict[str, Any]]:
        names = self._check_fields(model, fields)
        rows = self._search(model, domain, offset=offset, limit=limit, order=order)
        return [self._present(model, r, names) for r in rows]

    def read(self, model: str, ids: Iterable[Any], fields: list[str] | None) -> list[dict[str, Any]]:
        names = self._check_fields(model, fields)
        table = self._models()[model]
        out = []
        missing = []
        for i in ids if isinstance(ids, list) else [ids]:
            rec = table.get(int(i)) if isinstance(i, int) and not isinstance(i, bool) else None
            if rec is None:
                missing.append(i)
            else:
                out.append(self._present(model, rec, names))
        if missing:
            raise OdooError("odoo.exceptions.MissingError",
                            "Record does not exist or has been deleted.\n"
                            f"(Record: {model}({', '.join(map(str, missing))},), User: 2)")
        return out

    def _check_fields(self, model: str, fields: Any) -> tuple[str, ...]:
        known = self._fields(model)
        if not fields:
            return known
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise value_error(f"Invalid fields argument {fields!r}")
        for f in fields:
            if f not in known:
                raise value_error(f"Invalid field {f!r} on model {model!r}")
        return tuple(["id"] + [f for f in fields if f != "id"])

    def _search(self, model: str, domain: Any, *, offset: int, limit: Any, order: str | None) -> list[dict[str, Any]]:
        if not isinstance(domain, list):
            raise value_error(f"Invalid domain {domain!r}")
        pred = compile_domain(domain, lambda leaf: self._leaf(model, leaf))
        rows = [r for r in self._models()[model].values() if pred(r)]
        rows = self._sort(model, rows, order if order else DEFAULT_ORDER.get(model, "id"))
        if offset:
            rows = rows[offset:]
        if limit not in (None, False, 0):
            rows = rows[: int(limit)]
        return rows

    # --- values ------------------------------------------------------------------------------
    def _raw(self, model: str, rec: dict[str, Any], field: str) -> Any:
        """The comparable value of a field: ids for many2one, sets of ids for x2many, datetimes."""
        if model == "account.payment":
            if field in ("reconciled_invoice_ids", "invoice_ids"):
                return set(self._reconciled(rec))
            if field == "currency_id":
                return self._currency_id(rec["currency"])
            if field == "company_currency_id":
                return self._currency_id("PKR")
            if field == "payment_method_line_id":
                return 1
            if field == "company_id":
                return 1
            if field in ("ref", "memo"):
                return rec.get("memo") or False
            if field in ("display_name",):
                return rec["name"]
            if field == "is_reconciled":
                return bool(self._reconciled(rec))
            if field == "is_matched":
                return False
            if field == "amount_signed":
                return rec["amount"] if rec["payment_type"] == "inbound" else -rec["amount"]
            if field == "reconciled_invoices_count":
                return len(self._reconciled(rec))
        if model == "account.move":
            if field == "currency_id":
                return self._currency_id(rec["currency"])
            if field == "amount_residual":
                return round(rec["amount_total"] - sum(a for _, a in self._payments_on(rec["id"])), 2)
            if field == "payment_state":
                residual = self._raw(model, rec, "amount_residual")
                return "paid" if residual <= 0 else ("partial" if residual < rec["amount_total"] else "not_paid")
            if field == "invoice_payments_widget":
                return self._widget(rec)
            if field == "display_name":
                return rec["name"]
        if model == "res.partner" and field in ("display_name", "complete_name"):
            return rec["name"]
        if field == "display_name":
            return rec.get("name")
        value = rec.get(field)
        return False if value is None else value

    def _reconciled(self, pay: dict[str, Any]) -> list[int]:
        if pay["state"] in ("draft", "cancel", "canceled", "rejected"):
            return []
        return [i for i in pay["allocations"] if i in self.invoices]

    def _payments_on(self, invoice_id: int) -> list[tuple[dict[str, Any], float]]:
        out = []
        for pay in self.payments.values():
            if invoice_id in self._reconciled(pay):
                amount = pay["allocations"][invoice_id]
                if amount is None:
                    amount = pay["amount"]
                out.append((pay, float(amount)))
        return out

    def _widget(self, inv: dict[str, Any]) -> Any:
        if inv.get("widget") is not None:
            return copy.deepcopy(inv["widget"])
        lines = self._payments_on(inv["id"])
        if not lines:
            return False
        content = []
        for pay, amount in lines:
            content.append({"name": pay["name"], "journal_name": self.journals[pay["journal_id"]]["name"],
                            "amount": amount, "currency_id": self._currency_id(inv["currency"]),
                            "date": pay["date"], "partial_id": 1000 + pay["id"], "account_payment_id": pay["id"],
                            "payment_method_name": "Manual Payment", "move_id": pay["move_id"] or False,
                            "ref": f"{pay['name']} ({pay.get('memo') or ''})", "is_exchange": False})
        return {"title": "Less Payment", "outstanding": False, "content": content}

    def _present(self, model: str, rec: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in names:
            value = self._raw(model, rec, f)
            if f in DATETIME_FIELDS:
                out[f] = format_dt(value or None, micro=self.micro_output)
            elif f in X2MANY:
                out[f] = sorted(value)
            elif f in MANY2ONE and model in ("account.payment", "account.move"):
                out[f] = self._pair(f, value, rec)
            elif isinstance(value, date) and not isinstance(value, datetime):
                out[f] = value.isoformat()
            else:
                out[f] = copy.deepcopy(value) if value is not None else False
        return out

    def _pair(self, field: str, value: Any, rec: dict[str, Any]) -> Any:
        if value in (None, False):
            return False
        if field in ("currency_id", "company_currency_id"):
            return [value, self.currencies[value]["name"]]
        if field == "partner_id":
            p = self.partners.get(value)
            return [value, p["name"]] if p else [value, f"res.partner({value},)"]
        if field == "journal_id":
            return [value, self.journals[value]["name"]]
        if field == "payment_method_line_id":
            return [1, "Manual Payment"]
        if field == "company_id":
            return [1, "Zensbot Academy"]
        if field == "move_id":
            return [value, rec.get("name", str(value))]
        return [value, str(value)]

    # --- domains -----------------------------------------------------------------------------
    def _leaf(self, model: str, leaf: Any) -> Callable[[dict[str, Any]], bool]:
        if not isinstance(leaf, (list, tuple)) or len(leaf) != 3 or not isinstance(leaf[0], str):
            raise value_error(f"Invalid leaf {leaf!r}")
        field, op, value = leaf
        op = str(op).lower()
        if field not in self._fields(model):
            raise value_error(f"Invalid field {model}.{field} in leaf {tuple(leaf)!r}")
        if op not in ("=", "!=", "<>", ">", ">=", "<", "<=", "in", "not in", "like", "not like", "ilike",
                      "not ilike", "=like", "=ilike"):
            raise value_error(f"Invalid leaf {tuple(leaf)!r}: operator {op!r} not supported")

        def get(rec: dict[str, Any]) -> Any:
            return self._raw(model, rec, field)

        if field in DATETIME_FIELDS or field in ("date",):
            is_date = field == "date"

            def conv(v: Any) -> Any:
                if v is False or v is None:
                    return None
                d = parse_dt(v)
                return d.date() if is_date and d is not None else d
        elif field in MANY2ONE:
            def conv(v: Any) -> Any:
                return v
        else:
            def conv(v: Any) -> Any:
                return None if v is False else v

        def name_of(rec_value: Any) -> str:
            if field in MANY2ONE and rec_value not in (None, False):
                pair = self._pair(field, rec_value, {})
                return str(pair[1]) if pair else ""
            return "" if rec_value in (None, False) else str(rec_value)

        def test(rec: dict[str, Any]) -> bool:
            raw = get(rec)
            if field in DATETIME_FIELDS:
                mine = raw if isinstance(raw, datetime) else parse_dt(raw)
            elif field == "date":
                mine = date.fromisoformat(raw) if isinstance(raw, str) else (raw or None)
            elif field in X2MANY:
                mine = raw
            else:
                mine = None if raw is False else raw
            if op in ("in", "not in"):
                values = value if isinstance(value, (list, tuple, set)) else [value]
                if field in X2MANY:
                    hit = bool(mine & {v for v in values if v is not False})
                    if False in values and not mine:
                        hit = True
                else:
                    hit = any((conv(v) == mine) if not (v is False and mine is None) else True for v in values)
                return hit if op == "in" else not hit
            if op in ("like", "not like", "ilike", "not ilike", "=like", "=ilike"):
                text = name_of(raw)
                pattern = "" if value in (None, False) else str(value)
                if op.startswith("="):
                    rx = re.escape(pattern).replace("%", ".*").replace("_", ".")
                    ok = re.fullmatch(rx, text, re.I if "i" in op else 0) is not None
                else:
                    needle = pattern.replace("%", "")
                    ok = needle.lower() in text.lower() if "ilike" in op else needle in text
                return ok if not op.startswith("not") else not ok
            if field in X2MANY:
                if op == "=":
                    return (not mine) if value is False else value in mine
                if op in ("!=", "<>"):
                    return bool(mine) if value is False else value not in mine
                raise value_error(f"Invalid leaf {tuple(leaf)!r}")
            other = conv(value)
            if field in MANY2ONE and isinstance(value, str):
                mine_cmp, other = name_of(raw), value
            else:
                mine_cmp = mine
            if op == "=":
                return mine_cmp == other if other is not None else mine_cmp is None
            if op in ("!=", "<>"):
                return mine_cmp != other if other is not None else mine_cmp is not None
            if mine_cmp is None or other is None:
                return False   # SQL: comparisons with NULL are never true
            try:
                if op == ">":
                    return mine_cmp > other
                if op == ">=":
                    return mine_cmp >= other
                if op == "<":
                    return mine_cmp < other
                return mine_cmp <= other
            except TypeError:
                raise value_error(f"Invalid leaf {tuple(leaf)!r}: cannot compare") from None

        return test

    def _sort(self, model: str, rows: list[dict[str, Any]], order: str) -> list[dict[str, Any]]:
        if not isinstance(order, str) or not order.strip():
            raise value_error(f"Invalid \"order\" specified ({order!r})")
        terms = []
        for part in order.split(","):
            m = _ORDER_TERM.match(part)
            if not m:
                raise value_error(f"Invalid \"order\" specified ({order!r}). A valid \"order\" specification is a "
                                  "comma-separated list of valid field names (optionally followed by asc/desc for "
                                  "the direction)")
            field, direction = m.group(1), (m.group(2) or "asc").lower()
            if field not in self._fields(model) and field not in ("complete_name", "sequence", "type", "code",
                                                                   "active"):
                raise value_error(f"Invalid field {field!r} on model {model!r}")
            terms.append((field, direction == "desc"))
        out = list(rows)
        for field, desc in reversed(terms):
            def key(rec: dict[str, Any], field: str = field) -> tuple[int, Any]:
                value = self._raw(model, rec, field)
                if field in MANY2ONE and value not in (None, False):
                    value = str(self._pair(field, value, rec)[1])
                if value is None or value is False:
                    return (1, 0)
                if isinstance(value, bool):
                    value = int(value)
                return (0, value)
            # PostgreSQL: NULLS LAST for ASC, NULLS FIRST for DESC (reverse=True flips both)
            out.sort(key=key, reverse=desc)
        return out

    # --- views for tests ---------------------------------------------------------------------
    def snapshot_payment(self, pid: int) -> dict[str, Any]:
        rec = copy.deepcopy(self._payment(pid))
        rec["write_date_text"] = format_dt(rec["write_date"], micro=True)
        return rec


def compile_domain(domain: list[Any], leaf: Callable[[Any], Callable[[dict[str, Any]], bool]]
                   ) -> Callable[[dict[str, Any]], bool]:
    """Odoo's prefix notation: `&`, `|` take two terms, `!` one; top-level terms are AND-ed."""
    stack: list[Callable[[dict[str, Any]], bool]] = []
    for item in reversed(domain):
        if item == "&" or item == "|":
            if len(stack) < 2:
                raise value_error(f"Invalid domain {domain!r}: {item!r} needs two terms")
            a, b = stack.pop(), stack.pop()
            stack.append((lambda r, a=a, b=b: a(r) and b(r)) if item == "&" else (lambda r, a=a, b=b: a(r) or b(r)))
        elif item == "!":
            if not stack:
                raise value_error(f"Invalid domain {domain!r}: '!' needs a term")
            a = stack.pop()
            stack.append(lambda r, a=a: not a(r))
        elif isinstance(item, (list, tuple)) and len(item) == 3 and item[0] in (1, 0) and item[2] in (1, 0):
            truth = item[0] == item[2] if item[1] == "=" else item[0] != item[2]
            stack.append(lambda r, t=truth: t)
        else:
            stack.append(leaf(item))
    preds = list(reversed(stack))
    return lambda r: all(p(r) for p in preds)


def second_later(moment: datetime) -> datetime:
    return moment + timedelta(seconds=1)
