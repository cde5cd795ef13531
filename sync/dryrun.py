"""What the LMS would hold after a dry run's writes so far, so that a dry run lists what the real run
then writes: a later receipt of the same run sees the balance an earlier one left, an overpaid or
completed plan is predicted as the conflict the LMS's answer would open, and credit-note waivers see
the installments earlier receipts paid.

The rules are the pinned status rules of `lms-contract.md` §3 (the LMS sandbox follows the same ones);
a refusal is turned into a conflict by the same classifier as a real answer (`lms.classify`), so
the predicted kind is the kind the real run opens. Plans are read once (GET, a dry run may read) and
copied; nothing is written anywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from sync import contract as C
from sync.lms import classify
from sync.mapping import PlannedWrite

UNPAID = (C.INST_PENDING, C.INST_PARTIALLY_PAID, C.INST_OVERDUE)
CLOSED = (C.INST_PAID, C.INST_WAIVED)


class DryLms:
    """A copy-on-read view of the plans a dry run touches, changed by the writes it plans."""

    def __init__(self, read_plan: Callable[[str], dict[str, Any]]) -> None:
        self._read_plan = read_plan
        self.plans: dict[str, dict[str, Any]] = {}

    # --- plans -----------------------------------------------------------------------------------
    def add_new_plan(self, plan_id: str, body: dict[str, Any]) -> None:
        """A plan the dry run would create (its create-plan body), with placeholder installment ids."""
        self.plans[plan_id] = {
            C.PLAN_ID: plan_id, C.PLAN_STATUS: C.PLAN_ACTIVE, C.PLAN_CURRENCY: body.get(C.PLAN_CURRENCY),
            C.PLAN_INSTALLMENTS: [
                {C.INST_ID: f"<installment {i[C.INST_SEQUENCE]} of {plan_id}>", C.INST_SEQUENCE: i[C.INST_SEQUENCE],
                 C.INST_AMOUNT_DUE: int(i[C.INST_AMOUNT_DUE]), C.INST_AMOUNT_PAID: 0, C.INST_STATUS: C.INST_PENDING}
                for i in body.get(C.PLAN_INSTALLMENTS) or []]}

    def plan(self, plan_id: str) -> dict[str, Any]:
        if plan_id not in self.plans:
            self.plans[plan_id] = copy.deepcopy(self._read_plan(plan_id))
        return self.plans[plan_id]

    def knows(self, plan_id: str) -> bool:
        return plan_id in self.plans

    # --- writes ----------------------------------------------------------------------------------
    def apply(self, pw: PlannedWrite) -> None:
        """Apply one planned write as the LMS would, or raise the ConflictError its refusal opens."""
        if pw.plan_id is None or pw.op not in ("record_payment", "waive_installment", "cancel_plan"):
            return
        plan = self.plan(pw.plan_id)
        if pw.op == "record_payment":
            self._pay(plan, pw.body)
        elif pw.op == "waive_installment":
            self._waive(plan, pw.path)
        else:
            if plan.get(C.PLAN_STATUS) == C.PLAN_CANCELLED:
                _refuse(409, C.DETAIL_PLAN_ALREADY_CANCELLED)
            plan[C.PLAN_STATUS] = C.PLAN_CANCELLED

    def _pay(self, plan: dict[str, Any], body: dict[str, Any]) -> None:
        amount = int(body[C.PAY_AMOUNT])
        named = self._installment(plan, body.get(C.PAY_INSTALLMENT_ID))
        if plan.get(C.PLAN_STATUS) == C.PLAN_CANCELLED:
            _refuse(409, C.DETAIL_PLAN_CANCELLED)
        if plan.get(C.PLAN_STATUS) == C.PLAN_COMPLETED:
            _refuse(409, C.DETAIL_PLAN_COMPLETED)
        if named is not None:
            if named.get(C.INST_STATUS) == C.INST_PAID:
                _refuse(409, C.DETAIL_INSTALLMENT_PAID)
            if named.get(C.INST_STATUS) == C.INST_WAIVED:
                _refuse(409, C.DETAIL_INSTALLMENT_WAIVED)
            balance = _remaining(named)
        else:
            balance = sum(_remaining(i) for i in _installments(plan))
        if amount > balance:
            _refuse(422, C.DETAIL_OVERPAYMENT, remaining=balance)
        if named is not None:
            _take(named, amount)
        else:
            left = amount
            for inst in _installments(plan):
                take = min(_remaining(inst), left)
                if take:
                    _take(inst, take)
                    left -= take
                if not left:
                    break
        _complete_if_closed(plan)

    def _waive(self, plan: dict[str, Any], path: str) -> None:
        inst = next((i for i in _installments(plan) if path.endswith(f"/installments/{i[C.INST_ID]}/waive")), None)
        if inst is None:
            return
        if plan.get(C.PLAN_STATUS) == C.PLAN_CANCELLED:
            _refuse(409, C.DETAIL_PLAN_CANCELLED)
        if inst.get(C.INST_STATUS) == C.INST_PAID:
            _refuse(409, C.DETAIL_INSTALLMENT_PAID)
        if inst.get(C.INST_STATUS) == C.INST_WAIVED:
            _refuse(409, C.DETAIL_INSTALLMENT_WAIVED)
        inst[C.INST_STATUS] = C.INST_WAIVED
        _complete_if_closed(plan)

    @staticmethod
    def _installment(plan: dict[str, Any], installment_id: Any) -> dict[str, Any] | None:
        if installment_id is None:
            return None
        return next((i for i in _installments(plan) if str(i.get(C.INST_ID)) == str(installment_id)), None)


def _installments(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(plan.get(C.PLAN_INSTALLMENTS) or [], key=lambda i: i.get(C.INST_SEQUENCE) or 0)


def _remaining(inst: dict[str, Any]) -> int:
    if inst.get(C.INST_STATUS) not in UNPAID:
        return 0
    return max(0, int(inst.get(C.INST_AMOUNT_DUE) or 0) - int(inst.get(C.INST_AMOUNT_PAID) or 0))


def _take(inst: dict[str, Any], amount: int) -> None:
    inst[C.INST_AMOUNT_PAID] = int(inst.get(C.INST_AMOUNT_PAID) or 0) + amount
    if inst[C.INST_AMOUNT_PAID] >= int(inst.get(C.INST_AMOUNT_DUE) or 0):
        inst[C.INST_STATUS] = C.INST_PAID
    elif inst[C.INST_AMOUNT_PAID] > 0:
        inst[C.INST_STATUS] = C.INST_PARTIALLY_PAID


def _complete_if_closed(plan: dict[str, Any]) -> None:
    if plan.get(C.PLAN_STATUS) == C.PLAN_ACTIVE and _installments(plan) and all(
            i.get(C.INST_STATUS) in CLOSED for i in _installments(plan)):
        plan[C.PLAN_STATUS] = C.PLAN_COMPLETED


def _refuse(status: int, detail: str, *, remaining: int | None = None) -> None:
    body: dict[str, Any] = {C.ERR_DETAIL: detail}
    if remaining is not None:
        body[C.ERR_REMAINING_BALANCE] = remaining
    classify(status, body)   # raises the ConflictError a real answer of this status and body raises
    raise AssertionError(f"classify accepted a {status} refusal")   # pragma: no cover
