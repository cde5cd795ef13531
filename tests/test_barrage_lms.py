"""Bad-input barrage, LMS side: hostile answers (non-JSON or HTML bodies, wrong content types, 200 with
garbage, truncated, oversized and absurdly nested bodies, odd statuses and headers).

The client never lets an unexpected exception out, never takes an answer it cannot read for a
success, and the engine, fed such answers before and after the LMS applied a write, still ends
with every receipt exactly once in the LMS and a ledger that agrees with it.
"""

from __future__ import annotations

import csv
import json
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from sync import contract as C
from sync.app import build_app
from sync.config import LmsSettings
from sync.errors import FeesyncError, RetryLater
from sync.lms import LmsClient
from sync.sandbox.lms import LmsSandbox
from sync.state import documents, writes
from tests import barrage, scenario

JSON_TYPES = ("application/json", "application/json; charset=utf-8", "application/problem+json")
OTHER_TYPES = ("text/html; charset=utf-8", "text/plain", "application/octet-stream", None)
PAYMENT = {"id": 77, "fee_plan_id": 5000, "amount": 1000, "receipt_number": "RCP-000077", "status": "received",
           "payment_method": "cash"}
PAYMENT_JSON = json.dumps(PAYMENT).encode()
BIG = b'{"detail": "' + b"x" * 6_000_000 + b'"}'                      # over the client's 5 MB cap
NESTED = b"[" * 100_000 + b"]" * 100_000                              # parses only with deep recursion
BODIES: dict[str, bytes] = {
    "payment": PAYMENT_JSON,
    "payment_truncated": PAYMENT_JSON[: len(PAYMENT_JSON) // 2],
    "html": b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>",
    "not_json": b"this is not JSON {",
    "empty": b"",
    "json_list": b"[1, 2, 3]",
    "json_string": b'"ok"',
    "json_null": b"null",
    "json_number": b"201",
    "object_without_ids": b'{"ok": true}',
    "latin1_bytes": b"\xff\xfe\xfd not utf-8",
    "detail_string": json.dumps({"detail": "Plan is completed"}).encode(),
    "detail_long": json.dumps({"detail": "y" * 20_000}).encode(),
    "detail_list": json.dumps({"detail": [{"loc": ["body", "amount"], "msg": "bad", "type": "x"}]}).encode(),
    "detail_list_odd": json.dumps({"detail": [{"loc": 5, "msg": None}, 7, None, {"loc": None}]}).encode(),
    "detail_object": json.dumps({"detail": {"nested": [1, 2]}}).encode(),
    "overpayment": json.dumps({"detail": "Payment exceeds balance", "remaining_balance": "lots"}).encode(),
    "oversized": BIG,
    "deeply_nested": NESTED,
}
STATUSES = (200, 201, 202, 204, 299, 301, 304, 400, 401, 403, 404, 405, 409, 418, 422, 429, 500, 502, 503, 504, 599)
RETRY_AFTER = (None, "1", "0", "-3", "abc", "1e309", "nan", "2.5", "")

answers = st.fixed_dictionaries({
    "status": st.sampled_from(STATUSES),
    "body": st.sampled_from(sorted(BODIES)),
    "content_type": st.sampled_from(JSON_TYPES + OTHER_TYPES),
    "retry_after": st.sampled_from(RETRY_AFTER),
    "replayed": st.booleans(),
})


def _response(spec: dict[str, Any]) -> httpx.Response:
    headers = {}
    if spec["content_type"]:
        headers["Content-Type"] = spec["content_type"]
    if spec["retry_after"] is not None:
        headers[C.HDR_RETRY_AFTER] = spec["retry_after"]
    if spec["replayed"]:
        headers[C.HDR_REPLAYED] = "true"
    return httpx.Response(spec["status"], content=BODIES[spec["body"]], headers=headers)


def _lms_settings(base_url: str = "http://lms.test/api/v1/public", **kw: Any) -> LmsSettings:
    return LmsSettings(base_url=base_url, api_key="zl_barrage_key_0123", max_attempts=kw.pop("max_attempts", 1),
                       max_retry_seconds=5, **kw)


@settings(max_examples=500, deadline=None)
@given(spec=answers)
@barrage.counted
def test_any_lms_answer_is_classified_and_never_taken_for_success_unless_it_is_a_json_object(spec):
    """Every answer ends as a result or a feesync error (never another exception); a 2xx counts as done
    only when it is a JSON object labelled as JSON; error texts stay short."""
    client = LmsClient(_lms_settings(), transport=httpx.MockTransport(lambda r: _response(spec)),
                       sleep=lambda s: None)
    try:
        try:
            answer = client.send("POST", "/fee-plans/5000/payments", json_body={"amount": 1000}, idem_key="K-1")
        except FeesyncError as exc:
            assert len(str(exc)) <= 1500, f"error text of {len(str(exc))} chars"
            assert "x" * 1000 not in str(exc)
            return
    finally:
        client.close()
    assert 200 <= spec["status"] < 300, f"status {spec['status']} taken for success"
    assert isinstance(answer.body, dict), f"{spec['body']} taken for success"
    assert spec["content_type"] in JSON_TYPES, (
        f"a {spec['status']} {spec['body']} body labelled {spec['content_type']!r} was taken for success")


# --- end to end: hostile answers before and after the LMS applied a write ------------------------------------
_WHEN = st.sampled_from(["before_apply", "after_apply"])
HOSTILE = st.one_of(
    st.fixed_dictionaries({
        "when": _WHEN, "status": st.sampled_from((200, 201, 500, 502, 503, 429)),
        "body": st.sampled_from(["html", "not_json", "payment_truncated", "empty", "json_list", "object_without_ids",
                                 "latin1_bytes", "oversized", "deeply_nested"]),
        "content_type": st.sampled_from(JSON_TYPES + OTHER_TYPES)}),
    # a payment-shaped body is hostile when it is not labelled JSON, or comes with an error status
    # (a well-formed 2xx payment labelled JSON is indistinguishable from success: not generated)
    st.fixed_dictionaries({"when": _WHEN, "status": st.sampled_from((200, 201)), "body": st.just("payment"),
                           "content_type": st.sampled_from(OTHER_TYPES)}),
    st.fixed_dictionaries({"when": _WHEN, "status": st.sampled_from((500, 502, 503, 429)),
                           "body": st.just("payment"), "content_type": st.sampled_from(JSON_TYPES + OTHER_TYPES)}),
)


class HostileProxy:
    """An httpx transport in front of the real LMS sandbox that replaces answers per a script."""

    def __init__(self, sandbox: LmsSandbox) -> None:
        self.upstream = httpx.HTTPTransport()
        self.sandbox = sandbox
        self.script: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.fired: Counter[str] = Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            step = self.script.pop(0) if self.script and request.method == "POST" else None
        if step is not None and step["when"] == "before_apply":
            self.fired["before_apply"] += 1
            return _response({**step, "retry_after": "0", "replayed": False})
        request.read()
        real = self.upstream.handle_request(request)
        real.read()
        if step is not None:
            self.fired["after_apply"] += 1
            return _response({**step, "retry_after": "0", "replayed": False})
        return httpx.Response(real.status_code, headers=real.headers, content=real.content)

    def close(self) -> None:
        self.upstream.close()


@pytest.fixture(scope="module")
def hostile_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("barrage-lms")
    scn = barrage.bottomless_plans(scenario.build(n_students=4, receipts_per_student=1), 10**9)
    lms = LmsSandbox(scn["lms_seed"]).start()
    proxy = HostileProxy(lms)
    settings_ = barrage.csv_settings(tmp, lms, max_attempts=3, max_retry_seconds=5)
    drop = tmp / "drop"
    app = build_app(settings_, lms_transport=proxy, sleep=lambda s: None, pacing=False)
    world = {"lms": lms, "proxy": proxy, "app": app, "drop": drop, "n": 0, "plans": [5000, 5001, 5002, 5003]}
    yield world
    app.close()
    proxy.close()
    lms.stop()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(HOSTILE, min_size=1, max_size=4), batch=st.integers(1, 3))
@barrage.counted
def test_hostile_answers_before_and_after_apply_leave_each_receipt_once_and_the_ledger_true(hostile_world, script,
                                                                                            batch):
    """Hostile answers to payment POSTs (before or after the LMS applied them): the engine never crashes,
    and once the LMS answers normally again every receipt is in the LMS exactly once, with the receipt
    number the ledger recorded."""
    w = hostile_world
    app, lms, proxy = w["app"], w["lms"], w["proxy"]
    ids = []
    rows = []
    for _ in range(batch):
        w["n"] += 1
        doc_id = f"HOSTILE-{w['n']:06d}"
        ids.append(doc_id)
        rows.append([doc_id, "2026-11-02", "Student 0", "1000", "PKR", "Cash", "", f"plan:{w['plans'][w['n'] % 4]}"])
    with open(w["drop"] / f"batch-{w['n']:06d}.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["document_id", "date", "student", "amount", "currency", "method", "reference_number",
                         "invoice"])
        writer.writerows(rows)
    with proxy.lock:
        proxy.script = [dict(s) for s in script]
    statuses = []
    for _ in range(6):
        result = app.engine.run_once("csv", datetime.now(UTC))
        statuses.append(result.status)
        assert result.status in ("ok", "deferred", "conflicts"), (result.status, result.error)
        with proxy.lock:
            done_script = not proxy.script
        if done_script and result.status == "ok":
            break
    assert statuses[-1] == "ok", statuses
    pays = [p for p in lms.payments() if p["notes"] in {f"erp:csv:{i}" for i in ids}]
    by_note = Counter(p["notes"] for p in pays)
    assert sorted(by_note) == sorted(f"erp:csv:{i}" for i in ids), f"lost: {set(ids) - {n[8:] for n in by_note}}"
    assert max(by_note.values()) == 1, f"duplicated: {by_note}"
    with app.store.engine.connect() as c:
        rows_ = c.execute(select(writes.c.doc_id, writes.c.receipt_number, writes.c.status)
                          .where(writes.c.doc_id.in_(ids))).all()
        docs = dict(c.execute(select(documents.c.doc_id, documents.c.status)
                              .where(documents.c.doc_id.in_(ids))).all())
    assert all(s == "pushed" for s in docs.values()) and len(docs) == len(ids), docs
    recorded = {d: r for d, r, s in rows_ if s == "done"}
    truth = {p["notes"][len("erp:csv:"):]: p["receipt_number"] for p in pays}
    assert recorded == truth, f"ledger {recorded} vs LMS {truth}"
    for path in w["drop"].glob("batch-*.csv"):   # processed: archived, as an operator would
        path.unlink()


def test_a_json_payment_labelled_text_plain_is_not_recorded_as_done(hostile_world):
    """The sandbox's `wrong_content_type` garbage (a payment-shaped body labelled text/plain, sent
    before anything is applied) must not become the ledger's outcome: the receipt reaches the LMS."""
    w = hostile_world
    app, lms = w["app"], w["lms"]
    w["n"] += 1
    doc_id = f"HOSTILE-{w['n']:06d}"
    with open(w["drop"] / f"single-{w['n']:06d}.csv", "w", newline="", encoding="utf-8") as fh:
        fh.write("document_id,date,student,amount,currency,method,reference_number,invoice\n")
        fh.write(f"{doc_id},2026-11-02,Student 0,1000,PKR,Cash,,plan:5000\n")
    lms.faults.garbage(count=1, kind="wrong_content_type", method="POST", status=201)
    first = app.engine.run_once("csv", datetime.now(UTC))
    if first.status != "ok":
        app.engine.run_once("csv", datetime.now(UTC))
    pays = [p for p in lms.payments() if p["notes"] == f"erp:csv:{doc_id}"]
    assert len(pays) == 1, "the receipt was recorded as pushed from an answer the LMS never applied"


def test_a_deeply_nested_json_answer_is_a_retryable_failure_not_a_crash():
    """A 200 whose JSON nests 100,000 levels deep (it fits in the size cap) is an unreadable answer."""
    client = LmsClient(_lms_settings(), transport=httpx.MockTransport(
        lambda r: httpx.Response(200, content=NESTED, headers={"Content-Type": "application/json"})),
        sleep=lambda s: None)
    try:
        with pytest.raises(RetryLater):
            client.send("POST", "/fee-plans/5000/payments", json_body={"amount": 1}, idem_key="K-2")
    finally:
        client.close()


def test_a_422_whose_detail_list_has_odd_items_becomes_a_validation_conflict():
    """`{"detail": [{"loc": 5}, 7, null]}` is read as text, not a crash."""
    from sync.errors import ConflictError
    client = LmsClient(_lms_settings(), transport=httpx.MockTransport(
        lambda r: httpx.Response(422, content=BODIES["detail_list_odd"], headers={"Content-Type": "application/json"})),
        sleep=lambda s: None)
    try:
        with pytest.raises(ConflictError) as info:
            client.send("POST", "/fee-plans/5000/payments", json_body={"amount": 1}, idem_key="K-3")
        assert info.value.kind == "validation"
    finally:
        client.close()


def test_an_answer_mangled_after_apply_is_replayed_with_the_same_key_not_sent_twice(hostile_world):
    """The LMS applied the payment but its answer became an HTML 502: the retry replays, one payment."""
    w = hostile_world
    app, lms, proxy = w["app"], w["lms"], w["proxy"]
    w["n"] += 1
    doc_id = f"HOSTILE-{w['n']:06d}"
    with open(w["drop"] / f"single-{w['n']:06d}.csv", "w", newline="", encoding="utf-8") as fh:
        fh.write("document_id,date,student,amount,currency,method,reference_number,invoice\n")
        fh.write(f"{doc_id},2026-11-02,Student 0,1000,PKR,Cash,,plan:5001\n")
    replays = lms.stats()["replays"]
    with proxy.lock:
        proxy.script = [{"when": "after_apply", "status": 502, "body": "html", "content_type": "text/html"}]
    result = app.engine.run_once("csv", datetime.now(UTC))
    assert result.status == "ok" and result.counts["writes_replayed"] == 1
    assert lms.stats()["replays"] == replays + 1
    assert len([p for p in lms.payments() if p["notes"] == f"erp:csv:{doc_id}"]) == 1


def test_each_property_above_ran_at_least_500_examples():
    """`max_examples` is a ceiling: count what really ran."""
    barrage.assert_examples_ran(test_any_lms_answer_is_classified_and_never_taken_for_success_unless_it_is_a_json_object, test_hostile_answers_before_and_after_apply_leave_each_receipt_once_and_the_ledger_true)
