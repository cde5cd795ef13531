"""In-memory state and business rules of the LMS sandbox (private; see `sync.sandbox.lms`).

One re-entrant lock (`LmsState.lock`) guards every read and write of the state, the rate-limit
windows, the idempotency store and the counters. An idempotent write holds it from the key
lookup to storing the result, so two concurrent requests with one key never both apply.
"""

from __future__ import annotations

import copy
import json
import math
import re
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Callable

from sync import contract as C
from sync.sandbox import _lms_validate as V

# Names the contract module does not define (sandbox-local).
DETAIL_MISSING_KEY = "Missing API key"
DETAIL_INVALID_KEY = "Invalid API key"
DETAIL_REVOKED_KEY = "API key has been revoked"
DETAIL_EXPIRED_KEY = "API key has expired"
DETAIL_SUSPENDED = "Institute is suspended"
DETAIL_RATE_LIMITED = "Rate limit exceeded"
DETAIL_STUDENT_NOT_FOUND = "Student not found"
DETAIL_BATCH_NOT_FOUND = "Batch not found"
DETAIL_PLAN_NOT_FOUND = "Fee plan not found"
DETAIL_INSTALLMENT_NOT_FOUND = "Installment not found"
RECEIPT_FORMAT = "RCP-{:06d}"
_RECEIPT_RE = re.compile(r"^RCP-(\d+)$")
UNPAID_STATUSES = (C.INST_PENDING, C.INST_PARTIALLY_PAID, C.INST_OVERDUE)
CLOSED_STATUSES = (C.INST_PAID, C.INST_WAIVED)
DEFAULT_SCOPES = (C.SCOPE_READ, C.SCOPE_WRITE)
BATCH_ID = "id"
BATCH_NAME = "name"
PAY_CREATED_AT = "created_at"


def encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass
class Response:
    status: int
    raw: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, body: Any, headers: dict[str, str] | None = None) -> "Response":
        return cls(status, encode(body), dict(headers or {}))


class ApiError(Exception):
    """An error answer. `storable` marks business outcomes kept by the idempotency store (409/422)."""

    def __init__(self, status: int, detail: Any, *, storable: bool = False,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(status, detail)
        self.status = status
        self.body: dict[str, Any] = {C.ERR_DETAIL: detail, **extra}
        self.storable = storable
        self.headers = dict(headers or {})

    def response(self) -> Response:
        return Response.json(self.status, self.body, self.headers)


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    return ApiError(422, errors)


def compute_final_amount(total: int, discount_type: str | None, discount_value: Any) -> int:
    """final = total - discount; a percent discount is rounded half-up to whole units."""
    if discount_type is None or discount_value is None:
        return int(total)
    if discount_type == "percent":
        disc = Decimal(str(total)) * Decimal(str(discount_value)) / Decimal(100)
    else:
        disc = Decimal(str(discount_value))
    return max(0, int(total) - int(disc.quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def _parse_expiry(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        dt = datetime.fromisoformat(value)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    raise ValueError(f"expires_at must be null, an epoch number or an ISO-8601 string, got {value!r}")


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in record.items() if not k.startswith("_")}


# --- request body schemas -------------------------------------------------------------------
PAYMENT_FIELDS = {
    C.PAY_AMOUNT: V.Field(V.v_int(ge=1)),
    C.PAY_DATE: V.Field(V.v_aware_datetime()),
    C.PAY_METHOD: V.Field(V.v_literal(C.PAYMENT_METHODS)),
    C.PAY_REFERENCE: V.Field(V.nullable(V.v_str(max_length=255)), required=False),
    C.PAY_INSTALLMENT_ID: V.Field(V.nullable(V.v_int(ge=1)), required=False),
    C.PAY_NOTES: V.Field(V.nullable(V.v_str(max_length=2000)), required=False),
}
INSTALLMENT_FIELDS = {
    C.INST_SEQUENCE: V.Field(V.v_int(ge=1)),
    C.INST_AMOUNT_DUE: V.Field(V.v_int(ge=1)),
    C.INST_DUE_DATE: V.Field(V.v_date()),
    C.INST_LABEL: V.Field(V.nullable(V.v_str(max_length=255)), required=False),
}
PLAN_FIELDS = {
    C.PLAN_STUDENT_ID: V.Field(V.v_int(ge=1)),
    C.PLAN_BATCH_ID: V.Field(V.v_int(ge=1)),
    C.PLAN_TYPE: V.Field(V.v_literal(C.PLAN_TYPES)),
    C.PLAN_TOTAL_AMOUNT: V.Field(V.v_int(ge=1)),
    C.PLAN_DISCOUNT_TYPE: V.Field(V.nullable(V.v_literal(C.DISCOUNT_TYPES)), required=False),
    C.PLAN_DISCOUNT_VALUE: V.Field(V.nullable(V.v_number(ge=0)), required=False),
    C.PLAN_CURRENCY: V.Field(V.v_str(min_length=3, max_length=3), required=False),
    C.PLAN_INSTALLMENTS: V.Field(lambda v: None if isinstance(v, list) and v else (
        ("list_type", "Input should be a valid list", None) if not isinstance(v, list)
        else ("too_short", "List should have at least 1 item after validation, not 0", {"min_length": 1}))),
    C.PLAN_NOTES: V.Field(V.nullable(V.v_str(max_length=2000)), required=False),
}
REASON_FIELDS = {C.PLAN_CANCEL_REASON: V.Field(V.nullable(V.v_str(max_length=2000)), required=False)}


class LmsState:
    def __init__(self, seed: dict[str, Any], clock: Callable[[], float], rate_limit: int | None) -> None:
        if not isinstance(seed, dict):
            raise ValueError("seed must be a JSON object")
        self.lock = threading.RLock()
        self.clock = clock
        limit = rate_limit if rate_limit is not None else seed.get("rate_limit_per_minute")
        self.rate_limit = int(limit) if limit is not None else C.GENERAL_LIMIT_PER_MINUTE
        self.institutes: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, dict[str, Any]] = {}
        self.batches: dict[int, dict[str, Any]] = {}
        self.students: dict[int, dict[str, Any]] = {}
        self.plans: dict[int, dict[str, Any]] = {}
        self.installments: dict[int, dict[str, Any]] = {}
        self.payments: dict[int, dict[str, Any]] = {}
        self.receipts: dict[str, int] = {}
        self.idem: dict[tuple[str, str], tuple[str, int, bytes]] = {}
        self.windows: dict[str, tuple[int, int]] = {}
        self.next_id: dict[str, int] = {}
        self.counters: dict[str, Any] = {"requests": 0, "by_status": {}, "writes_received": 0,
                                         "writes_applied": 0, "replays": 0, "rate_limited": 0, "dropped": 0}
        self._load(seed)

    # --- time helpers -----------------------------------------------------------------------
    def now_iso(self) -> str:
        return datetime.fromtimestamp(self.clock(), timezone.utc).isoformat(timespec="seconds")

    def today(self) -> date:
        return datetime.fromtimestamp(self.clock(), timezone.utc).date()

    # --- seed loading ---------------------------------------------------------------------
    def _load(self, seed: dict[str, Any]) -> None:
        institutes = seed.get("institutes") or []
        if not isinstance(institutes, list):
            raise ValueError("seed 'institutes' must be a list")
        maxima = {"batch": 0, "student": 0, "plan": 0, "installment": 0, "payment": 0}
        for inst in institutes:
            for kind, coll in (("batch", "batches"), ("student", "students"), ("plan", "fee_plans"),
                               ("payment", "payments")):
                for item in inst.get(coll) or []:
                    if item.get("id") is not None:
                        maxima[kind] = max(maxima[kind], int(item["id"]))
            for plan in inst.get("fee_plans") or []:
                for ins in plan.get(C.PLAN_INSTALLMENTS) or []:
                    if ins.get("id") is not None:
                        maxima["installment"] = max(maxima["installment"], int(ins["id"]))
        self.next_id = {k: v + 1 for k, v in maxima.items()}
        for inst in institutes:
            if "id" not in inst:
                raise ValueError("every seed institute needs an 'id'")
            iid = str(inst["id"])
            if iid in self.institutes:
                raise ValueError(f"duplicate institute id {iid!r}")
            self.institutes[iid] = {"id": iid, "name": inst.get("name", iid),
                                    "suspended": bool(inst.get("suspended", False))}
            self.receipts[iid] = 0
            for key in inst.get("api_keys") or []:
                self.add_api_key(iid, **key)
            for batch in inst.get("batches") or []:
                self.add_batch(iid, batch)
            for student in inst.get("students") or []:
                self.add_student(iid, student)
            for plan in inst.get("fee_plans") or []:
                self.add_plan(iid, plan)
            for payment in inst.get("payments") or []:
                self.add_payment(iid, payment)

    def _take_id(self, kind: str, explicit: Any, table: dict[int, Any]) -> int:
        if explicit is None:
            new = self.next_id[kind]
        else:
            if type(explicit) is not int and not (isinstance(explicit, str) and explicit.isdigit()):
                raise ValueError(f"{kind} id must be an integer, got {explicit!r}")
            new = int(explicit)
            if new in table:
                raise ValueError(f"duplicate {kind} id {new}")
        self.next_id[kind] = max(self.next_id[kind], new + 1)
        return new

    def _inst(self, institute_id: str) -> str:
        iid = str(institute_id)
        if iid not in self.institutes:
            raise ValueError(f"unknown institute {iid!r}")
        return iid

    def add_api_key(self, institute_id: str, key: str, name: str | None = None, scopes: Any = None,
                    expires_at: Any = None, revoked: bool = False) -> None:
        with self.lock:
            iid = self._inst(institute_id)
            if not isinstance(key, str) or not key:
                raise ValueError("api key must be a non-empty string")
            if key in self.keys:
                raise ValueError("duplicate api key")
            self.keys[key] = {"key": key, "name": name or f"key-{len(self.keys) + 1}",
                              "scopes": frozenset(scopes if scopes is not None else DEFAULT_SCOPES),
                              "expires_at": _parse_expiry(expires_at), "revoked": bool(revoked), "_inst": iid}

    def add_batch(self, institute_id: str, batch: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            iid = self._inst(institute_id)
            bid = self._take_id("batch", batch.get(BATCH_ID), self.batches)
            rec = {**batch, BATCH_ID: bid, BATCH_NAME: batch.get(BATCH_NAME, f"Batch {bid}"), "_inst": iid}
            self.batches[bid] = rec
            return _public(rec)

    def add_student(self, institute_id: str, student: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            iid = self._inst(institute_id)
            sid = self._take_id("student", student.get(C.STUDENT_ID), self.students)
            rec = {**student, C.STUDENT_ID: sid, C.STUDENT_NAME: student.get(C.STUDENT_NAME, f"Student {sid}"),
                   C.STUDENT_EMAIL: student.get(C.STUDENT_EMAIL), C.STUDENT_STATUS: student.get(C.STUDENT_STATUS, "active"),
                   "_inst": iid}
            self.students[sid] = rec
            return _public(rec)

    def add_plan(self, institute_id: str, plan: dict[str, Any]) -> dict[str, Any]:
        """Add a fee plan as a seed entry (defaults filled in; installments' amount_paid taken as given)."""
        with self.lock:
            iid = self._inst(institute_id)
            sid = plan.get(C.PLAN_STUDENT_ID)
            if sid is None or int(sid) not in self.students or self.students[int(sid)]["_inst"] != iid:
                raise ValueError(f"fee plan refers to unknown student {sid!r} in institute {iid!r}")
            bid = plan.get(C.PLAN_BATCH_ID)
            if bid is not None and int(bid) not in self.batches:
                self.add_batch(iid, {BATCH_ID: int(bid)})
            pid = self._take_id("plan", plan.get(C.PLAN_ID), self.plans)
            total = int(plan[C.PLAN_TOTAL_AMOUNT])
            dtype, dvalue = plan.get(C.PLAN_DISCOUNT_TYPE), plan.get(C.PLAN_DISCOUNT_VALUE)
            final = plan.get(C.PLAN_FINAL_AMOUNT)
            final = int(final) if final is not None else compute_final_amount(total, dtype, dvalue)
            created = plan.get(C.PLAN_CREATED_AT) or self.now_iso()
            raw_insts = plan.get(C.PLAN_INSTALLMENTS) or [
                {C.INST_SEQUENCE: 1, C.INST_AMOUNT_DUE: final, C.INST_DUE_DATE: created[:10]}]
            inst_ids = []
            for pos, raw in enumerate(raw_insts, start=1):
                ins_id = self._take_id("installment", raw.get(C.INST_ID), self.installments)
                seq = int(raw.get(C.INST_SEQUENCE, pos))
                due = int(raw[C.INST_AMOUNT_DUE])
                status = raw.get(C.INST_STATUS)
                paid = raw.get(C.INST_AMOUNT_PAID)
                paid = int(paid) if paid is not None else (due if status == C.INST_PAID else 0)
                if status is None:
                    status = C.INST_PAID if paid >= due else (C.INST_PARTIALLY_PAID if paid > 0 else C.INST_PENDING)
                self.installments[ins_id] = {
                    C.INST_ID: ins_id, C.INST_SEQUENCE: seq, C.INST_AMOUNT_DUE: due, C.INST_AMOUNT_PAID: paid,
                    C.INST_DUE_DATE: raw.get(C.INST_DUE_DATE) or created[:10], C.INST_STATUS: status,
                    C.INST_LABEL: raw.get(C.INST_LABEL) or f"Installment {seq}", "_plan": pid}
                inst_ids.append(ins_id)
            status = plan.get(C.PLAN_STATUS)
            if status is None:
                closed = all(self.installments[i][C.INST_STATUS] in CLOSED_STATUSES for i in inst_ids)
                status = C.PLAN_COMPLETED if closed else C.PLAN_ACTIVE
            self.plans[pid] = {
                C.PLAN_ID: pid, C.PLAN_STUDENT_ID: int(sid), C.PLAN_BATCH_ID: int(bid) if bid is not None else None,
                C.PLAN_TYPE: plan.get(C.PLAN_TYPE, "installment"), C.PLAN_TOTAL_AMOUNT: total,
                C.PLAN_DISCOUNT_TYPE: dtype, C.PLAN_DISCOUNT_VALUE: dvalue, C.PLAN_FINAL_AMOUNT: final,
                C.PLAN_CURRENCY: plan.get(C.PLAN_CURRENCY) or C.DEFAULT_CURRENCY, C.PLAN_STATUS: status,
                C.PLAN_NOTES: plan.get(C.PLAN_NOTES, ""), C.PLAN_CREATED_AT: created,
                "_inst": iid, "_installments": inst_ids}
            return self.plan_view(pid)

    def add_payment(self, institute_id: str, payment: dict[str, Any]) -> dict[str, Any]:
        """Add a payment record as a seed entry (installments are NOT updated)."""
        with self.lock:
            iid = self._inst(institute_id)
            plan_id = int(payment[C.PAY_FEE_PLAN_ID])
            plan = self.plans.get(plan_id)
            if plan is None or plan["_inst"] != iid:
                raise ValueError(f"payment refers to unknown fee plan {plan_id} in institute {iid!r}")
            pay_id = self._take_id("payment", payment.get(C.PAY_ID), self.payments)
            receipt = payment.get(C.PAY_RECEIPT_NUMBER)
            if receipt is None:
                receipt = self._next_receipt(iid)
            else:
                m = _RECEIPT_RE.match(str(receipt))
                if m:
                    self.receipts[iid] = max(self.receipts[iid], int(m.group(1)))
            created = payment.get(PAY_CREATED_AT) or self.now_iso()
            self.payments[pay_id] = {
                C.PAY_ID: pay_id, C.PAY_FEE_PLAN_ID: plan_id,
                C.PAY_STUDENT_ID: int(payment.get(C.PAY_STUDENT_ID, plan[C.PLAN_STUDENT_ID])),
                C.PAY_INSTALLMENT_ID: payment.get(C.PAY_INSTALLMENT_ID), C.PAY_AMOUNT: int(payment[C.PAY_AMOUNT]),
                C.PAY_DATE: payment.get(C.PAY_DATE) or created, C.PAY_METHOD: payment.get(C.PAY_METHOD, "cash"),
                C.PAY_REFERENCE: payment.get(C.PAY_REFERENCE), C.PAY_RECEIPT_NUMBER: receipt,
                C.PAY_NOTES: payment.get(C.PAY_NOTES), C.PAY_STATUS: payment.get(C.PAY_STATUS, C.PAY_RECEIVED),
                PAY_CREATED_AT: created, "_inst": iid}
            return _public(self.payments[pay_id])

    def set_suspended(self, institute_id: str, suspended: bool = True) -> None:
        with self.lock:
            self.institutes[self._inst(institute_id)]["suspended"] = bool(suspended)

    def revoke_key(self, key: str) -> bool:
        with self.lock:
            rec = self.keys.get(key)
            if rec is None:
                return False
            rec["revoked"] = True
            return True

    def _next_receipt(self, iid: str) -> str:
        self.receipts[iid] += 1
        return RECEIPT_FORMAT.format(self.receipts[iid])

    # --- views ----------------------------------------------------------------------------
    def _plan_installments(self, pid: int) -> list[dict[str, Any]]:
        return sorted((self.installments[i] for i in self.plans[pid]["_installments"]),
                      key=lambda r: (r[C.INST_SEQUENCE], r[C.INST_ID]))

    @staticmethod
    def _remaining(ins: dict[str, Any]) -> int:
        if ins[C.INST_STATUS] not in UNPAID_STATUSES:
            return 0
        return max(0, ins[C.INST_AMOUNT_DUE] - ins[C.INST_AMOUNT_PAID])

    def plan_balance(self, pid: int) -> int:
        return sum(self._remaining(i) for i in self._plan_installments(pid))

    def plan_view(self, pid: int) -> dict[str, Any]:
        plan = self.plans[pid]
        insts = self._plan_installments(pid)
        out = _public(plan)
        out[C.PLAN_INSTALLMENTS] = [_public(i) for i in insts]
        out[C.PLAN_AMOUNT_PAID] = sum(i[C.INST_AMOUNT_PAID] for i in insts)
        out[C.PLAN_BALANCE_DUE] = sum(self._remaining(i) for i in insts)
        return out

    def snapshot_payments(self, institute_id: str | None) -> list[dict[str, Any]]:
        with self.lock:
            return [_public(p) for _, p in sorted(self.payments.items())
                    if institute_id is None or p["_inst"] == str(institute_id)]

    def snapshot_plans(self, institute_id: str | None) -> list[dict[str, Any]]:
        with self.lock:
            return [self.plan_view(pid) for pid, p in sorted(self.plans.items())
                    if institute_id is None or p["_inst"] == str(institute_id)]

    def snapshot_stats(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.counters)

    # --- counters -------------------------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] += n

    def count_status(self, status: int) -> None:
        with self.lock:
            by = self.counters["by_status"]
            by[str(status)] = by.get(str(status), 0) + 1

    # --- auth and rate limiting -------------------------------------------------------------
    def authenticate(self, key: str | None) -> dict[str, Any]:
        if not key:
            raise ApiError(401, DETAIL_MISSING_KEY)
        with self.lock:
            rec = self.keys.get(key)
            if rec is None:
                raise ApiError(401, DETAIL_INVALID_KEY)
            if rec["revoked"]:
                raise ApiError(401, DETAIL_REVOKED_KEY)
            if rec["expires_at"] is not None and self.clock() >= rec["expires_at"]:
                raise ApiError(401, DETAIL_EXPIRED_KEY)
            return dict(rec)

    def rate_check(self, key: str) -> None:
        with self.lock:
            now = self.clock()
            window = math.floor(now / 60)
            win, used = self.windows.get(key, (window, 0))
            if win != window:
                used = 0
            used += 1
            self.windows[key] = (window, used)
            if used > self.rate_limit:
                self.counters["rate_limited"] += 1
                retry = max(1, math.ceil((window + 1) * 60 - now))
                raise ApiError(429, DETAIL_RATE_LIMITED, headers={C.HDR_RETRY_AFTER: str(retry)})

    def check_access(self, key_rec: dict[str, Any], scope: str) -> None:
        with self.lock:
            if self.institutes[key_rec["_inst"]]["suspended"]:
                raise ApiError(403, DETAIL_SUSPENDED)
        if not C.scope_covers(key_rec["scopes"], scope):
            raise ApiError(403, f"API key lacks the required scope: {scope}")

    # --- idempotency ----------------------------------------------------------------------
    def idempotent(self, iid: str, key: str | None, fingerprint: str,
                   apply: Callable[[], Response]) -> Response:
        """Replay a stored result for (institute, key), refuse reuse with another request, or apply and store."""
        with self.lock:
            if key is not None:
                stored = self.idem.get((iid, key))
                if stored is not None:
                    fp, status, raw = stored
                    if fp != fingerprint:
                        raise ApiError(409, C.DETAIL_KEY_REUSED)
                    self.counters["replays"] += 1
                    return Response(status, raw, {C.HDR_REPLAYED: "true"})
            try:
                resp = apply()
            except ApiError as exc:
                if key is not None and exc.storable:
                    self.idem[(iid, key)] = (fingerprint, exc.status, encode(exc.body))
                raise
            if key is not None:
                self.idem[(iid, key)] = (fingerprint, resp.status, resp.raw)
            return resp

    # --- lookups --------------------------------------------------------------------------
    def _student(self, iid: str, sid: int) -> dict[str, Any]:
        rec = self.students.get(sid)
        if rec is None or rec["_inst"] != iid:
            raise ApiError(404, DETAIL_STUDENT_NOT_FOUND)
        return rec

    def _plan(self, iid: str, pid: int) -> dict[str, Any]:
        rec = self.plans.get(pid)
        if rec is None or rec["_inst"] != iid:
            raise ApiError(404, DETAIL_PLAN_NOT_FOUND)
        return rec

    def _installment(self, plan: dict[str, Any], ins_id: int) -> dict[str, Any]:
        if ins_id not in plan["_installments"]:
            raise ApiError(404, DETAIL_INSTALLMENT_NOT_FOUND)
        return self.installments[ins_id]

    # --- reads ----------------------------------------------------------------------------
    @staticmethod
    def _paginate(items: list[dict[str, Any]], page: int, per_page: int) -> Response:
        total = len(items)
        start = (page - 1) * per_page
        return Response.json(200, {C.PAGE_DATA: items[start:start + per_page], C.PAGE_TOTAL: total,
                                   C.Q_PAGE: page, C.Q_PER_PAGE: per_page,
                                   C.PAGE_TOTAL_PAGES: math.ceil(total / per_page)})

    @staticmethod
    def _page_args(query: dict[str, list[str]], errors: list[dict[str, Any]]) -> tuple[int, int]:
        page = V.query_int(query, C.Q_PAGE, 1, ge=1, errors=errors)
        per_page = V.query_int(query, C.Q_PER_PAGE, C.PER_PAGE_DEFAULT, ge=1, le=C.PER_PAGE_MAX, errors=errors)
        return page or 1, per_page or C.PER_PAGE_DEFAULT

    @staticmethod
    def _q_str(query: dict[str, list[str]], name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    def list_students(self, iid: str, query: dict[str, list[str]]) -> Response:
        errors: list[dict[str, Any]] = []
        page, per_page = self._page_args(query, errors)
        if errors:
            raise validation_error(errors)
        search = (self._q_str(query, C.Q_SEARCH) or "").casefold()
        status = self._q_str(query, C.Q_STATUS)
        with self.lock:
            items = [_public(s) for _, s in sorted(self.students.items()) if s["_inst"] == iid
                     and (not search or search in str(s.get(C.STUDENT_NAME) or "").casefold()
                          or search in str(s.get(C.STUDENT_EMAIL) or "").casefold())
                     and (status is None or s.get(C.STUDENT_STATUS) == status)]
        return self._paginate(items, page, per_page)

    def get_student(self, iid: str, sid: int) -> Response:
        with self.lock:
            return Response.json(200, _public(self._student(iid, sid)))

    def fee_summary(self, iid: str, sid: int) -> Response:
        with self.lock:
            self._student(iid, sid)
            today = self.today()
            plans = [self.plan_view(pid) for pid, p in sorted(self.plans.items())
                     if p["_inst"] == iid and p[C.PLAN_STUDENT_ID] == sid]
            live = [p for p in plans if p[C.PLAN_STATUS] != C.PLAN_CANCELLED]
            overdue = 0
            for p in live:
                for ins in self._plan_installments(p[C.PLAN_ID]):
                    rem = self._remaining(ins)
                    if rem and (ins[C.INST_STATUS] == C.INST_OVERDUE or str(ins[C.INST_DUE_DATE]) < today.isoformat()):
                        overdue += rem
            currency = live[0][C.PLAN_CURRENCY] if live else (plans[0][C.PLAN_CURRENCY] if plans else C.DEFAULT_CURRENCY)
            body = {C.PLAN_STUDENT_ID: sid, C.PLAN_CURRENCY: currency,
                    C.SUMMARY_TOTAL_DUE: sum(p[C.PLAN_FINAL_AMOUNT] for p in live),
                    C.SUMMARY_TOTAL_PAID: sum(p[C.PLAN_AMOUNT_PAID] for p in live),
                    C.SUMMARY_BALANCE_DUE: sum(p[C.PLAN_BALANCE_DUE] for p in live),
                    C.SUMMARY_OVERDUE: overdue, C.SUMMARY_PLANS: plans}
            return Response.json(200, body)

    def list_fee_plans(self, iid: str, query: dict[str, list[str]]) -> Response:
        errors: list[dict[str, Any]] = []
        page, per_page = self._page_args(query, errors)
        sid = V.query_int(query, C.Q_STUDENT_ID, None, errors=errors)
        if errors:
            raise validation_error(errors)
        status = self._q_str(query, C.Q_STATUS)
        with self.lock:
            items = [self.plan_view(pid) for pid, p in sorted(self.plans.items()) if p["_inst"] == iid
                     and (sid is None or p[C.PLAN_STUDENT_ID] == sid)
                     and (status is None or p[C.PLAN_STATUS] == status)]
        return self._paginate(items, page, per_page)

    def get_fee_plan(self, iid: str, pid: int) -> Response:
        with self.lock:
            self._plan(iid, pid)
            return Response.json(200, self.plan_view(pid))

    def list_installments(self, iid: str, pid: int) -> Response:
        with self.lock:
            self._plan(iid, pid)
            return Response.json(200, [_public(i) for i in self._plan_installments(pid)])

    def list_payments(self, iid: str, query: dict[str, list[str]]) -> Response:
        errors: list[dict[str, Any]] = []
        page, per_page = self._page_args(query, errors)
        sid = V.query_int(query, C.Q_STUDENT_ID, None, errors=errors)
        pid = V.query_int(query, C.Q_FEE_PLAN_ID, None, errors=errors)
        if errors:
            raise validation_error(errors)
        with self.lock:
            items = [_public(p) for _, p in sorted(self.payments.items()) if p["_inst"] == iid
                     and (sid is None or p[C.PAY_STUDENT_ID] == sid)
                     and (pid is None or p[C.PAY_FEE_PLAN_ID] == pid)]
        return self._paginate(items, page, per_page)

    # --- writes ---------------------------------------------------------------------------
    def _complete_if_closed(self, pid: int) -> None:
        plan = self.plans[pid]
        if plan[C.PLAN_STATUS] == C.PLAN_ACTIVE and all(
                i[C.INST_STATUS] in CLOSED_STATUSES for i in self._plan_installments(pid)):
            plan[C.PLAN_STATUS] = C.PLAN_COMPLETED

    @staticmethod
    def _apply_to(ins: dict[str, Any], amount: int) -> None:
        ins[C.INST_AMOUNT_PAID] += amount
        if ins[C.INST_AMOUNT_PAID] >= ins[C.INST_AMOUNT_DUE]:
            ins[C.INST_STATUS] = C.INST_PAID
        elif ins[C.INST_AMOUNT_PAID] > 0:
            ins[C.INST_STATUS] = C.INST_PARTIALLY_PAID

    def record_payment(self, iid: str, pid: int, body: Any, key: str, fingerprint: str) -> Response:
        errors = V.check_object(body, PAYMENT_FIELDS, ["body"])
        if errors:
            raise validation_error(errors)

        def apply() -> Response:
            plan = self._plan(iid, pid)
            amount: int = body[C.PAY_AMOUNT]
            ins_id = body.get(C.PAY_INSTALLMENT_ID)
            named = self._installment(plan, ins_id) if ins_id is not None else None
            if plan[C.PLAN_STATUS] == C.PLAN_CANCELLED:
                raise ApiError(409, C.DETAIL_PLAN_CANCELLED, storable=True)
            if plan[C.PLAN_STATUS] == C.PLAN_COMPLETED:
                raise ApiError(409, C.DETAIL_PLAN_COMPLETED, storable=True)
            if named is not None:
                if named[C.INST_STATUS] == C.INST_PAID:
                    raise ApiError(409, C.DETAIL_INSTALLMENT_PAID, storable=True)
                if named[C.INST_STATUS] == C.INST_WAIVED:
                    raise ApiError(409, C.DETAIL_INSTALLMENT_WAIVED, storable=True)
                balance = self._remaining(named)
            else:
                balance = self.plan_balance(pid)
            if amount > balance:
                raise ApiError(422, C.DETAIL_OVERPAYMENT, storable=True, **{C.ERR_REMAINING_BALANCE: balance})
            if named is not None:
                self._apply_to(named, amount)
                first = named[C.INST_ID]
            else:
                left, first = amount, None
                for ins in self._plan_installments(pid):
                    rem = self._remaining(ins)
                    if not rem:
                        continue
                    take = min(rem, left)
                    self._apply_to(ins, take)
                    first = ins[C.INST_ID] if first is None else first
                    left -= take
                    if not left:
                        break
            self._complete_if_closed(pid)
            pay_id = self._take_id("payment", None, self.payments)
            now = self.now_iso()
            self.payments[pay_id] = {
                C.PAY_ID: pay_id, C.PAY_FEE_PLAN_ID: pid, C.PAY_STUDENT_ID: plan[C.PLAN_STUDENT_ID],
                C.PAY_INSTALLMENT_ID: first, C.PAY_AMOUNT: amount, C.PAY_DATE: body[C.PAY_DATE],
                C.PAY_METHOD: body[C.PAY_METHOD], C.PAY_REFERENCE: body.get(C.PAY_REFERENCE),
                C.PAY_RECEIPT_NUMBER: self._next_receipt(iid), C.PAY_NOTES: body.get(C.PAY_NOTES),
                C.PAY_STATUS: C.PAY_RECEIVED, PAY_CREATED_AT: now, "_inst": iid, "_idempotency_key": key}
            self.counters["writes_applied"] += 1
            return Response.json(201, _public(self.payments[pay_id]))

        return self.idempotent(iid, key, fingerprint, apply)

    def create_plan(self, iid: str, body: Any, key: str | None, fingerprint: str) -> Response:
        errors = V.check_object(body, PLAN_FIELDS, ["body"])
        if not errors:
            for pos, ins in enumerate(body[C.PLAN_INSTALLMENTS]):
                errors += V.check_object(ins, INSTALLMENT_FIELDS, ["body", C.PLAN_INSTALLMENTS, pos])
        if errors:
            raise validation_error(errors)
        total: int = body[C.PLAN_TOTAL_AMOUNT]
        dtype, dvalue = body.get(C.PLAN_DISCOUNT_TYPE), body.get(C.PLAN_DISCOUNT_VALUE)
        if (dtype is None) != (dvalue is None):
            raise ApiError(422, "discount_type and discount_value must be given together")
        if dtype == "percent" and dvalue > 100:
            raise ApiError(422, "A percent discount cannot exceed 100")
        if dtype == "flat" and (type(dvalue) is not int or dvalue > total):
            raise ApiError(422, "A flat discount must be a whole amount not above total_amount")
        final = compute_final_amount(total, dtype, dvalue)
        seqs = [i[C.INST_SEQUENCE] for i in body[C.PLAN_INSTALLMENTS]]
        if len(set(seqs)) != len(seqs):
            raise ApiError(422, "Installment sequences must be unique")
        due_sum = sum(i[C.INST_AMOUNT_DUE] for i in body[C.PLAN_INSTALLMENTS])
        if due_sum != final:
            raise ApiError(422, f"Installment amounts sum to {due_sum} but the plan's final_amount is {final}")

        def apply() -> Response:
            sid, bid = body[C.PLAN_STUDENT_ID], body[C.PLAN_BATCH_ID]
            self._student(iid, sid)
            batch = self.batches.get(bid)
            if batch is None or batch["_inst"] != iid:
                raise ApiError(404, DETAIL_BATCH_NOT_FOUND)
            seed = {k: v for k, v in body.items() if k != C.PLAN_INSTALLMENTS}
            seed[C.PLAN_NOTES] = body.get(C.PLAN_NOTES) or ""
            seed[C.PLAN_FINAL_AMOUNT] = final
            seed[C.PLAN_STATUS] = C.PLAN_ACTIVE
            seed[C.PLAN_DISCOUNT_TYPE], seed[C.PLAN_DISCOUNT_VALUE] = dtype, dvalue
            seed[C.PLAN_INSTALLMENTS] = [
                {C.INST_SEQUENCE: i[C.INST_SEQUENCE], C.INST_AMOUNT_DUE: i[C.INST_AMOUNT_DUE],
                 C.INST_DUE_DATE: i[C.INST_DUE_DATE], C.INST_LABEL: i.get(C.INST_LABEL),
                 C.INST_AMOUNT_PAID: 0, C.INST_STATUS: C.INST_PENDING} for i in body[C.PLAN_INSTALLMENTS]]
            view = self.add_plan(iid, seed)
            self.counters["writes_applied"] += 1
            return Response.json(201, view)

        return self.idempotent(iid, key, fingerprint, apply)

    def cancel_plan(self, iid: str, pid: int, body: Any, key: str | None, fingerprint: str) -> Response:
        errors = V.check_object({} if body is None else body, REASON_FIELDS, ["body"])
        if errors:
            raise validation_error(errors)

        def apply() -> Response:
            plan = self._plan(iid, pid)
            if plan[C.PLAN_STATUS] == C.PLAN_CANCELLED:
                raise ApiError(409, C.DETAIL_PLAN_ALREADY_CANCELLED, storable=True)
            plan[C.PLAN_STATUS] = C.PLAN_CANCELLED
            plan["_cancel_reason"] = (body or {}).get(C.PLAN_CANCEL_REASON)
            self.counters["writes_applied"] += 1
            return Response.json(200, self.plan_view(pid))

        return self.idempotent(iid, key, fingerprint, apply)

    def waive_installment(self, iid: str, pid: int, ins_id: int, body: Any, key: str | None,
                          fingerprint: str) -> Response:
        errors = V.check_object({} if body is None else body, REASON_FIELDS, ["body"])
        if errors:
            raise validation_error(errors)

        def apply() -> Response:
            plan = self._plan(iid, pid)
            ins = self._installment(plan, ins_id)
            if plan[C.PLAN_STATUS] == C.PLAN_CANCELLED:
                raise ApiError(409, C.DETAIL_PLAN_CANCELLED, storable=True)
            if ins[C.INST_STATUS] == C.INST_PAID:
                raise ApiError(409, C.DETAIL_INSTALLMENT_PAID, storable=True)
            if ins[C.INST_STATUS] == C.INST_WAIVED:
                raise ApiError(409, C.DETAIL_INSTALLMENT_WAIVED, storable=True)
            ins[C.INST_STATUS] = C.INST_WAIVED
            ins["_waive_reason"] = (body or {}).get(C.INST_WAIVE_REASON)
            self._complete_if_closed(pid)
            self.counters["writes_applied"] += 1
            return Response.json(200, _public(ins))

        return self.idempotent(iid, key, fingerprint, apply)
