"""Bundled demo data: an LMS seed, a matching ERPNext data set and the answer key of a correct sync.

`build_demo(seed)` is deterministic (one `random.Random(seed)`, no clock, no set ordering) and
returns three dicts:

* `lms_seed`: the Zenslearn sandbox seed. Every amount is an int in whole rupees. The payments the
  LMS itself pushed to ERPNext (`custom_zensbot_payment_id`) are already recorded here, and the
  installments' `amount_paid`/`status` include them.
* `erp_data`: the ERPNext fake's data set. Documents have the shape of a v15 single-document GET
  (`/work/shared/fixtures/erpnext-real/`): money is a JSON float, `creation`/`modified` are naive
  Asia/Karachi strings (`str(datetime)`, so no fraction when the microseconds are 0), and fields
  whose value would be null are left out.
* `expected`: the answer key. It is not copied from the generator's intentions. It is recomputed
  from the two dicts above by `answer_key()`, which replays the LMS rules in cursor order
  (`modified asc, name asc`). The generator then checks it against its intentions.

Student groups (sizes are for the default 220 students):

1. LMS plans (60 %): an LMS plan plus the Sales Invoice the LMS pushed for it
   (`custom_zensbot_fee_plan_id`, `payment_term` "Installment k"), with receipts against it.
2. ERP-native invoices (25 %): an invoice without a plan id. The student exists in the LMS with no
   plan. Its receipts go to `expected["needs_plan"]`.
3. Advances (5 %): one active plan, plus receipts without references.
4. Edge cases: unknown student, ambiguous plan, currency mismatch, fractional amount, overpayment,
   no active plan, multi-reference, cancelled and amended receipts (an amendment of an amendment
   too), LMS-originated receipts, drafts, a tie group sharing one `modified`, Pay and
   Internal Transfer entries, a credit note and cancelled invoices.

Skip precedence in the answer key: a Payment Entry that is not Receive from a Customer is skipped
first (`not_customer_receipt`), then a cancelled one (`cancelled`, even if the LMS originated it),
then one carrying `custom_zensbot_payment_id` (`lms_originated`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

SITE_TZ_NAME = "Asia/Karachi"
SITE_TZ = ZoneInfo(SITE_TZ_NAME)
COMPANY = "Zensbot Academy"
INSTITUTE_ID = "inst-demo"
CURRENCY = "PKR"
PE_ZB_FIELD = "custom_zensbot_payment_id"
SI_PLAN_FIELD = "custom_zensbot_fee_plan_id"
SI_BATCH_FIELD = "custom_batch"
# ERPNext's Customer.get_customer_name names a duplicate "<customer_name> - <n>", not "-<n>".
DUPLICATE_CUSTOMER_SEP = " - "
RECEIVABLE, RECEIVABLE_USD, PAYABLE = "Debtors - ZA", "Debtors USD - ZA", "Creditors - ZA"
FIRST_LMS_PAYMENT_ID = 123
TIE_SIZE = 48
MIN_STUDENTS = 100

DEFAULT_BASE = datetime(2026, 11, 2, 9, 0, tzinfo=SITE_TZ)
_UNSET = datetime(2000, 1, 1, tzinfo=SITE_TZ)  # a time field not yet assigned

_FIRST = (
    "Ayesha",
    "Bilal",
    "Fatima",
    "Hamza",
    "Zainab",
    "Usman",
    "Maryam",
    "Ali",
    "Sana",
    "Omar",
    "Hira",
    "Ahmed",
    "Mahnoor",
    "Hassan",
    "Iqra",
    "Saad",
    "Amna",
    "Fahad",
    "Noor",
    "Talha",
    "Rabia",
    "Zaid",
    "Khadija",
    "Imran",
    "Areeba",
    "Danish",
    "Sadia",
    "Junaid",
    "Mehwish",
    "Asad",
)
_LAST = (
    "Khan",
    "Ahmed",
    "Malik",
    "Siddiqui",
    "Hussain",
    "Tariq",
    "Qureshi",
    "Sheikh",
    "Butt",
    "Chaudhry",
    "Raza",
    "Javed",
    "Iqbal",
    "Mirza",
    "Abbasi",
    "Farooq",
    "Aslam",
    "Shah",
    "Rana",
    "Anwar",
)
_SUPPLIERS = ("Meezan Stationers", "K-Electric", "PTCL Business", "Cloudways Hosting")


@dataclass(frozen=True)
class _Batch:
    id: int
    name: str
    item_code: str
    item_name: str
    fee: int


BATCHES = (
    _Batch(1, "Python Bootcamp", "PY-BOOTCAMP", "Python Bootcamp (12 weeks) - Course Fee", 45000),
    _Batch(2, "Data Science Track", "DS-201", "Data Science Track - Course Fee", 60000),
    _Batch(
        3, "Full-Stack Web Development", "WEB-FS", "Full-Stack Web Development - Course Fee", 90000
    ),
    _Batch(4, "UI/UX Design", "UX-101", "UI/UX Design - Course Fee", 35000),
    _Batch(5, "Cloud & DevOps", "DEVOPS-301", "Cloud & DevOps - Course Fee", 75000),
    _Batch(6, "Digital Marketing", "DM-110", "Digital Marketing - Course Fee", 25000),
)
_REG_FEE = ("REG-FEE", "Registration Fee", 5000)


@dataclass(frozen=True)
class _Mode:
    name: str
    account: str
    account_type: str
    ref_prefix: str | None
    lms_method: str


_MODES = (
    _Mode("Wire Transfer", "Meezan Bank - ZA", "Bank", "IBFT", "bank_transfer"),
    _Mode("Cash", "Cash - ZA", "Cash", None, "cash"),
    _Mode("JazzCash", "JazzCash - ZA", "Bank", "JC", "jazzcash"),
    _Mode("Easypaisa", "Easypaisa - ZA", "Bank", "EP", "easypaisa"),
    _Mode("Cheque", "Meezan Bank - ZA", "Bank", "CHQ", "cheque"),
)
_MODE_WEIGHTS = (45, 20, 15, 12, 8)


@dataclass
class DemoData:
    lms_seed: dict[str, Any]
    erp_data: dict[str, Any]
    expected: dict[str, Any]


# --- internal model (amounts in ERP documents are kept in paisa, ints) --------------------------
@dataclass(eq=False)
class _Student:
    id: int
    name: str
    email: str
    group: str
    status: str = "active"
    customer: _Customer | None = None
    plans: list[_Plan] = field(default_factory=list)
    events: list[list[_PE]] = field(
        default_factory=list
    )  # each event is a chain (original + amendments)
    role: str = ""  # the edge case this student was picked for, "" when none


@dataclass(eq=False)
class _Customer:
    customer_name: str
    email: str | None
    created: datetime
    student: _Student | None
    mobile: str
    name: str = ""


@dataclass(eq=False)
class _Inst:
    id: int
    seq: int
    due: date
    amount: int  # rupees
    label: str
    lms_paid: int = 0


@dataclass(eq=False)
class _Plan:
    id: int
    student: _Student
    batch: _Batch
    plan_type: str
    discount_type: str | None
    discount_value: int | None
    final: int
    insts: list[_Inst]
    status: str = "active"
    notes: str = ""
    invoice: _Invoice | None = None


@dataclass(eq=False)
class _Row:
    idx: int
    term: str | None
    description: str | None
    due: date
    amount: int  # paisa
    planned: int = 0  # paisa allocated by generated receipts (generation budget)
    paid: int = 0  # paisa, replay state


@dataclass(eq=False)
class _Invoice:
    customer: _Customer
    posting: date
    created: datetime
    items: list[tuple[str, str, int, int]]  # code, name, qty, rate (paisa)
    rows: list[_Row]
    discount: int = 0  # paisa
    plan: _Plan | None = None
    batch: _Batch | None = None
    set_batch: bool = True
    template: str | None = None
    docstatus: int = 1
    cancelled: datetime | None = None
    return_against: _Invoice | None = None
    remarks: str = "No Remarks"
    name: str = ""
    paid: int = 0  # paisa, replay state
    modified: datetime = _UNSET

    @property
    def grand(self) -> int:
        return sum(qty * rate for _, _, qty, rate in self.items) - self.discount


@dataclass(eq=False)
class _Ref:
    inv: _Invoice
    row: _Row
    alloc: int  # paisa
    term_outstanding: int = 0
    outstanding: int = 0


@dataclass(eq=False)
class _PE:
    intent: str
    customer: _Customer | None
    refs: list[_Ref]
    amount: int  # paid_amount in minor units of `currency`
    mode: _Mode
    currency: str = CURRENCY
    rate: int = 100  # source exchange rate x 100
    payment_type: str = "Receive"
    supplier: str | None = None
    docstatus: int = 1
    zb_id: str | None = None
    lms: bool = False  # the LMS recorded this payment and pushed it to ERPNext
    lms_payment_id: int | None = None
    amended_from: _PE | None = None
    created: datetime = _UNSET
    submitted: datetime = _UNSET
    cancelled: datetime = _UNSET
    modified: datetime = _UNSET
    posting: date = _UNSET.date()
    ref_no: str | None = None
    tie: bool = False
    name: str = ""


def _f(paisa: int) -> float:
    return paisa / 100


def _ts(moment: datetime) -> str:
    """Frappe's `str(datetime)` of the site-local naive time."""
    return str(moment.astimezone(SITE_TZ).replace(tzinfo=None))


class _Builder:
    def __init__(self, seed: int, n_students: int, n_payments_min: int, base: datetime) -> None:
        if n_students < MIN_STUDENTS:
            raise ValueError(f"n_students must be at least {MIN_STUDENTS}, got {n_students}")
        if base.tzinfo is None:
            raise ValueError("base must be timezone-aware")
        self.rng = random.Random(seed)
        self.n_students = n_students
        self.n_payments_min = n_payments_min
        self.base = base.astimezone(SITE_TZ)
        self.today = self.base.date()
        self.window = (self.base - timedelta(days=30), self.base - timedelta(hours=6))
        self.students: list[_Student] = []
        self.customers: list[_Customer] = []
        self.invoices: list[_Invoice] = []
        self.plans: list[_Plan] = []
        self.others: list[list[_PE]] = []  # chains of parties that are not LMS students
        self.ids = {"plan": 5001, "inst": 90001}
        self.used_hashes: set[str] = set()

    # --- small helpers ---------------------------------------------------------------------
    def _id(self, kind: str) -> int:
        value = self.ids[kind]
        self.ids[kind] += 1
        return value

    def _hash(self) -> str:
        while True:
            value = "".join(
                self.rng.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(10)
            )
            if value not in self.used_hashes:
                self.used_hashes.add(value)
                return value

    def _mode(self) -> _Mode:
        return self.rng.choices(_MODES, _MODE_WEIGHTS)[0]

    def _between(self, start: datetime, end: datetime) -> datetime:
        span = int((end - start).total_seconds() * 1_000_000)
        return start + timedelta(microseconds=self.rng.randrange(max(span, 1)))

    def _split(self, total: int, parts: int, step: int = 500) -> list[int]:
        """`parts` amounts summing to `total`, cut at multiples of `step` (fewer when too small)."""
        parts = min(parts, max(1, total // step))
        if parts <= 1:
            return [total]
        cuts = sorted(self.rng.sample(range(1, total // step), parts - 1))
        bounds = [0, *(c * step for c in cuts), total]
        return [b - a for a, b in zip(bounds, bounds[1:], strict=False)]

    # --- people --------------------------------------------------------------------------------
    def make_students(self) -> None:
        rng, n = self.rng, self.n_students
        emails: set[str] = set()
        for i in range(n):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            local = f"{first}.{last}".lower()
            email, k = f"{local}@example.pk", 1
            while email in emails:
                k += 1
                email = f"{local}{k}@example.pk"
            emails.add(email)
            self.students.append(_Student(101 + i, f"{first} {last}", email, group=""))
        order = list(self.students)
        rng.shuffle(order)
        n1, n2, n3 = round(n * 0.60), round(n * 0.25), max(3, round(n * 0.05))
        sizes = [
            ("lms_plan", n1),
            ("native", n2),
            ("advance", n3),
            ("ambiguous", 3),
            ("no_plan", 3),
            ("cancelled_plan", 1),
        ]
        pos = 0
        for group, size in sizes:
            for s in order[pos : pos + size]:
                s.group = group
            pos += size
        for s in order[pos:]:
            s.group = "lms_only"
            if rng.random() < 0.25:
                s.status = "inactive"

    def make_customers(self) -> None:
        rng = self.rng
        start, end = self.base - timedelta(days=60), self.base - timedelta(days=41)
        pending: list[_Customer] = []
        for s in self.students:
            if s.group == "lms_only":
                continue
            cust = _Customer(s.name, s.email, self._between(start, end), s, self._mobile())
            s.customer = cust
            pending.append(cust)
        # a few customer emails typed with other case or stray whitespace (normalisation)
        variants = [c for c in pending if c.student and c.student.group in ("lms_plan", "native")]
        for i, cust in enumerate(rng.sample(variants, 6)):
            email = cust.email or ""
            cust.email = (email.title() if i % 2 == 0 else email.upper()) + (
                "  " if i % 3 == 0 else ""
            )
            if i == 1:
                cust.email = " " + cust.email
        # customers whose email matches no LMS student
        for i in range(6):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            email = None if i == 5 else f"{first}.{last}.parent{i + 1}@gmail.com".lower()
            pending.append(
                _Customer(f"{first} {last}", email, self._between(start, end), None, self._mobile())
            )
        pending.sort(key=lambda c: c.created)
        taken: dict[str, int] = {}
        for cust in pending:
            if cust.customer_name in taken:
                taken[cust.customer_name] += 1
                cust.name = (
                    f"{cust.customer_name}{DUPLICATE_CUSTOMER_SEP}{taken[cust.customer_name]}"
                )
            else:
                taken[cust.customer_name] = 0
                cust.name = cust.customer_name
        self.customers = pending

    def _mobile(self) -> str:
        rng = self.rng
        return f"+92-3{rng.randint(0, 4)}{rng.randint(0, 9)}-{rng.randint(1000000, 9999999)}"

    # --- plans and invoices -----------------------------------------------------------------
    def _invoice_created(self) -> datetime:
        return self._between(self.base - timedelta(days=40), self.base - timedelta(days=31))

    def new_plan(
        self,
        student: _Student,
        *,
        plan_type: str | None = None,
        min_insts: int = 1,
        status: str = "active",
    ) -> _Plan:
        rng = self.rng
        batch = rng.choice(BATCHES)
        if plan_type is None:
            plan_type = rng.choices(("installment", "one_time", "monthly"), (60, 15, 25))[0]
            if plan_type == "one_time" and min_insts > 1:
                plan_type = "installment"
        dtype = dvalue = None
        final = batch.fee
        if rng.random() < 0.2:
            if rng.random() < 0.5:
                dtype, dvalue = "percent", rng.choice((10, 15, 20))
                final = batch.fee - batch.fee * dvalue // 100
            else:
                dtype, dvalue = "flat", rng.choice((2500, 5000))
                final = batch.fee - dvalue
        first_due = date(2026, 8, 15) + timedelta(days=rng.randrange(0, 70))
        if plan_type == "one_time":
            amounts, labels, dues = [final], ["Full Payment"], [first_due]
        elif plan_type == "monthly":
            n = rng.randint(max(3, min_insts), 4)
            amounts = [final // n] * (n - 1) + [final - final // n * (n - 1)]
            labels = [f"Month {k}" for k in range(1, n + 1)]
            day = min(first_due.day, 28)
            dues = [_add_months(first_due.replace(day=day), k) for k in range(n)]
        else:
            n = rng.randint(max(2, min_insts), 4)
            shares = {2: (50, 50), 3: (40, 30, 30), 4: (25, 25, 25, 25)}[n]
            amounts = [final * p // 100 for p in shares[:-1]]
            amounts.append(final - sum(amounts))
            labels = [f"Installment {k}" for k in range(1, n + 1)]
            gap = rng.choice((30, 45))
            dues = [first_due + timedelta(days=gap * k) for k in range(n)]
        insts = [
            _Inst(self._id("inst"), k, due, amount, label)
            for k, (due, amount, label) in enumerate(
                zip(dues, amounts, labels, strict=True), start=1
            )
        ]
        plan = _Plan(
            self._id("plan"), student, batch, plan_type, dtype, dvalue, final, insts, status
        )
        student.plans.append(plan)
        self.plans.append(plan)
        assert student.customer is not None
        rows = [_Row(i.seq, f"Installment {i.seq}", i.label, i.due, i.amount * 100) for i in insts]
        inv = _Invoice(
            student.customer,
            first_due - timedelta(days=rng.randrange(0, 11)),
            self._invoice_created(),
            [(batch.item_code, batch.item_name, 1, batch.fee * 100)],
            rows,
            discount=(batch.fee - final) * 100,
            plan=plan,
            batch=batch,
        )
        plan.invoice = inv
        self.invoices.append(inv)
        return plan

    def new_native_invoice(self, customer: _Customer, kind: str) -> _Invoice:
        rng = self.rng
        batch = rng.choice(BATCHES)
        items = [(batch.item_code, batch.item_name, 1, batch.fee * 100)]
        if rng.random() < 0.3:
            items.append((_REG_FEE[0], _REG_FEE[1], 1, _REG_FEE[2] * 100))
        grand = sum(q * r for _, _, q, r in items)
        posting = date(2026, 8, 10) + timedelta(days=rng.randrange(0, 75))
        template = None
        if kind == "one_time":
            due = posting + timedelta(days=15)
            rows = [_Row(1, None, None, due, grand)]
        elif kind == "monthly":
            n = rng.randint(4, 6)
            per = grand // n // 100 * 100
            amounts = [per] * (n - 1) + [grand - per * (n - 1)]
            rows = [
                _Row(
                    k + 1,
                    None,
                    f"Month {k + 1} of {n}",
                    _add_months(posting.replace(day=min(posting.day, 28)), k),
                    a,
                )
                for k, a in enumerate(amounts)
            ]
        elif kind in ("template2", "template3"):
            shares, offsets, template = (
                ((50, 50), (0, 45), "2 Installments (50/50)")
                if kind == "template2"
                else ((40, 30, 30), (0, 30, 60), "3 Installments (40/30/30)")
            )
            amounts = [grand * p // 100 for p in shares[:-1]]
            amounts.append(grand - sum(amounts))
            rows = [
                _Row(k + 1, f"Installment {k + 1}", None, posting + timedelta(days=off), a)
                for k, (off, a) in enumerate(zip(offsets, amounts, strict=True))
            ]
        else:  # irregular: explicit rows, uneven amounts and gaps, no payment terms
            n = rng.randint(2, 4)
            amounts = [a * 100 for a in self._split(grand // 100, n, step=2500)]
            due, rows = posting, []
            for k, a in enumerate(amounts):
                rows.append(_Row(k + 1, None, f"Installment {k + 1} of {len(amounts)}", due, a))
                due = due + timedelta(days=rng.choice((12, 20, 33, 47, 61)))
        inv = _Invoice(
            customer,
            posting,
            self._invoice_created(),
            items,
            rows,
            batch=batch,
            set_batch=rng.random() < 0.7,
            template=template,
        )
        self.invoices.append(inv)
        return inv

    # --- receipts -------------------------------------------------------------------------------
    def receipt(
        self,
        intent: str,
        customer: _Customer | None,
        refs: list[_Ref],
        amount: int | None = None,
        **kw: Any,
    ) -> _PE:
        for ref in refs:
            ref.row.planned += ref.alloc
            assert ref.row.planned <= ref.row.amount, "generator over-allocated a schedule row"
        total = sum(r.alloc for r in refs) if amount is None else amount
        return _PE(intent, customer, refs, total, kw.pop("mode", None) or self._mode(), **kw)

    def row_receipts(
        self, intent: str, inv: _Invoice, row: _Row, p_any: float, p_full: float = 0.8
    ) -> list[_PE]:
        rng = self.rng
        rupees = (row.amount - row.planned) // 100
        if rupees < 500 or rng.random() >= p_any:
            return []
        k = rng.choices((1, 2, 3, 4), (45, 32, 17, 6))[0]
        pay = (
            rupees
            if rng.random() < p_full
            else max(500, round(rupees * rng.uniform(0.25, 0.8) / 500) * 500)
        )
        pay = min(pay, rupees)
        return [
            self.receipt(intent, inv.customer, [_Ref(inv, row, part * 100)])
            for part in self._split(pay, k)
        ]

    def plan_receipts(
        self,
        plan: _Plan,
        p_by_seq: tuple[float, ...] = (0.95, 0.85, 0.7, 0.55),
        *,
        keep_open: bool = False,
    ) -> list[_PE]:
        """Receipts for a plan's installments; `keep_open` leaves the last one unpaid."""
        assert plan.invoice is not None
        out: list[_PE] = []
        rows = plan.invoice.rows[:-1] if keep_open else plan.invoice.rows
        for row in rows:
            paid = self.row_receipts("push", plan.invoice, row, p_by_seq[min(row.idx, 4) - 1])
            if not paid:  # people pay in order: nothing for a later installment once one is skipped
                break
            out += paid
        return out

    # --- groups --------------------------------------------------------------------------------
    def build_groups(self) -> None:
        rng = self.rng
        by_group: dict[str, list[_Student]] = {}
        for s in self.students:
            by_group.setdefault(s.group, []).append(s)
        # 1. LMS plans; about one student in six has a second plan
        for s in by_group.get("lms_plan", []):
            self.new_plan(s)
            if rng.random() < 0.17:
                self.new_plan(s)
            seqs = [self.plan_receipts(p) for p in s.plans]
            s.events = [[pe] for pe in _interleave(rng, seqs)]
        # 2. ERP-native invoices
        kinds = ["one_time"] * 4 + ["monthly"] * 4 + ["irregular"] * 4
        for i, s in enumerate(by_group.get("native", [])):
            assert s.customer is not None
            kind = (
                kinds[i]
                if i < len(kinds)
                else rng.choices(
                    ("one_time", "monthly", "template2", "template3", "irregular"),
                    (10, 15, 25, 35, 15),
                )[0]
            )
            inv = self.new_native_invoice(s.customer, kind)
            for row in inv.rows:
                paid = self.row_receipts("needs_plan", inv, row, 0.92 if row.idx <= 2 else 0.75)
                if not paid:
                    break
                s.events += [[pe] for pe in paid]
        # 3. advances: first installment(s) paid in full, then money without references
        for s in by_group.get("advance", []):
            plan = self.new_plan(s, min_insts=2)
            s.role = "advance"
            assert plan.invoice is not None
            rows = plan.invoice.rows
            paid_rows = rng.randint(0, len(rows) - 1)
            for row in rows[:paid_rows]:
                for part in self._split(row.amount // 100, rng.randint(1, 2)):
                    s.events.append(
                        [self.receipt("push", s.customer, [_Ref(plan.invoice, row, part * 100)])]
                    )
            nxt = rows[paid_rows].amount // 100
            for part in self._split(
                rng.randint(max(1, nxt // 1000), nxt // 500) * 500, rng.randint(1, 2)
            ):
                s.events.append([self.receipt("push", s.customer, [], part * 100)])
        # ambiguous: two active PKR plans and one receipt without references
        for s in by_group.get("ambiguous", []):
            s.role = "ambiguous_plan"
            self.new_plan(s, min_insts=2)
            self.new_plan(s, min_insts=2)
            s.events = [
                [pe]
                for pe in _interleave(rng, [self.plan_receipts(p, keep_open=True) for p in s.plans])
            ]
            s.events.append([self.receipt("ambiguous_plan", s.customer, [], 10000_00)])
        # no active plan: no plan at all, or a plan the LMS cancelled (its invoice is cancelled too)
        for s in by_group.get("no_plan", []) + by_group.get("cancelled_plan", []):
            s.role = "no_active_plan"
            if s.group == "cancelled_plan":
                plan = self.new_plan(s, status="cancelled")
                plan.notes = "Student withdrew before the second month"
                assert plan.invoice is not None
                plan.invoice.docstatus = 2
                plan.invoice.cancelled = self._between(*self.window)
            s.events.append(
                [
                    self.receipt(
                        "no_active_plan", s.customer, [], rng.choice((5000, 7500, 15000)) * 100
                    )
                ]
            )
        # customers unknown to the LMS
        unknown = [c for c in self.customers if c.student is None]
        for i, cust in enumerate(unknown):
            if i < 3:  # an invoice of their own, paid against it
                inv = self.new_native_invoice(cust, "template3")
                pes = self.row_receipts("unknown_student", inv, inv.rows[0], 1.0, 1.0)
            else:
                pes = [
                    self.receipt(
                        "unknown_student", cust, [], rng.choice((8000, 12000, 20000)) * 100
                    )
                ]
            self.others += [[pe] for pe in pes]

    def build_invoice_edges(self) -> None:
        rng = self.rng
        native = [s for s in self.students if s.group == "native"]
        native_invoices = [
            i for i in self.invoices if i.plan is None and i.customer.student in native
        ]
        # a credit note returning a registration fee (or 5,000 of the course fee)
        original = next(
            (i for i in native_invoices if i.items[-1][0] == _REG_FEE[0]), native_invoices[0]
        )
        code, name, _, _ = original.items[-1]
        created = self._between(*self.window)
        note = _Invoice(
            original.customer,
            max(created.date(), original.posting),
            created,
            [(code, name, -1, _REG_FEE[2] * 100)],
            [],
            batch=original.batch,
            set_batch=original.set_batch,
            return_against=original,
            remarks="Registration fee refunded - scholarship awarded",
        )
        self.invoices.append(note)
        # a native invoice cancelled and issued again (the replacement is the live one)
        s = native[-1]
        assert s.customer is not None
        live = next(i for i in self.invoices if i.customer is s.customer)
        dead = _Invoice(
            s.customer,
            live.posting,
            live.created - timedelta(hours=rng.randint(2, 30)),
            list(live.items),
            [_Row(r.idx, r.term, r.description, r.due, r.amount) for r in live.rows],
            batch=live.batch,
            set_batch=live.set_batch,
            template=live.template,
            docstatus=2,
        )
        dead.cancelled = live.created - timedelta(minutes=rng.randint(3, 50))
        self.invoices.append(dead)

    def build_receipt_edges(self) -> None:
        rng = self.rng
        plain = [s for s in self.students if s.group == "lms_plan" and s.role == ""]
        rng.shuffle(plain)

        def take(pred: Any, role: str, count: int) -> list[_Student]:
            got = [s for s in plain if s.role == "" and pred(s)][:count]
            for s in got:
                s.role = role
            if len(got) < count:
                raise ValueError(
                    f"not enough students for the {role!r} edge case; raise n_students"
                )
            return got

        def one_open_plan(s: _Student) -> bool:
            return len(s.plans) == 1 and any(r.planned < r.amount for r in _rows(s.plans[0]))

        def single(s: _Student, intent: str = "push") -> list[_PE]:
            return [
                c[0]
                for c in s.events
                if len(c) == 1 and len(c[0].refs) == 1 and c[0].intent == intent
            ]

        # one receipt paying two installments of one invoice (merged from two full single receipts;
        # the rows need payment terms, as ERPNext refuses two rows of one invoice without them)
        def merge_pair(s: _Student, intent: str = "push") -> tuple[_PE, _PE] | None:
            full = [pe for pe in single(s, intent) if pe.refs[0].alloc == pe.refs[0].row.amount]
            for a in full:
                for b in full:
                    if (
                        a.refs[0].inv is b.refs[0].inv
                        and a.refs[0].row.term is not None
                        and b.refs[0].row.idx == a.refs[0].row.idx + 1
                    ):
                        return a, b
            return None

        for s in take(lambda s: merge_pair(s) is not None, "multi_installment", 4):
            pair = merge_pair(s)
            assert pair is not None
            self._merge(s, *pair)
        native = [s for s in self.students if s.group == "native" and merge_pair(s, "needs_plan")]
        for s in native[:2]:  # the same against ERP-native invoices
            s.role = "multi_installment"
            self._merge(s, *merge_pair(s, "needs_plan"))
        # one receipt paying two invoices of the same student
        for s in take(
            lambda s: len(s.plans) == 2 and len({id(pe.refs[0].inv) for pe in single(s)}) == 2,
            "multi_invoice",
            3,
        ):
            firsts: dict[int, _PE] = {}
            for pe in single(s):
                firsts.setdefault(id(pe.refs[0].inv), pe)
            a, b = list(firsts.values())[:2]
            self._merge(s, a, b)
        # cancelled, then amended with the right amount (one chain amended twice); cancelled only
        for i, s in enumerate(take(lambda s: len(single(s)) >= 1, "cancel_amend", 4)):
            pe = rng.choice(single(s))
            chain = [self._copy(pe, "cancelled", docstatus=2) for _ in range(2 if i == 0 else 1)]
            wrong = pe.amount - rng.choice((500, 1000, 2000)) * 100
            if wrong >= 100_00:
                chain[0].amount = chain[0].refs[0].alloc = wrong
            self._replace(s, pe, [*chain, pe])
        for s in take(lambda s: len(single(s)) >= 1, "cancelled", 2):
            pe = rng.choice(single(s))
            pe.intent, pe.docstatus = "cancelled", 2
            pe.refs[0].row.planned -= pe.refs[0].alloc
        # LMS-originated receipts (pushed by the LMS), and one LMS pair cancelled + amended
        for s in take(lambda s: len(single(s)) >= 1, "lms_originated", 6):
            pe = rng.choice(single(s))
            pe.intent, pe.lms = "lms_originated", True
        s = take(lambda s: len(single(s)) >= 1, "lms_cancel_amend", 1)[0]
        pe = rng.choice(single(s))
        pe.intent, pe.lms = "lms_originated", True
        original = self._copy(pe, "cancelled", docstatus=2)
        original.lms = True
        self._replace(s, pe, [original, pe])
        # fractional amounts
        for s in take(lambda s: any(pe.amount >= 1000_00 for pe in single(s)), "fractional", 3):
            pe = next(pe for pe in single(s) if pe.amount >= 1000_00)
            pe.intent = "fractional_amount"
            pe.amount -= 50
            pe.refs[0].alloc -= 50
            pe.refs[0].row.planned -= 50
        # currency mismatch: a USD receipt without references from a student with one PKR plan
        for s in take(one_open_plan, "currency_mismatch", 3):
            s.events.append(
                [
                    _PE(
                        "currency_mismatch",
                        s.customer,
                        [],
                        rng.choice((100, 150, 250)) * 100,
                        _MODES[0],
                        currency="USD",
                        rate=rng.choice((27845, 28010, 28190)),
                    )
                ]
            )
        # overpayment: a receipt without references above what is left of the plan (nothing else
        # touches these students' schedules after this point)
        for s in take(one_open_plan, "overpayment", 3):
            balance = sum(r.amount - r.planned for r in _rows(s.plans[0]))
            s.events.append(
                [
                    self.receipt(
                        "overpayment", s.customer, [], balance + rng.choice((2500, 5000)) * 100
                    )
                ]
            )
        # drafts: receipts typed but never submitted (against rows nobody paid yet)
        for i, s in enumerate(
            take(lambda s: any(r.planned == 0 for p in s.plans for r in _rows(p)), "draft", 4)
        ):
            row, inv = next((r, p.invoice) for p in s.plans for r in _rows(p) if r.planned == 0)
            assert inv is not None
            amount = min(row.amount, 5000_00)
            # the first was pushed by the LMS and is still a draft (like ACC-PAY-2026-00021)
            s.events.append(
                [
                    _PE(
                        "draft",
                        s.customer,
                        [_Ref(inv, row, amount)],
                        amount,
                        self._mode(),
                        docstatus=0,
                        lms=i == 0,
                    )
                ]
            )
        # Pay (suppliers) and one Internal Transfer: never synced
        for name in _SUPPLIERS[:3]:
            self.others.append(
                [
                    _PE(
                        "not_customer_receipt",
                        None,
                        [],
                        rng.choice((3500, 12800, 41000)) * 100,
                        _MODES[0],
                        payment_type="Pay",
                        supplier=name,
                    )
                ]
            )
        self.others.append(
            [
                _PE(
                    "not_customer_receipt",
                    None,
                    [],
                    150000_00,
                    _MODES[1],
                    payment_type="Internal Transfer",
                )
            ]
        )

    def _copy(self, pe: _PE, intent: str, docstatus: int) -> _PE:
        refs = [_Ref(r.inv, r.row, r.alloc) for r in pe.refs]
        return _PE(intent, pe.customer, refs, pe.amount, pe.mode, docstatus=docstatus)

    def _replace(self, s: _Student, pe: _PE, chain: list[_PE]) -> None:
        pos = next(i for i, c in enumerate(s.events) if c[0] is pe)
        s.events[pos] = chain
        for prev, nxt in zip(chain, chain[1:], strict=False):
            nxt.amended_from = prev

    def _merge(self, s: _Student, a: _PE, b: _PE) -> None:
        a.refs += b.refs
        a.amount += b.amount
        s.events = [c for c in s.events if c[0] is not b]

    def top_up(self) -> None:
        """Split ordinary receipts in two until there are `n_payments_min` Payment Entries."""
        rng = self.rng
        count = len(self.all_pes())
        candidates = [
            (s, c[0])
            for s in self.students
            if s.role == ""
            for c in s.events
            if len(c) == 1 and len(c[0].refs) == 1 and c[0].amount >= 2000_00
        ]
        rng.shuffle(candidates)
        while count < self.n_payments_min:
            if not candidates:
                raise ValueError("n_payments_min is too high for n_students; raise n_students")
            s, pe = candidates.pop()
            first, second = self._split(pe.amount // 100, 2)
            pe.amount = pe.refs[0].alloc = first * 100
            twin = _PE(
                pe.intent,
                pe.customer,
                [_Ref(pe.refs[0].inv, pe.refs[0].row, second * 100)],
                second * 100,
                self._mode(),
            )
            pos = next(i for i, c in enumerate(s.events) if c[0] is pe)
            s.events.insert(pos + 1, [twin])
            for item in (pe, twin):
                if item.amount >= 2000_00:
                    candidates.insert(rng.randrange(len(candidates) + 1), (s, item))
            count += 1

    # --- time -----------------------------------------------------------------------------------
    def assign_times(self) -> datetime:
        rng = self.rng
        lo, hi = self.window
        # one party's receipts follow one another; parties that are not students have one chain each
        for owner_chains in [s.events for s in self.students if s.events] + [
            [c] for c in self.others
        ]:
            moments = sorted(self._between(lo, hi) for _ in owner_chains)
            floor = lo
            for chain, start in zip(owner_chains, moments, strict=True):
                t = max(start, floor)
                for pe in chain:
                    pe.created = t
                    pe.submitted = t + timedelta(microseconds=rng.randint(40_000, 2_500_000))
                    if pe.docstatus == 2:
                        pe.cancelled = pe.submitted + timedelta(
                            minutes=rng.randint(4, 180), microseconds=rng.randrange(1_000_000)
                        )
                        pe.modified = pe.cancelled
                        t = pe.cancelled + timedelta(
                            minutes=rng.randint(1, 25), microseconds=rng.randrange(1_000_000)
                        )
                    elif pe.docstatus == 0:
                        pe.modified = t + timedelta(
                            seconds=rng.randint(1, 900), microseconds=rng.randrange(1_000_000)
                        )
                    else:
                        pe.modified = pe.submitted
                floor = chain[-1].modified + timedelta(minutes=1)
        # a bulk import: TIE_SIZE ordinary receipts stamped with one `modified`
        tie_at = (lo + timedelta(days=21)).replace(hour=14, minute=5, second=33, microsecond=412907)
        eligible = [
            c[0]
            for s in self.students
            if s.group == "lms_plan" and s.role == ""
            for c in s.events
            if len(c) == 1 and c[0].intent == "push" and c[0].created < tie_at
        ]
        eligible.sort(key=lambda pe: tie_at - pe.created)
        if len(eligible) < TIE_SIZE:
            raise ValueError("not enough receipts for the tie group; raise n_students")
        tied = sorted(eligible[:TIE_SIZE], key=lambda pe: pe.created)
        for k, pe in enumerate(tied):
            pe.tie = True
            pe.created = tie_at - timedelta(seconds=(TIE_SIZE - k) * 0.37)
            pe.submitted = pe.modified = tie_at
        # ~5 % of the timestamps fall on a whole second (Frappe then prints no fraction)
        for pe in self.all_pes():
            if not pe.tie and rng.random() < 0.05:
                assert pe.modified is not None and pe.created is not None
                pe.modified = pe.modified.replace(microsecond=0)
                if pe.docstatus == 1:
                    pe.submitted = pe.modified
                pe.created = min(pe.created, pe.modified)
        for pe in self.all_pes():
            assert pe.created is not None
            pe.posting = max(
                (pe.created - timedelta(days=rng.choice((0, 0, 0, 1, 2)))).date(),
                max((r.inv.posting for r in pe.refs), default=date.min),
            )
        for inv in self.invoices:
            if rng.random() < 0.05:
                inv.created = inv.created.replace(microsecond=0)
        return tie_at

    def all_pes(self) -> list[_PE]:
        return [pe for c in self.all_chains() for pe in c]

    # --- names, replay ----------------------------------------------------------------------------
    def assign_names(self) -> None:
        for n, inv in enumerate(sorted(self.invoices, key=lambda i: i.created), start=1):
            inv.name = f"ACC-SINV-2026-{n:05d}"
        chains = sorted(self.all_chains(), key=lambda c: c[0].created)
        lms_id, ref_seq = FIRST_LMS_PAYMENT_ID, 778000
        for n, chain in enumerate(chains, start=1):
            root_name = f"ACC-PAY-2026-{n:05d}"
            ref_seq += self.rng.randint(1, 40)
            for k, pe in enumerate(chain):  # Amend Counter: <name>-1, <name>-2, ...
                pe.name = f"{root_name}-{k}" if k else root_name
                if pe.mode.ref_prefix:
                    pe.ref_no = f"{pe.mode.ref_prefix}-{ref_seq}" + (
                        "" if k == 0 else "-R" if k == 1 else f"-R{k}"
                    )
                if chain[0].lms:
                    pe.zb_id, pe.lms_payment_id = f"ZB-PAY-{lms_id:06d}", lms_id
            lms_id += int(chain[0].lms)

    def all_chains(self) -> list[list[_PE]]:
        return [c for s in self.students for c in s.events] + self.others

    def replay(self) -> None:
        """Apply submits and cancels in time order, as ERPNext does, to fill the computed fields."""
        actions: list[tuple[datetime, int, str, _PE]] = []
        for pe in self.all_pes():
            if not pe.refs:
                continue
            if pe.docstatus == 0:
                actions.append((pe.created, 2, pe.name, pe))
            else:
                actions.append((pe.submitted, 0, pe.name, pe))
            if pe.docstatus == 2:
                actions.append((pe.cancelled, 1, pe.name, pe))
        for inv in self.invoices:
            inv.modified = inv.cancelled or inv.created + timedelta(
                microseconds=self.rng.randint(50_000, 400_000)
            )
        for moment, kind, _, pe in sorted(actions, key=lambda a: (a[0], a[1], a[2])):
            sign = {0: 1, 1: -1, 2: 0}[kind]
            for ref in pe.refs:
                if kind != 1:  # a cancel keeps the row's outstanding from before the payment
                    ref.term_outstanding = ref.row.amount - ref.row.paid
                if sign == 1 and ref.alloc > ref.term_outstanding:
                    raise AssertionError(
                        f"{pe.name} over-allocates {ref.inv.name} row {ref.row.idx}"
                    )
                ref.row.paid += sign * ref.alloc
                ref.inv.paid += sign * ref.alloc
            for ref in pe.refs:
                ref.outstanding = ref.inv.grand - ref.inv.paid
                if sign and moment > ref.inv.modified:
                    ref.inv.modified = moment

    # --- output ---------------------------------------------------------------------------------
    def lms_seed(self, lms_api_key: str) -> dict[str, Any]:
        payments = []
        for chain in sorted(self.all_chains(), key=lambda c: c[0].lms_payment_id or 0):
            pe = chain[-1]  # the live document of an LMS payment (submitted, or still a draft)
            if pe.lms_payment_id is None:
                continue
            ref = pe.refs[0]
            assert ref.inv.plan is not None and pe.amount % 100 == 0
            inst = ref.inv.plan.insts[ref.row.idx - 1]
            inst.lms_paid += pe.amount // 100
            paid_at = chain[0].created - timedelta(minutes=2)
            payments.append(
                {
                    "id": pe.lms_payment_id,
                    "fee_plan_id": ref.inv.plan.id,
                    "student_id": ref.inv.plan.student.id,
                    "fee_installment_id": inst.id,
                    "amount": pe.amount // 100,
                    "payment_date": datetime.combine(
                        pe.posting, time(0, 0), tzinfo=SITE_TZ
                    ).isoformat(),
                    "payment_method": pe.mode.lms_method,
                    "reference_number": pe.ref_no,
                    "receipt_number": f"RCP-{pe.lms_payment_id:06d}",
                    "notes": "",
                    "status": "received",
                    "created_at": paid_at.isoformat(timespec="seconds"),
                }
            )
        plans = []
        for plan in sorted(self.plans, key=lambda p: p.id):
            assert plan.invoice is not None
            created = plan.invoice.created - timedelta(seconds=self.rng.randint(1, 5))
            plans.append(
                {
                    "id": plan.id,
                    "student_id": plan.student.id,
                    "batch_id": plan.batch.id,
                    "plan_type": plan.plan_type,
                    "total_amount": plan.batch.fee,
                    "discount_type": plan.discount_type,
                    "discount_value": plan.discount_value,
                    "final_amount": plan.final,
                    "currency": CURRENCY,
                    "status": plan.status,
                    "notes": plan.notes,
                    "created_at": created.isoformat(timespec="seconds"),
                    "installments": [
                        {
                            "id": i.id,
                            "sequence": i.seq,
                            "amount_due": i.amount,
                            "amount_paid": i.lms_paid,
                            "due_date": i.due.isoformat(),
                            "status": _inst_status(i, self.today),
                            "label": i.label,
                        }
                        for i in plan.insts
                    ],
                }
            )
        return {
            "rate_limit_per_minute": 60000,
            "institutes": [
                {
                    "id": INSTITUTE_ID,
                    "name": "Zensbot Academy (demo)",
                    "suspended": False,
                    "api_keys": [
                        {
                            "key": lms_api_key,
                            "name": "feesync-demo",
                            "scopes": ["fees:read", "fees:write", "students:read"],
                            "expires_at": None,
                            "revoked": False,
                        }
                    ],
                    "batches": [{"id": b.id, "name": b.name} for b in BATCHES],
                    "students": [
                        {"id": s.id, "name": s.name, "email": s.email, "status": s.status}
                        for s in self.students
                    ],
                    "fee_plans": plans,
                    "payments": payments,
                }
            ],
        }

    def erp_data(self, erp_api_key: str, erp_api_secret: str) -> dict[str, Any]:
        pes = sorted(self.all_pes(), key=lambda p: (p.created, p.name))
        return {
            "site_time_zone": SITE_TZ_NAME,
            "users": [
                {
                    "user": "Administrator",
                    "api_key": erp_api_key,
                    "api_secret": erp_api_secret,
                    "roles": ["System Manager"],
                }
            ],
            "custom_fields": {
                "Payment Entry": [PE_ZB_FIELD],
                "Sales Invoice": [SI_PLAN_FIELD, SI_BATCH_FIELD],
            },
            "amend_naming": "Amend Counter",
            "rate_limit": None,
            "documents": {
                "Payment Entry": [self._pe_doc(pe) for pe in pes],
                "Sales Invoice": [
                    self._si_doc(inv) for inv in sorted(self.invoices, key=lambda i: i.name)
                ],
                "Customer": [self._customer_doc(c) for c in self.customers],
            },
        }

    def _customer_doc(self, c: _Customer) -> dict[str, Any]:
        modified = c.created + timedelta(microseconds=self.rng.randint(100_000, 900_000))
        doc: dict[str, Any] = {
            "name": c.name,
            "owner": "Administrator",
            "creation": _ts(c.created),
            "modified": _ts(modified),
            "modified_by": "Administrator",
            "docstatus": 0,
            "idx": 0,
            "naming_series": "CUST-.YYYY.-",
            "customer_name": c.customer_name,
            "customer_type": "Individual",
            "customer_group": "Individual",
            "territory": "Pakistan",
            "default_currency": CURRENCY,
            "mobile_no": c.mobile,
            "email_id": c.email,
            "disabled": 0,
            "doctype": "Customer",
        }
        if c.email:
            doc["customer_primary_contact"] = f"{c.customer_name}-{c.name}"
        return _no_nulls(doc)

    def _si_doc(self, inv: _Invoice) -> dict[str, Any]:
        grand = inv.grand
        total = sum(q * r for _, _, q, r in inv.items)
        is_return = inv.return_against is not None
        outstanding = grand if inv.docstatus == 2 else grand - inv.paid
        child = {
            "owner": "Administrator",
            "creation": _ts(inv.created),
            "modified": _ts(inv.modified),
            "modified_by": "Administrator",
            "docstatus": inv.docstatus,
            "parent": inv.name,
        }
        items = [
            {
                "name": self._hash(),
                **child,
                "idx": k,
                "item_code": code,
                "item_name": name,
                "description": name,
                "item_group": "Services",
                "qty": float(qty),
                "uom": "Nos",
                "rate": _f(rate),
                "amount": _f(qty * rate),
                "base_rate": _f(rate),
                "base_amount": _f(qty * rate),
                "income_account": "Sales - ZA",
                "cost_center": "Main - ZA",
                "parentfield": "items",
                "parenttype": "Sales Invoice",
                "doctype": "Sales Invoice Item",
            }
            for k, (code, name, qty, rate) in enumerate(inv.items, start=1)
        ]
        schedule = []
        for row in inv.rows:
            paid = row.paid if (row.term and inv.docstatus == 1) else 0
            schedule.append(
                _no_nulls(
                    {
                        "name": self._hash(),
                        **child,
                        "idx": row.idx,
                        "payment_term": row.term,
                        "description": row.description,
                        "due_date": row.due.isoformat(),
                        "invoice_portion": round(row.amount * 100 / grand, 9),
                        "discount_type": "Percentage",
                        "discount": 0.0,
                        "payment_amount": _f(row.amount),
                        "outstanding": _f(row.amount - paid),
                        "paid_amount": _f(paid),
                        "discounted_amount": 0.0,
                        "base_payment_amount": _f(row.amount),
                        "base_outstanding": _f(row.amount - paid),
                        "base_paid_amount": _f(paid),
                        "parentfield": "payment_schedule",
                        "parenttype": "Sales Invoice",
                        "doctype": "Payment Schedule",
                    }
                )
            )
        due = max((r.due for r in inv.rows), default=inv.posting)
        doc: dict[str, Any] = {
            "name": inv.name,
            "owner": "Administrator",
            "creation": _ts(inv.created),
            "modified": _ts(inv.modified),
            "modified_by": "Administrator",
            "docstatus": inv.docstatus,
            "idx": 0,
            "title": inv.customer.customer_name,
            "naming_series": "ACC-SINV-.YYYY.-",
            "customer": inv.customer.name,
            "customer_name": inv.customer.customer_name,
            "company": COMPANY,
            "posting_date": inv.posting.isoformat(),
            "set_posting_time": 1,
            "due_date": due.isoformat(),
            "is_return": int(is_return),
            "return_against": inv.return_against.name if inv.return_against else None,
            "update_outstanding_for_self": 1,
            "currency": CURRENCY,
            "conversion_rate": 1.0,
            "selling_price_list": "Standard Selling",
            "price_list_currency": CURRENCY,
            "total_qty": float(sum(q for _, _, q, _ in inv.items)),
            "base_total": _f(total),
            "total": _f(total),
            "base_net_total": _f(grand),
            "net_total": _f(grand),
            "apply_discount_on": "Grand Total",
            "discount_amount": _f(inv.discount),
            "base_discount_amount": _f(inv.discount),
            "additional_discount_percentage": 0.0,
            "base_grand_total": _f(grand),
            "grand_total": _f(grand),
            "rounding_adjustment": 0.0,
            "base_rounded_total": _f(grand),
            "rounded_total": _f(grand),
            "outstanding_amount": _f(outstanding),
            "total_advance": 0.0,
            "paid_amount": 0.0,
            "debit_to": RECEIVABLE,
            "party_account_currency": CURRENCY,
            "is_opening": "No",
            "contact_email": inv.customer.email.strip() if inv.customer.email else None,
            "payment_terms_template": inv.template,
            "customer_group": "Individual",
            "territory": "Pakistan",
            "status": _si_status(inv, outstanding, self.today),
            "remarks": inv.remarks,
            SI_PLAN_FIELD: str(inv.plan.id) if inv.plan else None,
            SI_BATCH_FIELD: inv.batch.name if inv.batch and inv.set_batch else None,
            "doctype": "Sales Invoice",
            "items": items,
            "payment_schedule": schedule,
            "payments": [],
            "advances": [],
            "taxes": [],
        }
        if is_return:
            doc["select_print_heading"] = "Credit Note"
        return _no_nulls(doc)

    def _pe_doc(self, pe: _PE) -> dict[str, Any]:
        usd = pe.currency != CURRENCY
        base_paid = pe.amount * pe.rate // 100
        allocated = sum(r.alloc for r in pe.refs)
        if pe.payment_type == "Receive":
            party_type = "Customer"
            assert pe.customer is not None
            party, party_name = pe.customer.name, pe.customer.customer_name
            paid_from, from_type = (RECEIVABLE_USD if usd else RECEIVABLE), "Receivable"
            paid_to, to_type = pe.mode.account, pe.mode.account_type
        elif pe.payment_type == "Pay":
            party_type, party, party_name = "Supplier", pe.supplier, pe.supplier
            paid_from, from_type, paid_to, to_type = (
                pe.mode.account,
                pe.mode.account_type,
                PAYABLE,
                "Payable",
            )
        else:
            party_type = party = party_name = None
            paid_from, from_type, paid_to, to_type = (
                pe.mode.account,
                pe.mode.account_type,
                "Meezan Bank - ZA",
                "Bank",
            )
        status = {0: "Draft", 1: "Submitted", 2: "Cancelled"}[pe.docstatus]
        posting = pe.posting.isoformat()
        money = f"{pe.currency} {_f(pe.amount)!r}"
        lines = [
            f"Amount {money} {'received from' if pe.payment_type == 'Receive' else 'paid to'} "
            f"{party_name or paid_to}"
        ]
        if pe.ref_no:
            lines.append(f"Transaction reference no {pe.ref_no} dated {posting}")
        lines += [
            f"Amount {pe.currency} {_f(r.alloc)!r} against Sales Invoice {r.inv.name}"
            for r in pe.refs
        ]
        child = {
            "owner": "Administrator",
            "creation": _ts(pe.created),
            "modified": _ts(pe.modified),
            "modified_by": "Administrator",
            "docstatus": pe.docstatus,
            "parent": pe.name,
        }
        refs = [
            _no_nulls(
                {
                    "name": self._hash(),
                    **child,
                    "idx": k,
                    "reference_doctype": "Sales Invoice",
                    "reference_name": r.inv.name,
                    "due_date": max(x.due for x in r.inv.rows).isoformat(),
                    "payment_term": r.row.term,
                    "payment_term_outstanding": _f(r.term_outstanding) if r.row.term else None,
                    "total_amount": _f(r.inv.grand),
                    "outstanding_amount": _f(r.outstanding),
                    "allocated_amount": _f(r.alloc),
                    "exchange_rate": 1.0,
                    "exchange_gain_loss": 0.0,
                    "account": RECEIVABLE,
                    "parentfield": "references",
                    "parenttype": "Payment Entry",
                    "doctype": "Payment Entry Reference",
                }
            )
            for k, r in enumerate(pe.refs, start=1)
        ]
        doc = {
            "name": pe.name,
            "owner": "Administrator",
            "creation": _ts(pe.created),
            "modified": _ts(pe.modified),
            "modified_by": "Administrator",
            "docstatus": pe.docstatus,
            "idx": 0,
            "naming_series": "ACC-PAY-.YYYY.-",
            "payment_type": pe.payment_type,
            "posting_date": posting,
            "company": COMPANY,
            "mode_of_payment": pe.mode.name,
            "party_type": party_type,
            "party": party,
            "party_name": party_name,
            "contact_email": ((pe.customer.email or "").strip() or None) if pe.customer else None,
            "paid_from": paid_from,
            "paid_from_account_type": from_type,
            "paid_from_account_currency": pe.currency,
            "paid_to": paid_to,
            "paid_to_account_type": to_type,
            "paid_to_account_currency": CURRENCY,
            "paid_amount": _f(pe.amount),
            "source_exchange_rate": pe.rate / 100,
            "base_paid_amount": _f(base_paid),
            "received_amount": _f(base_paid),
            "target_exchange_rate": 1.0,
            "base_received_amount": _f(base_paid),
            "total_allocated_amount": _f(allocated),
            "base_total_allocated_amount": _f(allocated * pe.rate // 100),
            "unallocated_amount": _f(pe.amount - allocated)
            if pe.payment_type != "Internal Transfer"
            else 0.0,
            "difference_amount": 0.0,
            "reference_no": pe.ref_no,
            "reference_date": posting if pe.ref_no else None,
            PE_ZB_FIELD: pe.zb_id,
            "status": status,
            "remarks": "\n".join(lines),
            "amended_from": pe.amended_from.name if pe.amended_from else None,
            "title": party_name or paid_to,
            "doctype": "Payment Entry",
            "deductions": [],
            "references": refs,
            "taxes": [],
        }
        return _no_nulls(doc)


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    return day.replace(year=day.year + month // 12, month=month % 12 + 1)


def _interleave(rng: random.Random, seqs: list[list[_PE]]) -> list[_PE]:
    """Merge several ordered lists at random, keeping each list's own order."""
    queues = [list(s) for s in seqs if s]
    out: list[_PE] = []
    while queues:
        q = rng.choice(queues)
        out.append(q.pop(0))
        queues = [x for x in queues if x]
    return out


def _rows(plan: _Plan) -> list[_Row]:
    return plan.invoice.rows if plan.invoice else []


def _inst_status(inst: _Inst, today: date) -> str:
    if inst.lms_paid >= inst.amount:
        return "paid"
    if inst.lms_paid > 0:
        return "partially_paid"
    return "overdue" if inst.due < today else "pending"


def _si_status(inv: _Invoice, outstanding: int, today: date) -> str:
    if inv.docstatus == 2:
        return "Cancelled"
    if inv.return_against is not None:
        return "Return"
    if outstanding <= 0:
        return "Paid"
    due_by_today = sum(r.amount for r in inv.rows if r.due < today)
    if inv.grand - outstanding < due_by_today:
        return "Overdue"
    return "Partly Paid" if outstanding < inv.grand else "Unpaid"


def _no_nulls(doc: dict[str, Any]) -> dict[str, Any]:
    """A v15 single-document GET leaves out every field whose value is null."""
    return {k: v for k, v in doc.items() if v is not None}


# --- the answer key ------------------------------------------------------------------------------
CONFLICT_KINDS = (
    "unknown_student",
    "ambiguous_plan",
    "currency_mismatch",
    "fractional_amount",
    "overpayment",
    "no_active_plan",
)
SKIP_REASONS = ("not_customer_receipt", "cancelled", "lms_originated")


def _cursor_key(doc: dict[str, Any]) -> tuple[str, str]:
    """`modified asc, name asc`; a value without fraction is the same instant as `.000000`."""
    modified = doc["modified"]
    return (modified if "." in modified else modified + ".000000", doc["name"])


def _is_whole(amount: float) -> bool:
    return float(amount).is_integer()


class _LmsBook:
    """The LMS fee rules the sandbox applies (lms-contract.md section 3), on a copy of the seed."""

    def __init__(self, lms_seed: dict[str, Any]) -> None:
        inst = lms_seed["institutes"][0]
        self.students = {s["email"].strip().lower(): s for s in inst["students"] if s.get("email")}
        self.plans = {
            p["id"]: {
                "id": p["id"],
                "student_id": p["student_id"],
                "currency": p["currency"],
                "status": p["status"],
                "insts": [
                    {
                        "id": i["id"],
                        "due": i["amount_due"],
                        "paid": i["amount_paid"],
                        "closed": i["status"] in ("paid", "waived"),
                    }
                    for i in sorted(p["installments"], key=lambda i: i["sequence"])
                ],
            }
            for p in inst["fee_plans"]
        }

    def active_plans(self, student_id: int) -> list[dict[str, Any]]:
        return [
            p
            for p in self.plans.values()
            if p["student_id"] == student_id and p["status"] == "active"
        ]

    @staticmethod
    def remaining(inst: dict[str, Any]) -> int:
        return 0 if inst["closed"] else max(0, inst["due"] - inst["paid"])

    def balance(self, plan: dict[str, Any]) -> int:
        return sum(self.remaining(i) for i in plan["insts"])

    def fits(self, targets: list[tuple[dict[str, Any], dict[str, Any] | None, int]]) -> bool:
        for plan, inst, amount in targets:
            room = self.balance(plan) if inst is None else self.remaining(inst)
            if plan["status"] != "active" or amount > room:
                return False
        return True

    def apply(self, plan: dict[str, Any], inst: dict[str, Any] | None, amount: int) -> None:
        left = amount
        for target in [inst] if inst is not None else plan["insts"]:
            take = min(self.remaining(target), left)
            target["paid"] += take
            target["closed"] = target["paid"] >= target["due"]
            left -= take
        if all(i["closed"] for i in plan["insts"]):
            plan["status"] = "completed"


def _classify(
    pe: dict[str, Any], book: _LmsBook, customers: dict[str, Any], invoices: dict[str, Any]
) -> tuple[str, list[tuple[dict[str, Any], dict[str, Any] | None, float]]]:
    if pe.get("payment_type") != "Receive" or pe.get("party_type") != "Customer":
        return "not_customer_receipt", []
    if pe["docstatus"] == 2:
        return "cancelled", []
    if pe.get(PE_ZB_FIELD):
        return "lms_originated", []
    email = (customers.get(pe["party"], {}).get("email_id") or "").strip().lower()
    student = book.students.get(email) if email else None
    if student is None:
        return "unknown_student", []
    targets: list[tuple[dict[str, Any], dict[str, Any] | None, float]] = []
    refs = pe.get("references") or []
    if refs:
        for ref in refs:
            inv = invoices[ref["reference_name"]]
            if not inv.get(SI_PLAN_FIELD):
                return "needs_plan", [({}, None, ref["allocated_amount"]) for ref in refs]
            plan = book.plans[int(inv[SI_PLAN_FIELD])]
            inst = None
            if ref.get("payment_term"):
                pos = [r.get("payment_term") for r in inv["payment_schedule"]].index(
                    ref["payment_term"]
                )
                inst = plan["insts"][pos]
            targets.append((plan, inst, ref["allocated_amount"]))
    else:
        active = book.active_plans(student["id"])
        same_currency = [p for p in active if p["currency"] == pe["paid_from_account_currency"]]
        if not active:
            return "no_active_plan", []
        if len(same_currency) > 1 or (len(active) > 1 and not same_currency):
            return "ambiguous_plan", []
        targets = [((same_currency or active)[0], None, pe["paid_amount"])]
    if any(plan["currency"] != pe["paid_from_account_currency"] for plan, _, _ in targets):
        return "currency_mismatch", targets
    if not all(_is_whole(amount) for _, _, amount in targets):
        return "fractional_amount", targets
    if not book.fits([(plan, inst, int(amount)) for plan, inst, amount in targets]):
        return "overpayment", targets
    return "push", targets


def _answer_key(
    lms_seed: dict[str, Any], erp_data: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    docs = erp_data["documents"]
    book = _LmsBook(lms_seed)
    customers = {c["name"]: c for c in docs["Customer"]}
    invoices = {i["name"]: i for i in docs["Sales Invoice"]}
    outcome: dict[str, str] = {}
    pushed: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, list[str]] = {r: [] for r in SKIP_REASONS}
    conflicts: dict[str, list[str]] = {k: [] for k in CONFLICT_KINDS}
    needs_plan: list[str] = []
    needs_plan_payments = needs_plan_amount = 0
    pes = docs["Payment Entry"]
    drafts = sorted(pe["name"] for pe in pes if pe["docstatus"] == 0)
    for name in drafts:
        outcome[name] = "draft"
    for pe in sorted((pe for pe in pes if pe["docstatus"] != 0), key=_cursor_key):
        kind, targets = _classify(pe, book, customers, invoices)
        outcome[pe["name"]] = kind
        if kind in skipped:
            skipped[kind].append(pe["name"])
        elif kind in conflicts:
            conflicts[kind].append(pe["name"])
        elif kind == "needs_plan":
            needs_plan.append(pe["name"])
            needs_plan_payments += len(targets)
            needs_plan_amount += sum(int(amount) for _, _, amount in targets)
        else:
            pushed[pe["name"]] = []
            for plan, inst, amount in targets:
                book.apply(plan, inst, int(amount))
                pushed[pe["name"]].append(
                    {
                        "fee_plan_id": plan["id"],
                        "fee_installment_id": inst["id"] if inst else None,
                        "amount": int(amount),
                    }
                )
    payments = [t for ts in pushed.values() for t in ts]
    key = {
        "receipts_pushable": len(pushed),
        "lms_payments_expected": len(payments),
        "lms_amount_expected": sum(t["amount"] for t in payments),
        "skipped": {r: len(names) for r, names in skipped.items()},
        "skipped_docs": skipped,
        "drafts": drafts,
        "conflicts": conflicts,
        "needs_plan": needs_plan,
        "needs_plan_payments": needs_plan_payments,
        "needs_plan_amount": needs_plan_amount,
        "pushed": pushed,
    }
    return key, outcome


def answer_key(lms_seed: dict[str, Any], erp_data: dict[str, Any]) -> dict[str, Any]:
    """What a correct sync of `erp_data` into `lms_seed` does, replayed in cursor order.

    Lists of document names are in cursor order (`modified asc, name asc`); `pushed` maps each
    pushable Payment Entry to the LMS payments it creates (`fee_installment_id` None = plan level).
    """
    return _answer_key(lms_seed, erp_data)[0]


# --- public API ----------------------------------------------------------------------------------
def build_demo(
    seed: int = 7,
    *,
    n_students: int = 220,
    n_payments_min: int = 1000,
    lms_api_key: str = "zl_demo_sandbox_key",
    erp_api_key: str = "demo_erp_key",
    erp_api_secret: str = "demo_erp_secret",  # noqa: S107 - the ERPNext fake's demo credential
    base: datetime = DEFAULT_BASE,
) -> DemoData:
    """Build the LMS seed, the matching ERPNext data and the answer key (same seed, same data)."""
    b = _Builder(seed, n_students, n_payments_min, base)
    b.make_students()
    b.make_customers()
    b.build_groups()
    b.build_invoice_edges()
    b.build_receipt_edges()
    b.top_up()
    tie_at = b.assign_times()
    b.assign_names()
    b.replay()
    lms_seed = b.lms_seed(lms_api_key)
    erp_data = b.erp_data(erp_api_key, erp_api_secret)
    expected, outcome = _answer_key(lms_seed, erp_data)
    wrong = [
        (pe.name, pe.intent, outcome.get(pe.name))
        for pe in b.all_pes()
        if outcome.get(pe.name) != pe.intent
    ]
    if wrong:
        raise RuntimeError(f"demo data generator is inconsistent with its answer key: {wrong[:5]}")
    invoices = sorted(b.invoices, key=lambda i: i.name)
    expected.update(
        {
            "native_invoices": [
                i.name
                for i in invoices
                if i.plan is None
                and i.docstatus == 1
                and i.return_against is None
                and i.customer.student is not None
            ],
            "unknown_student_invoices": [i.name for i in invoices if i.customer.student is None],
            "credit_notes": [i.name for i in invoices if i.return_against is not None],
            "cancelled_invoices": [i.name for i in invoices if i.docstatus == 2],
            "tie_modified": _ts(tie_at),
            "tie_names": sorted(pe.name for pe in b.all_pes() if pe.tie),
            "groups": {
                group: sum(1 for s in b.students if s.group == group)
                for group in (
                    "lms_plan",
                    "native",
                    "advance",
                    "ambiguous",
                    "no_plan",
                    "cancelled_plan",
                    "lms_only",
                )
            },
            "counts": {
                "students": len(b.students),
                "customers": len(b.customers),
                "fee_plans": len(b.plans),
                "lms_seed_payments": len(lms_seed["institutes"][0]["payments"]),
                "payment_entries": len(erp_data["documents"]["Payment Entry"]),
                "sales_invoices": len(erp_data["documents"]["Sales Invoice"]),
            },
        }
    )
    return DemoData(lms_seed, erp_data, expected)


def write_demo_files(out_dir: Path, **kw: Any) -> tuple[Path, Path]:
    """Write `lms-seed.json` and `erpnext-data.json` into `out_dir` (created if missing)."""
    demo = build_demo(**kw)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / "lms-seed.json", out_dir / "erpnext-data.json")
    for path, data in zip(paths, (demo.lms_seed, demo.erp_data), strict=True):
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths
