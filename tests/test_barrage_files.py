"""Bad-input barrage, CSV drop folder: generated files with missing or mistyped cells, zero, negative,
huge and fractional amounts, unknown currencies, impossible dates, very long and non-Latin text,
ids repeated with other content, broken headers and files that are not UTF-8, synced by the engine
into the real LMS sandbox (module-scoped servers, one new file per example).

The run never crashes; each valid row is in the LMS exactly once with its amount; each bad row is a
conflict whose message says what is wrong (a malformed row's names its file and row); no request the
LMS received was malformed (the sandbox answers those with a 422 list detail, or 400: none).
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from sync import contract as C
from sync.app import build_app
from sync.config import DEFAULT_PAYMENT_METHODS
from sync.sandbox.lms import LmsSandbox
from sync.state import conflicts, documents
from tests import barrage, scenario

HEADER = ["document_id", "date", "student", "email", "amount", "currency", "method", "reference_number", "invoice"]
PLANS = ("5000", "5001")           # plans of LMS students 100 and 101 (scenario.build)
EMAIL = "student0@example.pk"      # LMS student 100, whose single active plan is 5000
_ids = itertools.count(1)

ids = st.sampled_from(["RCPT-", "رسید-", "收据-", "Quittung-Ä-", "R" * 200 + "-", "R" * 2100 + "-", "rc pt,\"quoted\"-"])
good_amounts = st.one_of(st.integers(1, 10**9).map(str), st.integers(1, 10**6).map(lambda n: f"{n:,}"),
                         st.sampled_from(["1000.00", " 250 ", "1,00,000", "١٠٠٠"]))
bad_amounts = st.one_of(st.sampled_from(["", "abc", "1.2.3", "12 000", "-5", "0", "0.00", "1000.5", "999.99", "1e20",
                                         "NaN", "Infinity", "-0", "PKR 500", "5OO", "1e3", "1,5", "2,50", "1.234,00",
                                         "1,0000", ",100", "100,"]),
                        st.decimals(min_value=-10**6, max_value=10**6, places=2, allow_nan=False).map(str))
good_dates = st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31)).map(date.isoformat)
bad_dates = st.sampled_from(["", "2026-02-30", "2026-13-01", "0000-00-00", "02/11/2026", "2026-11-02T10:00",
                             "yesterday", "٢٠٢٦-١١-٠٢"])
currencies = st.sampled_from(["USD", "XQZ", "PK", "PKRR", "", "₨", "ΠΚΡ", "P K", "123"])
methods = st.sampled_from(["Bitcoin", "", "cash", "نقد", "Cash "])
invoices = st.sampled_from(["plan:abc", "plan:", "plan:99999", "plan:5000/../../students", "plan:-1", "INV-0001",
                            "plan:5000.0", "plan: 5000"])
long_text = st.one_of(st.text(max_size=60), st.just("طالب علم " * 500), st.just("学生" * 3000))


@st.composite
def rows(draw: Any) -> dict[str, str]:
    broken = draw(st.sets(st.sampled_from(["amount", "date", "currency", "method", "invoice", "student", "id"]),
                          max_size=3))
    row = {
        "document_id": f"{draw(ids)}{next(_ids):06d}",
        "date": draw(bad_dates if "date" in broken else good_dates),
        "student": draw(st.sampled_from(["", "Nobody Known", "طالب علم"]) if "student" in broken
                        else st.one_of(st.just("Student 0"), long_text.filter(bool))),
        "email": "",
        "amount": draw(bad_amounts if "amount" in broken else good_amounts),
        "currency": draw(currencies if "currency" in broken else st.sampled_from(["PKR", "pkr", " PKR "])),
        "method": draw(methods if "method" in broken else st.sampled_from(sorted(DEFAULT_PAYMENT_METHODS))),
        "reference_number": draw(long_text),
        "invoice": draw(invoices if "invoice" in broken else st.sampled_from([f"plan:{p}" for p in PLANS] + ["email"])),
    }
    if row["invoice"] == "email":       # no invoice: the student is found by e-mail, then their one plan
        row["invoice"], row["email"] = "", EMAIL
    if "id" in broken:
        row["document_id"] = ""
    return row


# --- the oracle, from README "CSV format" and "Mapping a receipt to a plan" --------------------------------------
def _amount(text: str) -> Decimal | None:
    """The oracle: a comma only between digit groups (thousands, or lakh: 1,00,000), no exponent."""
    t = text.strip()
    body = t.lstrip("+-").split(".", 1)[0]
    groups = body.split(",")
    if "," in body and not (all(len(g) == 3 for g in groups[1:]) and 1 <= len(groups[0]) <= 3
                            or len(groups[-1]) == 3 and all(len(g) == 2 for g in groups[1:-1])
                            and 1 <= len(groups[0]) <= 2):
        return None
    if "e" in t.lower() or "," in t.partition(".")[2]:
        return None
    try:
        d = Decimal(t.replace(",", ""))
    except InvalidOperation:
        return None
    return d if d.is_finite() and abs(d) < Decimal("1e15") else None


def expect(row: dict[str, str], known: set[str]) -> tuple[str, list[str], int | None]:
    """(pushed | conflict, words one of which the conflict names, amount). `known`: customers already
    matched to an LMS student by e-mail (the daemon remembers them)."""
    r = {k: (v or "").strip() for k, v in row.items()}
    words = [c for c in ("document_id", "date", "student", "amount", "currency") if not r[c]]
    if len(r["document_id"]) > 255:
        words.append("document_id")       # it becomes the payment's notes and key; 255 characters at most
    if words:
        return "conflict", words, None
    try:
        date.fromisoformat(r["date"])
    except ValueError:
        words.append("date")
    amount = _amount(r["amount"])
    if amount is None:
        words.append("amount")
    cur = r["currency"].upper()
    if len(cur) != 3 or not cur.isalpha():
        words.append("currency")
    if words:
        return "conflict", words, None
    inv = r["invoice"]
    if inv.startswith("plan:"):
        pid = inv[5:]
        if not re.match(C.LMS_ID_PATTERN, pid):
            words.append("plan")                          # `plan:` needs an LMS plan id
        elif pid not in PLANS:
            words += ["plan", "not found", pid[:20]]     # not an existing LMS plan
    if r["method"] not in DEFAULT_PAYMENT_METHODS:
        words.append("mode of payment")
    if amount != amount.to_integral_value():
        words.append("fraction")
    elif amount < 1:
        words.append("below 1")
    if cur != "PKR":
        words.append(cur)
    if not inv.startswith("plan:"):
        email = r["email"] or (r["student"] if "@" in r["student"] else "")
        if email != EMAIL and r["student"] not in known:
            words.append("e-mail")
    return ("conflict", words, None) if words else ("pushed", [], int(amount))


def _csv(rows_: list[dict[str, str]], header: list[str] = HEADER) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=header, extrasaction="ignore")   # \r\n, and quotes around \r or \n
    w.writeheader()
    w.writerows(rows_)
    return out.getvalue()


@pytest.fixture(scope="module")
def csv_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("barrage-files")
    scn = barrage.bottomless_plans(scenario.build(n_students=2, receipts_per_student=1), 10**16)
    lms = LmsSandbox(scn["lms_seed"]).start()
    rejected = barrage.watch_malformed(lms)
    settings_ = barrage.csv_settings(tmp, lms, max_attempts=2, max_retry_seconds=2)
    drop = tmp / "drop"
    app = build_app(settings_, sleep=lambda s: None, pacing=False)
    yield {"app": app, "lms": lms, "drop": drop, "rejected": rejected, "n": 0, "pushed": [], "known": set()}
    app.close()
    lms.stop()


def _outcome(app: Any, doc_id: str) -> tuple[str | None, list[str]]:
    with app.store.engine.connect() as c:
        row = c.execute(select(documents.c.status).where(documents.c.source == "csv",
                                                         documents.c.doc_id == doc_id)).first()
        open_ = c.execute(select(conflicts.c.kind, conflicts.c.detail).where(
            conflicts.c.source == "csv", conflicts.c.doc_id == doc_id, conflicts.c.status == "open")).all()
    details = [f"{k}: {d}" for k, d in open_]
    status = None if row is None else ("conflict" if row.status == "conflict" or details else row.status)
    return status, details


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(rows(), min_size=1, max_size=8),
       file_fault=st.sampled_from(["none"] * 8 + ["not_utf8", "header_lacks_amount", "extra_columns"]),
       repeat=st.sampled_from(["none", "none", "same", "money"]))
@barrage.counted
def test_generated_csv_rows_become_payments_or_named_conflicts(csv_world, batch, file_fault, repeat):
    """Each valid row once in the LMS with its amount, each bad row a conflict saying what is wrong."""
    w = csv_world
    app, lms = w["app"], w["lms"]
    w["n"] += 1
    fname = f"drop-{w['n']:05d}.csv"
    repeated = None
    if repeat != "none" and w["pushed"]:
        repeated = dict(w["pushed"].pop() if repeat == "money" else w["pushed"][-1])
        if repeat == "money":
            repeated["amount"] = str(int(_amount(repeated["amount"])) + 3)
        batch = [*batch, repeated]
    # a `batch` column keeps every file's content new (a file is processed once per content hash)
    header = HEADER + ["batch"] + (["note", "extra"] if file_fault == "extra_columns" else [])
    if file_fault == "header_lacks_amount":
        header = [h for h in header if h != "amount"]
    text = _csv([{**r, "batch": str(w["n"]), "note": "x", "extra": "ü"} for r in batch], header)
    data = text.encode("utf-8") if file_fault != "not_utf8" else text.encode("utf-8") + b"\xff\xfe broken \xc3\x28\n"
    (w["drop"] / fname).write_bytes(data)

    result = app.engine.run_once("csv", datetime.now(UTC))
    (w["drop"] / fname).unlink()   # processed: archived, as an operator would (the ledger remembers it)
    assert result.status in ("ok", "conflicts"), (result.status, result.error)
    pays = lms.payments()
    count = Counter(p["notes"] for p in pays)
    amounts: dict[str, list[int]] = {}
    for p in pays:
        amounts.setdefault(p["notes"], []).append(p["amount"])

    if file_fault in ("not_utf8", "header_lacks_amount"):
        status, details = _outcome(app, fname)
        assert status == "conflict", (fname, status)
        assert fname in " ".join(details), details
        assert ("utf-8" if file_fault == "not_utf8" else "amount") in " ".join(details).lower(), details
        for r in batch:
            if r is not repeated:
                assert count[f"erp:csv:{r['document_id']}"] == 0
        return
    seen_ids: set[str] = set()
    for line_no, r in enumerate(batch, start=2):
        doc_id = r["document_id"].strip() or f"{fname}:{line_no}"
        note = f"erp:csv:{doc_id}"
        if r is repeated:
            status, details = _outcome(app, doc_id)
            assert count[note] == 1, (doc_id, count[note])
            if repeat == "money":
                assert status == "conflict" and any("changed_after_sync" in d for d in details), details
            else:
                assert status == "pushed" and not details, (status, details)
            continue
        if doc_id in seen_ids:
            continue
        seen_ids.add(doc_id)
        want, words, amount = expect(r, w["known"])
        status, details = _outcome(app, doc_id)
        event(f"outcome: {status}" + (f" ({details[0].split(':', 1)[0]})" if details else ""))
        assert status == want, f"row {line_no} {r}: {status} {details}, expected {want} {words}"
        if want == "pushed":
            assert count[note] == 1 and amounts[note] == [amount], (doc_id, count[note], amounts.get(note), amount)
            w["pushed"].append(r)
            if r["email"] == EMAIL:
                w["known"].add(r["student"].strip())
        else:
            assert count[note] == 0, f"{doc_id} in conflict yet reached the LMS"
            text_ = " ".join(details).lower()
            assert any(x.lower() in text_ for x in words), f"row {line_no}: {details} names none of {words}"
            if any(d.startswith("malformed_document") for d in details):
                assert fname in " ".join(details) and f"row {line_no}" in " ".join(details), details
    assert w["rejected"] == [], w["rejected"][:3]


def test_a_csv_saved_with_old_mac_line_ends_is_read_not_a_failed_run(csv_world):
    """Excel's "CSV (Macintosh)" ends lines with a bare \\r: its rows are pushed, the source goes on."""
    w = csv_world
    app, lms = w["app"], w["lms"]
    w["n"] += 1
    ids_ = [f"MAC-{w['n']:05d}-{i}" for i in (1, 2)]
    lines = ["document_id,date,student,amount,currency,method,reference_number,invoice"]
    lines += [f"{i},2026-11-02,Student 0,1200,PKR,Cash,,plan:5001" for i in ids_]
    (w["drop"] / f"mac-{w['n']:05d}.csv").write_bytes("\r".join(lines).encode() + b"\r")
    result = app.engine.run_once("csv", datetime.now(UTC))
    assert result.status == "ok", result.error
    assert sorted(p["notes"] for p in lms.payments() if p["notes"].startswith("erp:csv:MAC-")
                  and p["notes"][8:] in ids_) == sorted(f"erp:csv:{i}" for i in ids_)


def test_a_file_the_csv_reader_refuses_is_one_named_conflict_and_the_source_goes_on(csv_world):
    """A 200,000-character cell is past the csv module's field limit (131,072): one conflict naming the
    file, and the rows of the next file are still pushed."""
    w = csv_world
    app, lms = w["app"], w["lms"]
    w["n"] += 1
    bad = f"bad-{w['n']:05d}.csv"
    (w["drop"] / bad).write_bytes(b'document_id,date,student,amount,currency,method,reference_number,invoice\r\n'
                                  b'X-1,2026-11-02,Student 0,1000,PKR,Cash,' + b"9" * 200_000 + b',plan:5000\r\n')
    good_id = f"AFTER-{w['n']:05d}"
    (w["drop"] / f"good-{w['n']:05d}.csv").write_text(
        "document_id,date,student,amount,currency,method,reference_number,invoice\n"
        f"{good_id},2026-11-02,Student 0,1000,PKR,Cash,,plan:5000\n", encoding="utf-8")
    result = app.engine.run_once("csv", datetime.now(UTC))
    assert result.status in ("ok", "conflicts"), result.error
    status, details = _outcome(app, bad)
    assert status == "conflict" and bad in " ".join(details), (status, details)
    assert [p["notes"] for p in lms.payments() if p["notes"] == f"erp:csv:{good_id}"] == [f"erp:csv:{good_id}"]


def test_each_property_above_ran_at_least_500_examples():
    """`max_examples` is a ceiling: count what really ran."""
    barrage.assert_examples_ran(test_generated_csv_rows_become_payments_or_named_conflicts)
