"""The LMS sandbox speaks the Zenslearn contract over real HTTP (httpx against a loopback server)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from sync import contract as C
from sync.sandbox.lms import LmsSandbox, load_seed

FULL = "zl_test_full"
READONLY = "zl_test_readonly"
BROAD = "zl_test_broad"
EXPIRED = "zl_test_expired"
REVOKED = "zl_test_revoked"
OTHER = "zl_test_other"
SUSPENDED = "zl_test_suspended"
PAY_PATH = C.path(C.PATH_PLAN_PAYMENTS, plan_id=5001)

SEED = {
    "rate_limit_per_minute": 1000,
    "institutes": [
        {
            "id": "inst-demo", "name": "Demo Institute", "suspended": False,
            "api_keys": [
                {"key": FULL, "name": "feesync", "scopes": ["fees:read", "fees:write", "students:read"]},
                {"key": READONLY, "name": "readonly", "scopes": ["fees:read"]},
                {"key": BROAD, "name": "broad", "scopes": ["read", "write"]},
                {"key": EXPIRED, "name": "expired", "scopes": ["read"], "expires_at": "2020-01-01T00:00:00Z"},
                {"key": REVOKED, "name": "revoked", "scopes": ["read"], "revoked": True},
            ],
            "batches": [{"id": 1, "name": "Python Bootcamp"}],
            "students": [{"id": 101, "name": "Ayesha Khan", "email": "ayesha.khan@example.pk"}]
            + [{"id": 101 + n, "name": f"Student {n}", "email": f"s{n}@example.pk",
                "status": "inactive" if n % 5 == 0 else "active"} for n in range(1, 25)],
            "fee_plans": [
                {"id": 5001, "student_id": 101, "batch_id": 1, "plan_type": "installment", "total_amount": 45000,
                 "installments": [
                     {"id": 90001, "sequence": 1, "amount_due": 18000, "due_date": "2026-07-01"},
                     {"id": 90002, "sequence": 2, "amount_due": 15000, "due_date": "2026-08-01"},
                     {"id": 90003, "sequence": 3, "amount_due": 12000, "due_date": "2026-09-01"}]},
                {"id": 5002, "student_id": 102, "batch_id": 1, "plan_type": "one_time", "total_amount": 10000,
                 "status": "cancelled",
                 "installments": [{"id": 90004, "sequence": 1, "amount_due": 10000, "due_date": "2026-07-01"}]},
                {"id": 5003, "student_id": 103, "batch_id": 1, "plan_type": "one_time", "total_amount": 10000,
                 "installments": [{"id": 90005, "sequence": 1, "amount_due": 10000, "due_date": "2026-07-01",
                                   "status": "paid"}]},
                {"id": 5004, "student_id": 104, "batch_id": 1, "plan_type": "installment", "total_amount": 12000,
                 "installments": [
                     {"id": 90006, "sequence": 1, "amount_due": 5000, "due_date": "2026-07-01", "status": "paid"},
                     {"id": 90007, "sequence": 2, "amount_due": 5000, "due_date": "2026-08-01"},
                     {"id": 90008, "sequence": 3, "amount_due": 2000, "due_date": "2026-09-01",
                      "status": "waived"}]},
            ],
            "payments": [],
        },
        {
            "id": "inst-other", "name": "Other Institute",
            "api_keys": [{"key": OTHER, "name": "other", "scopes": ["read", "write"]}],
            "batches": [{"id": 2, "name": "Data Science"}],
            "students": [{"id": 201, "name": "Other Student", "email": "other@example.pk"}],
            "fee_plans": [{"id": 6001, "student_id": 201, "batch_id": 2, "plan_type": "one_time",
                           "total_amount": 9000,
                           "installments": [{"id": 91001, "sequence": 1, "amount_due": 9000,
                                             "due_date": "2026-07-01"}]}],
        },
        {
            "id": "inst-suspended", "name": "Suspended Institute", "suspended": True,
            "api_keys": [{"key": SUSPENDED, "name": "suspended", "scopes": ["read", "write"]}],
        },
    ],
}


def payment_body(amount: int = 1000, **extra: object) -> dict:
    return {C.PAY_AMOUNT: amount, C.PAY_DATE: "2026-06-30T10:15:00+05:00", C.PAY_METHOD: "bank_transfer",
            C.PAY_REFERENCE: "ERP-PE-0001", **extra}


def plan_body(**overrides: object) -> dict:
    body = {C.PLAN_STUDENT_ID: 105, C.PLAN_BATCH_ID: 1, C.PLAN_TYPE: "installment", C.PLAN_TOTAL_AMOUNT: 20000,
            C.PLAN_DISCOUNT_TYPE: "percent", C.PLAN_DISCOUNT_VALUE: 10, C.PLAN_CURRENCY: "PKR",
            C.PLAN_INSTALLMENTS: [{C.INST_SEQUENCE: 1, C.INST_AMOUNT_DUE: 9000, C.INST_DUE_DATE: "2026-07-01"},
                                  {C.INST_SEQUENCE: 2, C.INST_AMOUNT_DUE: 9000, C.INST_DUE_DATE: "2026-08-01",
                                   C.INST_LABEL: "Second"}],
            C.PLAN_NOTES: "from ERP SINV-0001"}
    body.update(overrides)
    return body


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lms():
    with LmsSandbox(copy.deepcopy(SEED), clock=FakeClock(1_782_000_000.0)) as sandbox:
        yield sandbox


@pytest.fixture
def client(lms):
    with httpx.Client(base_url=lms.base_url, headers={C.HDR_API_KEY: FULL}, timeout=5) as c:
        yield c


def pay(client: httpx.Client, key: str, body: dict, plan_id: int = 5001) -> httpx.Response:
    return client.post(C.path(C.PATH_PLAN_PAYMENTS, plan_id=plan_id), json=body,
                       headers={C.HDR_IDEMPOTENCY_KEY: key})


# --- auth ----------------------------------------------------------------------------------------
def test_missing_unknown_revoked_and_expired_keys_get_401(lms):
    """Requests without a usable API key are refused with 401 and a detail."""
    with httpx.Client(base_url=lms.base_url) as c:
        assert c.get(C.PATH_STUDENTS).status_code == 401
        for key in ("zl_nope", REVOKED, EXPIRED):
            r = c.get(C.PATH_STUDENTS, headers={C.HDR_API_KEY: key})
            assert r.status_code == 401
            assert isinstance(r.json()[C.ERR_DETAIL], str)


def test_revoke_key_takes_effect_on_the_next_request(lms, client):
    """revoke_key() turns a working key into a 401."""
    assert client.get(C.PATH_STUDENTS).status_code == 200
    lms.revoke_key(FULL)
    assert client.get(C.PATH_STUDENTS).status_code == 401
    with pytest.raises(KeyError):
        lms.revoke_key("zl_unknown")


def test_suspended_institute_gets_403(lms):
    """A valid key of a suspended institute is refused with 403."""
    r = httpx.get(lms.base_url + C.PATH_STUDENTS, headers={C.HDR_API_KEY: SUSPENDED})
    assert r.status_code == 403
    assert "suspended" in r.json()[C.ERR_DETAIL].lower()


def test_missing_scope_gets_403_and_broad_scopes_cover_everything(lms):
    """fees:read cannot list students or write; read/write cover every endpoint."""
    with httpx.Client(base_url=lms.base_url, headers={C.HDR_API_KEY: READONLY}) as ro:
        assert ro.get(C.PATH_FEE_PLANS).status_code == 200
        assert ro.get(C.PATH_STUDENTS).status_code == 403
        r = pay(ro, "scope-1", payment_body())
        assert r.status_code == 403 and C.SCOPE_FEES_WRITE in r.json()[C.ERR_DETAIL]
    with httpx.Client(base_url=lms.base_url, headers={C.HDR_API_KEY: BROAD}) as broad:
        assert broad.get(C.PATH_STUDENTS).status_code == 200
        assert pay(broad, "scope-2", payment_body()).status_code == 201
    assert len(lms.payments()) == 1


def test_other_institutes_resources_are_404(lms, client):
    """A plan or student of another institute looks like it does not exist."""
    assert client.get(C.path(C.PATH_FEE_PLAN, plan_id=6001)).status_code == 404
    assert client.get(C.path(C.PATH_STUDENT, student_id=201)).status_code == 404
    assert pay(client, "other-1", payment_body(), plan_id=6001).status_code == 404
    assert client.get(C.PATH_FEE_PLANS, params={C.Q_STUDENT_ID: 201}).json()[C.PAGE_TOTAL] == 0
    assert lms.payments() == []


# --- reads and pagination -----------------------------------------------------------------------
def test_lists_have_the_page_shape_and_stable_order(client):
    """Students page 2 of 10 holds ids 111..120; the envelope carries total/page/per_page/total_pages."""
    body = client.get(C.PATH_STUDENTS, params={C.Q_PAGE: 2, C.Q_PER_PAGE: 10}).json()
    assert set(body) == {C.PAGE_DATA, C.PAGE_TOTAL, C.Q_PAGE, C.Q_PER_PAGE, C.PAGE_TOTAL_PAGES}
    assert (body[C.PAGE_TOTAL], body[C.Q_PAGE], body[C.Q_PER_PAGE], body[C.PAGE_TOTAL_PAGES]) == (25, 2, 10, 3)
    assert [s[C.STUDENT_ID] for s in body[C.PAGE_DATA]] == list(range(111, 121))
    default = client.get(C.PATH_STUDENTS).json()
    assert default[C.Q_PER_PAGE] == C.PER_PAGE_DEFAULT and len(default[C.PAGE_DATA]) == 20
    assert client.get(C.PATH_STUDENTS, params={C.Q_PAGE: 9}).json()[C.PAGE_DATA] == []


@pytest.mark.parametrize("value", ["101", "0", "abc"])
def test_bad_per_page_is_422_with_a_list_detail(client, value):
    """per_page > 100, < 1 or not an integer → FastAPI-style 422 list naming query.per_page."""
    r = client.get(C.PATH_STUDENTS, params={C.Q_PER_PAGE: value})
    assert r.status_code == 422
    detail = r.json()[C.ERR_DETAIL]
    assert isinstance(detail, list) and detail[0]["loc"] == ["query", C.Q_PER_PAGE]
    assert detail[0]["msg"] and detail[0]["type"]


def test_list_filters_search_status_student_and_plan(client):
    """search matches name or email case-insensitively; status, student_id and fee_plan_id filter."""
    found = client.get(C.PATH_STUDENTS, params={C.Q_SEARCH: "AYESHA"}).json()[C.PAGE_DATA]
    assert [s[C.STUDENT_ID] for s in found] == [101]
    by_email = client.get(C.PATH_STUDENTS, params={C.Q_SEARCH: "s24@EXAMPLE"}).json()[C.PAGE_DATA]
    assert [s[C.STUDENT_ID] for s in by_email] == [125]
    inactive = client.get(C.PATH_STUDENTS, params={C.Q_STATUS: "inactive"}).json()
    assert inactive[C.PAGE_TOTAL] == 4
    plans = client.get(C.PATH_FEE_PLANS, params={C.Q_STATUS: C.PLAN_CANCELLED}).json()[C.PAGE_DATA]
    assert [p[C.PLAN_ID] for p in plans] == [5002]
    assert pay(client, "f-1", payment_body(500)).status_code == 201
    by_plan = client.get(C.PATH_PAYMENTS, params={C.Q_FEE_PLAN_ID: 5001}).json()
    assert by_plan[C.PAGE_TOTAL] == 1
    assert client.get(C.PATH_PAYMENTS, params={C.Q_STUDENT_ID: 102}).json()[C.PAGE_TOTAL] == 0


def test_plan_student_installments_and_summary_reads(client):
    """Single resources are bare objects; plans carry installments, amount_paid, balance_due, final_amount."""
    plan = client.get(C.path(C.PATH_FEE_PLAN, plan_id=5004)).json()
    assert plan[C.PLAN_FINAL_AMOUNT] == 12000 and plan[C.PLAN_AMOUNT_PAID] == 5000
    assert plan[C.PLAN_BALANCE_DUE] == 5000 and plan[C.PLAN_STATUS] == C.PLAN_ACTIVE
    assert [i[C.INST_ID] for i in plan[C.PLAN_INSTALLMENTS]] == [90006, 90007, 90008]
    assert C.PLAN_CREATED_AT in plan
    insts = client.get(C.path(C.PATH_PLAN_INSTALLMENTS, plan_id=5004)).json()
    assert [i[C.INST_STATUS] for i in insts] == [C.INST_PAID, C.INST_PENDING, C.INST_WAIVED]
    assert client.get(C.path(C.PATH_STUDENT, student_id=101)).json()[C.STUDENT_NAME] == "Ayesha Khan"
    summary = client.get(C.path(C.PATH_STUDENT_FEE_SUMMARY, student_id=104)).json()
    assert summary[C.PLAN_STUDENT_ID] == 104 and summary[C.PLAN_CURRENCY] == "PKR"
    assert (summary[C.SUMMARY_TOTAL_DUE], summary[C.SUMMARY_TOTAL_PAID], summary[C.SUMMARY_BALANCE_DUE]) == (
        12000, 5000, 5000)
    assert summary[C.SUMMARY_OVERDUE] == 0 and len(summary[C.SUMMARY_PLANS]) == 1
    assert client.get(C.path(C.PATH_FEE_PLAN, plan_id="abc")).status_code == 422


# --- record payment ---------------------------------------------------------------------------------
def test_record_payment_waterfalls_and_completes_the_plan(lms, client):
    """Payments fill installments earliest-first, and paying the balance completes the plan."""
    r = pay(client, "pay-1", payment_body(20000))
    assert r.status_code == 201
    p = r.json()
    assert set(p) == {C.PAY_ID, C.PAY_FEE_PLAN_ID, C.PAY_STUDENT_ID, C.PAY_INSTALLMENT_ID, C.PAY_AMOUNT, C.PAY_DATE,
                      C.PAY_METHOD, C.PAY_REFERENCE, C.PAY_RECEIPT_NUMBER, C.PAY_NOTES, C.PAY_STATUS, "created_at"}
    assert (p[C.PAY_AMOUNT], p[C.PAY_FEE_PLAN_ID], p[C.PAY_STUDENT_ID], p[C.PAY_INSTALLMENT_ID]) == (
        20000, 5001, 101, 90001)
    assert p[C.PAY_RECEIPT_NUMBER] == "RCP-000001" and p[C.PAY_STATUS] == C.PAY_RECEIVED
    plan = client.get(C.path(C.PATH_FEE_PLAN, plan_id=5001)).json()
    assert [(i[C.INST_AMOUNT_PAID], i[C.INST_STATUS]) for i in plan[C.PLAN_INSTALLMENTS]] == [
        (18000, C.INST_PAID), (2000, C.INST_PARTIALLY_PAID), (0, C.INST_PENDING)]
    assert plan[C.PLAN_BALANCE_DUE] == 25000
    r2 = pay(client, "pay-2", payment_body(25000))
    assert r2.status_code == 201 and r2.json()[C.PAY_RECEIPT_NUMBER] == "RCP-000002"
    assert r2.json()[C.PAY_INSTALLMENT_ID] == 90002
    plan = lms.plans("inst-demo")[0]
    assert plan[C.PLAN_STATUS] == C.PLAN_COMPLETED and plan[C.PLAN_BALANCE_DUE] == 0
    assert pay(client, "pay-3", payment_body(1)).json()[C.ERR_DETAIL] == C.DETAIL_PLAN_COMPLETED


def test_payment_to_a_named_installment_goes_only_there(client):
    """fee_installment_id directs the whole amount to that installment."""
    r = pay(client, "named-1", payment_body(12000, **{C.PAY_INSTALLMENT_ID: 90003}))
    assert r.status_code == 201 and r.json()[C.PAY_INSTALLMENT_ID] == 90003
    insts = client.get(C.path(C.PATH_PLAN_INSTALLMENTS, plan_id=5001)).json()
    assert [i[C.INST_STATUS] for i in insts] == [C.INST_PENDING, C.INST_PENDING, C.INST_PAID]
    again = pay(client, "named-2", payment_body(1, **{C.PAY_INSTALLMENT_ID: 90003}))
    assert (again.status_code, again.json()[C.ERR_DETAIL]) == (409, C.DETAIL_INSTALLMENT_PAID)
    assert pay(client, "named-3", payment_body(1, **{C.PAY_INSTALLMENT_ID: 91001})).status_code == 404


def test_replay_returns_the_original_answer_and_stores_one_payment(lms, client):
    """The same key and body replays status and body byte-for-byte, flagged Idempotent-Replayed."""
    first = pay(client, "replay-1", payment_body(3000))
    second = pay(client, "replay-1", payment_body(3000))
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.content == first.content
    assert second.headers[C.HDR_REPLAYED] == "true" and C.HDR_REPLAYED not in first.headers
    assert len(lms.payments()) == 1
    stats = lms.stats()
    assert (stats["writes_received"], stats["writes_applied"], stats["replays"]) == (2, 1, 1)


def test_key_reused_with_another_body_is_409(lms, client):
    """Reusing an Idempotency-Key for a different body is refused with the key-reuse detail."""
    assert pay(client, "reuse-1", payment_body(3000)).status_code == 201
    r = pay(client, "reuse-1", payment_body(3001))
    assert (r.status_code, r.json()[C.ERR_DETAIL]) == (409, C.DETAIL_KEY_REUSED)
    assert len(lms.payments()) == 1


def test_missing_idempotency_key_is_400(lms, client):
    """Record payment without Idempotency-Key is a 400 with the contract's detail."""
    r = client.post(PAY_PATH, json=payment_body())
    assert (r.status_code, r.json()[C.ERR_DETAIL]) == (400, C.DETAIL_MISSING_IDEMPOTENCY_KEY)
    assert lms.payments() == []


def test_overpayment_is_422_with_remaining_balance_and_replays(lms, client):
    """Paying more than the balance → 422 with remaining_balance; a retry replays that 422."""
    r = pay(client, "over-1", payment_body(45001))
    assert r.status_code == 422
    assert r.json() == {C.ERR_DETAIL: C.DETAIL_OVERPAYMENT, C.ERR_REMAINING_BALANCE: 45000}
    again = pay(client, "over-1", payment_body(45001))
    assert again.status_code == 422 and again.content == r.content and again.headers[C.HDR_REPLAYED] == "true"
    named = pay(client, "over-2", payment_body(15001, **{C.PAY_INSTALLMENT_ID: 90002}))
    assert named.json()[C.ERR_REMAINING_BALANCE] == 15000
    assert lms.payments() == []


def test_business_409s_cancelled_completed_paid_waived(client):
    """Cancelled/completed plans and paid/waived installments refuse payments with their 409 detail."""
    cases = [(5002, None, C.DETAIL_PLAN_CANCELLED), (5003, None, C.DETAIL_PLAN_COMPLETED),
             (5004, 90006, C.DETAIL_INSTALLMENT_PAID), (5004, 90008, C.DETAIL_INSTALLMENT_WAIVED)]
    for n, (plan_id, inst_id, detail) in enumerate(cases):
        extra = {C.PAY_INSTALLMENT_ID: inst_id} if inst_id else {}
        r = pay(client, f"b409-{n}", payment_body(100, **extra), plan_id=plan_id)
        assert (r.status_code, r.json()[C.ERR_DETAIL]) == (409, detail)


@pytest.mark.parametrize("field,value", [
    (C.PAY_AMOUNT, 100.5), (C.PAY_AMOUNT, 100.0), (C.PAY_AMOUNT, "100"), (C.PAY_AMOUNT, True), (C.PAY_AMOUNT, 0),
    (C.PAY_DATE, "2026-06-30T10:15:00"), (C.PAY_DATE, "2026-06-30"), (C.PAY_DATE, "yesterday"),
    (C.PAY_METHOD, "bitcoin"), (C.PAY_INSTALLMENT_ID, "90001"), ("surprise", 1),
])
def test_invalid_payment_bodies_are_422_with_a_list_detail(lms, client, field, value):
    """Strict validation: floats, strings, bools, naive timestamps, unknown methods and extra fields → 422 list."""
    r = pay(client, f"bad-{field}-{value!r}", payment_body(**{field: value}))
    assert r.status_code == 422
    detail = r.json()[C.ERR_DETAIL]
    assert isinstance(detail, list) and detail[0]["loc"] == ["body", field]
    assert C.ERR_REMAINING_BALANCE not in r.json()
    assert lms.payments() == []


def test_validation_422_is_not_stored_so_the_key_can_be_reused(client):
    """A body that failed validation does not burn the key: the corrected body then succeeds."""
    assert pay(client, "fixme-1", payment_body(100.5)).status_code == 422
    missing = pay(client, "fixme-1", {C.PAY_AMOUNT: 100})
    assert {e["loc"][1] for e in missing.json()[C.ERR_DETAIL]} == {C.PAY_DATE, C.PAY_METHOD}
    assert client.post(PAY_PATH, content=b"{not json", headers={C.HDR_IDEMPOTENCY_KEY: "fixme-1"}).status_code == 422
    assert pay(client, "fixme-1", payment_body(100)).status_code == 201


def test_concurrent_requests_with_one_key_apply_once(lms):
    """Eight simultaneous posts with the same key create exactly one payment."""
    results: list[httpx.Response] = []

    def worker() -> None:
        with httpx.Client(base_url=lms.base_url, headers={C.HDR_API_KEY: FULL}) as c:
            results.append(pay(c, "race-1", payment_body(700)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [201] * 8
    assert len({r.content for r in results}) == 1
    assert len(lms.payments()) == 1 and lms.stats()["replays"] == 7


# --- create / cancel / waive ---------------------------------------------------------------------------
def test_create_plan_returns_201_and_replays_with_its_key(lms, client):
    """POST /fee-plans creates a plan with computed final_amount; the same key replays it."""
    headers = {C.HDR_IDEMPOTENCY_KEY: "SINV-0001"}
    r = client.post(C.PATH_FEE_PLANS, json=plan_body(), headers=headers)
    assert r.status_code == 201
    plan = r.json()
    assert plan[C.PLAN_ID] > 6001 and plan[C.PLAN_FINAL_AMOUNT] == 18000 and plan[C.PLAN_STATUS] == C.PLAN_ACTIVE
    assert plan[C.PLAN_BALANCE_DUE] == 18000 and plan[C.PLAN_AMOUNT_PAID] == 0
    assert [(i[C.INST_SEQUENCE], i[C.INST_LABEL], i[C.INST_STATUS]) for i in plan[C.PLAN_INSTALLMENTS]] == [
        (1, "Installment 1", C.INST_PENDING), (2, "Second", C.INST_PENDING)]
    assert all(isinstance(i[C.INST_ID], int) for i in plan[C.PLAN_INSTALLMENTS])
    replay = client.post(C.PATH_FEE_PLANS, json=plan_body(), headers=headers)
    assert replay.status_code == 201 and replay.content == r.content
    assert len(lms.plans("inst-demo")) == 5
    assert client.post(C.PATH_FEE_PLANS, json=plan_body(notes="x"), headers=headers).status_code == 409


def test_ignore_idempotency_toggle_makes_create_plan_retries_duplicate(lms, client):
    """With the toggle on, a retry with the same key creates a second plan."""
    lms.faults.ignore_idempotency_on_create_plan = True
    headers = {C.HDR_IDEMPOTENCY_KEY: "SINV-0002"}
    ids = [client.post(C.PATH_FEE_PLANS, json=plan_body(), headers=headers).json()[C.PLAN_ID] for _ in range(2)]
    assert ids[0] != ids[1]
    assert len([p for p in lms.plans() if p[C.PLAN_STUDENT_ID] == 105]) == 2


def test_create_plan_rejects_bad_bodies_and_unknown_references(client):
    """Installment sums must match final_amount (422 string), fields are strict (422 list), refs must exist (404)."""
    r = client.post(C.PATH_FEE_PLANS, json=plan_body(**{C.PLAN_DISCOUNT_VALUE: 0}))
    assert r.status_code == 422 and isinstance(r.json()[C.ERR_DETAIL], str)
    r = client.post(C.PATH_FEE_PLANS, json=plan_body(**{C.PLAN_TYPE: "weekly", "extra": 1}))
    assert r.status_code == 422
    assert {tuple(e["loc"]) for e in r.json()[C.ERR_DETAIL]} == {("body", C.PLAN_TYPE), ("body", "extra")}
    bad_inst = plan_body()
    bad_inst[C.PLAN_INSTALLMENTS][0][C.INST_DUE_DATE] = "01/07/2026"
    assert client.post(C.PATH_FEE_PLANS, json=bad_inst).json()[C.ERR_DETAIL][0]["loc"] == [
        "body", C.PLAN_INSTALLMENTS, 0, C.INST_DUE_DATE]
    assert client.post(C.PATH_FEE_PLANS, json=plan_body(**{C.PLAN_STUDENT_ID: 201})).status_code == 404
    assert client.post(C.PATH_FEE_PLANS, json=plan_body(**{C.PLAN_BATCH_ID: 2})).status_code == 404


def test_cancel_plan_then_cancel_again_is_409(client):
    """Cancel answers 200 with the cancelled plan; a second cancel is 409 already-cancelled."""
    url = C.path(C.PATH_PLAN_CANCEL, plan_id=5001)
    r = client.post(url, json={C.PLAN_CANCEL_REASON: "withdrew"})
    assert r.status_code == 200 and r.json()[C.PLAN_STATUS] == C.PLAN_CANCELLED
    again = client.post(url, json={C.PLAN_CANCEL_REASON: "withdrew"})
    assert (again.status_code, again.json()[C.ERR_DETAIL]) == (409, C.DETAIL_PLAN_ALREADY_CANCELLED)
    assert pay(client, "after-cancel", payment_body()).json()[C.ERR_DETAIL] == C.DETAIL_PLAN_CANCELLED


def test_cancel_with_an_idempotency_key_replays(lms, client):
    """An optional key on cancel makes its retry replay the 200 instead of a 409."""
    url, headers = C.path(C.PATH_PLAN_CANCEL, plan_id=5001), {C.HDR_IDEMPOTENCY_KEY: "cancel-5001"}
    first = client.post(url, json={C.PLAN_CANCEL_REASON: "x"}, headers=headers)
    second = client.post(url, json={C.PLAN_CANCEL_REASON: "x"}, headers=headers)
    assert (first.status_code, second.status_code) == (200, 200) and second.headers[C.HDR_REPLAYED] == "true"
    assert lms.stats()["writes_applied"] == 1


def test_waive_rules_and_completion(lms, client):
    """Waive answers the installment; paid/waived installments are 409; waiving the last open one completes."""
    def waive(inst_id: int) -> httpx.Response:
        return client.post(C.path(C.PATH_INSTALLMENT_WAIVE, plan_id=5004, installment_id=inst_id),
                           json={C.INST_WAIVE_REASON: "scholarship"})

    assert (waive(90006).status_code, waive(90006).json()[C.ERR_DETAIL]) == (409, C.DETAIL_INSTALLMENT_PAID)
    assert waive(90008).json()[C.ERR_DETAIL] == C.DETAIL_INSTALLMENT_WAIVED
    assert waive(90001).status_code == 404
    r = waive(90007)
    assert r.status_code == 200 and r.json()[C.INST_STATUS] == C.INST_WAIVED and r.json()[C.INST_ID] == 90007
    plan = client.get(C.path(C.PATH_FEE_PLAN, plan_id=5004)).json()
    assert plan[C.PLAN_STATUS] == C.PLAN_COMPLETED and plan[C.PLAN_BALANCE_DUE] == 0


# --- rate limit --------------------------------------------------------------------------------------
def test_rate_limit_is_a_fixed_window_with_retry_after():
    """Over the per-key limit → 429 with Retry-After = seconds left in the minute; the next window resets."""
    clock = FakeClock(1_782_000_015.5)  # 15.5 s into a minute (1_782_000_000 is a multiple of 60)
    with LmsSandbox(copy.deepcopy(SEED), rate_limit_per_minute=3, clock=clock) as lms, \
            httpx.Client(base_url=lms.base_url, headers={C.HDR_API_KEY: FULL}) as c:
        assert [c.get(C.PATH_STUDENTS).status_code for _ in range(3)] == [200, 200, 200]
        r = c.get(C.PATH_STUDENTS)
        assert r.status_code == 429 and r.json() == {C.ERR_DETAIL: "Rate limit exceeded"}
        assert r.headers[C.HDR_RETRY_AFTER] == "45"
        other = c.get(C.PATH_FEE_PLANS, headers={C.HDR_API_KEY: BROAD})
        assert other.status_code == 200
        clock.now = 1_782_000_059.9
        assert c.get(C.PATH_STUDENTS).headers[C.HDR_RETRY_AFTER] == "1"
        clock.now = 1_782_000_060.0
        assert c.get(C.PATH_STUDENTS).status_code == 200
        assert lms.stats()["rate_limited"] == 2


def test_rate_limit_defaults_to_the_seed_value(tmp_path):
    """Without a constructor limit the seed's rate_limit_per_minute applies."""
    seed = copy.deepcopy(SEED)
    seed["rate_limit_per_minute"] = 1
    path = tmp_path / "seed.json"
    path.write_text(__import__("json").dumps(seed))
    with LmsSandbox(load_seed(path), clock=FakeClock(1_782_000_000.0)) as lms, \
            httpx.Client(base_url=lms.base_url, headers={C.HDR_API_KEY: FULL}) as c:
        assert [c.get(C.PATH_STUDENTS).status_code for _ in range(2)] == [200, 429]


# --- faults ------------------------------------------------------------------------------------------
def test_drop_after_apply_loses_the_answer_but_keeps_the_payment(lms, client):
    """The client sees a transport error, the payment exists once, and the retry replays it."""
    lms.faults.drop_after_apply(path_regex=r"/payments$")
    with pytest.raises(httpx.TransportError):
        pay(client, "lost-1", payment_body(5000))
    assert len(lms.payments()) == 1
    retry = pay(client, "lost-1", payment_body(5000))
    assert retry.status_code == 201 and retry.headers[C.HDR_REPLAYED] == "true"
    assert retry.json()[C.PAY_ID] == lms.payments()[0][C.PAY_ID]
    assert len(lms.payments()) == 1 and lms.stats()["dropped"] == 1


def test_fail_fault_answers_before_applying(lms, client):
    """fail() answers its status without touching state, then the fault is used up."""
    lms.faults.fail(status=503, method="POST")
    r = pay(client, "fail-1", payment_body(1000))
    assert r.status_code == 503 and C.ERR_DETAIL in r.json()
    assert lms.payments() == []
    assert pay(client, "fail-1", payment_body(1000)).status_code == 201
    lms.faults.fail(status=429, retry_after=7)
    lms.faults.fail(status=429)
    first, second = client.get(C.PATH_STUDENTS), client.get(C.PATH_STUDENTS)
    assert (first.status_code, first.headers[C.HDR_RETRY_AFTER]) == (429, "7")
    assert second.status_code == 429 and C.HDR_RETRY_AFTER not in second.headers
    assert client.get(C.PATH_STUDENTS).status_code == 200


def test_slow_fault_delays_the_answer(lms, client):
    """slow() sleeps before handling, then answers normally."""
    lms.faults.slow(0.3)
    t0 = time.monotonic()
    assert client.get(C.PATH_STUDENTS).status_code == 200
    assert time.monotonic() - t0 >= 0.3


@pytest.mark.parametrize("kind", ["html", "not_json", "truncated", "wrong_content_type", "empty_200"])
def test_garbage_fault_sends_an_unusable_body(lms, client, kind):
    """garbage() answers a body that is not the JSON the contract promises, and applies nothing."""
    lms.faults.garbage(kind=kind)
    r = pay(client, "garbage-1", payment_body(1000))
    assert r.status_code == 200
    if kind == "wrong_content_type":
        assert not r.headers["content-type"].startswith("application/json")
    else:
        with pytest.raises(ValueError):
            r.json()
    assert lms.payments() == []
    assert pay(client, "garbage-1", payment_body(1000)).status_code == 201


def test_short_body_garbage_breaks_the_transport(lms, client):
    """short_body promises more bytes than it sends, which the client sees as a protocol error."""
    lms.faults.garbage(kind="short_body")
    with pytest.raises(httpx.TransportError):
        client.get(C.PATH_STUDENTS)
    assert client.get(C.PATH_STUDENTS).status_code == 200


def test_handler_bug_answers_500_and_the_server_survives(lms, client, monkeypatch):
    """An exception inside a handler becomes 500 Internal server error."""
    def boom(*_a, **_k):
        raise RuntimeError("bug")

    monkeypatch.setattr(lms._state, "list_students", boom)
    r = client.get(C.PATH_STUDENTS)
    assert r.status_code == 500 and r.json() == {C.ERR_DETAIL: "Internal server error"}
    assert client.get(C.PATH_FEE_PLANS).status_code == 200


# --- admin endpoints and stats -----------------------------------------------------------------------------
def test_admin_endpoints_drive_faults_and_show_state(lms, client):
    """/_sandbox/* arms faults, revokes keys, toggles create-plan idempotency and exposes state."""
    with httpx.Client(base_url=lms.admin_url) as admin:
        assert admin.post("/faults", json={"type": "fail", "status": 502, "method": "POST"}).status_code == 200
        assert admin.post("/faults", json={"type": "bogus"}).status_code == 400
        assert pay(client, "adm-1", payment_body(100)).status_code == 502
        assert admin.post("/faults", json={"type": "drop_after_apply", "path_regex": "/payments$"}).status_code == 200
        assert admin.post("/clear-faults").status_code == 200
        assert pay(client, "adm-1", payment_body(100)).status_code == 201
        assert admin.post("/ignore-idempotency-on-create-plan", json={"value": True}).status_code == 200
        assert lms.faults.ignore_idempotency_on_create_plan is True
        state = admin.get("/state").json()
        assert set(state) == {"stats", "payments", "plans"}
        assert [p[C.PAY_AMOUNT] for p in state["payments"]] == [100]
        assert len(state["plans"]) == 5
        assert admin.post("/revoke", json={"key": FULL}).status_code == 200
        assert admin.post("/revoke", json={"key": "nope"}).status_code == 404
    assert client.get(C.PATH_STUDENTS).status_code == 401
    stats = lms.stats()
    assert stats["requests"] == 3 and stats["by_status"] == {"502": 1, "201": 1, "401": 1}


def test_stats_count_requests_statuses_writes_and_replays(lms, client):
    """stats() counts every API request by status, writes received vs applied, and replays."""
    client.get(C.PATH_STUDENTS)
    pay(client, "st-1", payment_body(100))
    pay(client, "st-1", payment_body(100))
    pay(client, "st-2", payment_body(10**6))
    client.post(PAY_PATH, json=payment_body())
    httpx.get(lms.base_url + C.PATH_STUDENTS)
    assert lms.stats() == {"requests": 6, "by_status": {"200": 1, "201": 2, "422": 1, "400": 1, "401": 1},
                           "writes_received": 4, "writes_applied": 1, "replays": 1, "rate_limited": 0,
                           "dropped": 0}


def test_keep_alive_serves_many_requests_quickly(lms, client):
    """Hundreds of keep-alive requests on one connection complete well within a second or two."""
    t0 = time.monotonic()
    for _ in range(300):
        assert client.get(C.path(C.PATH_FEE_PLAN, plan_id=5001)).status_code == 200
    assert time.monotonic() - t0 < 3


def test_serve_forever_prints_key_names_and_stops_on_sigterm(tmp_path):
    """The CLI prints the base URL and key names (never values) and exits cleanly on SIGTERM."""
    path = tmp_path / "seed.json"
    path.write_text(__import__("json").dumps(SEED))
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "sync.sandbox.lms", "--seed", str(path), "--port", "0"],
                            cwd=root, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)})
    try:
        line = proc.stderr.readline()
        assert C.API_PREFIX in line and "inst-demo/feesync" in line and FULL not in line
        url = line.split()[3]
        assert httpx.get(url + C.PATH_STUDENTS, headers={C.HDR_API_KEY: FULL}).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
