"""`feesync demo` as the README's first command runs it: a child process, a summary, a report file,
and a second run on the same state that pushes nothing."""

from __future__ import annotations

import csv
import json
import sqlite3
from decimal import Decimal

from sync.demo_data import answer_key, build_demo
from tests import proc


def test_demo_pushes_and_opens_conflicts_then_a_second_run_pushes_nothing(tmp_path):
    """First run: pushed > 0 and conflicts > 0, with the report file; second run on the same state: 0 pushed."""
    key = answer_key(build_demo().lms_seed, build_demo().erp_data)
    first = proc.run("demo", "--dir", str(tmp_path), "--json", secrets=False, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    s1 = json.loads(first.stdout)
    assert s1["pushed"] == key["receipts_pushable"] + len(key["needs_plan"]) > 0
    assert s1["open_conflicts"] > 0 and sum(s1["conflicts"].values()) > 0
    assert s1["lms_requests"] > s1["pushed"]
    with open(s1["report"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == s1["open_conflicts"]
    assert {r["kind"] for r in rows} == set(s1["conflicts"])

    # the money at stake counts money received (receipts); invoice totals and credit notes in conflict
    # stand beside it (the demo has unknown-student invoices whose receipts also wait: no double count)
    listed = json.loads(proc.run("--config", s1["config"], "conflicts", "list", "--json", secrets=False).stdout)
    with sqlite3.connect(s1["state"]) as db:
        by_doc_kind = dict(db.execute(
            "SELECT d.event_kind, group_concat(c.amount, ' ') FROM conflicts c JOIN documents d ON "
            "d.source = c.source AND d.doc_id = c.doc_id WHERE c.status = 'open' GROUP BY d.event_kind"))
    received = sum(Decimal(a) for a in by_doc_kind.pop("PaymentReceived").split())
    assert sum(Decimal(v) for v in listed["money_at_stake"].values()) == received   # PKR and USD receipts
    assert Decimal(listed["invoiced_in_conflict"]["PKR"]) == sum(Decimal(a) for a in by_doc_kind["PlanIssued"].split())
    assert Decimal(listed["credited_in_conflict"]["PKR"]) == sum(
        Decimal(a) for a in by_doc_kind["CreditNoteIssued"].split())
    assert Decimal(listed["invoiced_in_conflict"]["PKR"]) > 0

    second = proc.run("demo", "--dir", str(tmp_path), "--json", secrets=False, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    s2 = json.loads(second.stdout)
    assert s2["pushed"] == 0
    assert s2["lms_writes"] == 0
    assert s2["open_conflicts"] == s1["open_conflicts"]


def test_demo_prints_a_summary_that_fits_a_terminal(tmp_path):
    """Without --json the summary is a table of at most 100 columns naming pushed, conflicts and requests."""
    out = proc.run("demo", "--dir", str(tmp_path), secrets=False, timeout=300, extra_env={"COLUMNS": "100"})
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "pushed" in text and "LMS requests sent" in text and "conflicts.csv" in text
    assert max(len(line) for line in text.splitlines()) <= 100
