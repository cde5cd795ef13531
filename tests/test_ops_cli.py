"""The conflict commands people use, run through the real CLI against the sandboxes and a real state file."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from sync import ops
from sync.cli import cli
from sync.state import conflict_history, conflicts, mappings, writes
from tests.scenario import KHI
from tests.test_ops_scenario import (
    GHOST,
    GHOST_LMS_ID,
    NATIVE_INVOICE,
    PHANTOM,
    PLANTED,
    native_invoice_and_receipt,
    synced,
)


@pytest.fixture
def env(sandboxes, tmp_path, monkeypatch):
    s = synced(sandboxes, tmp_path, monkeypatch)
    yield s
    s.app.close()


def feesync(s, *args, input=None):
    result = CliRunner().invoke(cli, ["--config", str(s.config), *args], input=input, env=s.env,
                                catch_exceptions=False)
    return result


def listed(s, *args):
    r = feesync(s, "conflicts", "list", "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def ids_of(s, **where):
    return sorted(r["id"] for r in ops.list_conflicts(s.app.store, status="all")
                  if all(r[k] == v for k, v in where.items()))


def test_list_json_and_the_csv_export_carry_every_conflict_with_its_amount(env):
    """`conflicts list --json` and `export --format csv|json` name every planted conflict with its amount."""
    planted = {(d, k, Decimal(a)) for k, docs in PLANTED.items() for d, a in docs}
    data = listed(env)
    assert {(c["doc_id"], c["kind"], Decimal(c["amount"])) for c in data["conflicts"]} == planted
    assert data["total"] == len(planted) == 10
    assert len(data["by_kind"]) == 8 and data["by_kind"]["unknown_student"] == 3
    assert data["money_at_stake"] == {"PKR": "61700.5", "USD": "150"}
    assert data["amount_by_kind"]["overpayment"] == {"PKR": "50000"}
    assert all(c["next_step"] for c in data["conflicts"])

    out = feesync(env, "conflicts", "export", "--format", "csv")
    assert out.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert {(r["doc_id"], r["kind"], Decimal(r["amount"])) for r in rows} == planted
    assert {r["currency"] for r in rows} == {"PKR", "USD"}

    path = env.tmp / "export.json"
    out = feesync(env, "conflicts", "export", "--format", "json", "--out", str(path))
    exported = json.loads(path.read_text())
    assert out.exit_code == 0 and exported["total"] == 10 and exported["money_at_stake"] == data["money_at_stake"]


def test_map_an_unknown_student_retries_and_resolves_exactly_that_students_conflicts(env):
    """Mapping the ghost customer to LMS student 300 pushes and resolves its two receipts and nothing else."""
    ghost = ids_of(env, customer=GHOST, status="open")
    others = [i for i in ids_of(env, status="open") if i not in ghost]
    assert len(ghost) == 2
    r = feesync(env, "conflicts", "map", "--customer", GHOST, "--student", str(GHOST_LMS_ID), "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert sorted(result["unblocked"]) == ghost
    assert result["resolved"] == 2 and {o["outcome"] for o in result["retried"]} == {"pushed"}
    with env.app.store.engine.connect() as c:
        status = dict(c.execute(select(conflicts.c.id, conflicts.c.status)).all())
        mapping = c.execute(select(mappings.c.lms_id, mappings.c.origin).where(
            mappings.c.kind == "customer_student", mappings.c.erp_id == GHOST)).one()
    assert all(status[i] == "resolved" for i in ghost)
    assert all(status[i] == "open" for i in others)          # Phantom's and every other conflict untouched
    assert tuple(mapping) == (str(GHOST_LMS_ID), "manual")
    ghost_pay = sorted((p["fee_plan_id"], p["amount"]) for p in env.lms.payments()
                       if p["notes"] in ("erp:erp:ACC-PAY-2026-00101", "erp:erp:ACC-PAY-2026-00102"))
    assert ghost_pay == [(7000, 1500), (7000, 2500)]
    assert listed(env, "--student", PHANTOM)["total"] == 1


def test_map_an_invoice_to_a_plan_pushes_the_receipts_waiting_for_that_invoice(env):
    """An ERP-native invoice without an LMS batch cannot become a plan; mapping it to plan 7001 pushes its
    receipt and closes the invoice's own conflict (no plan is created for it), touching nothing else."""
    from datetime import datetime
    native, pe = native_invoice_and_receipt(env.scn["erp_data"]["documents"], datetime.now(KHI))
    env.erp.insert("Sales Invoice", native)
    env.erp.insert("Payment Entry", pe)
    env.app.engine.run_once("erp")
    before = {r["id"]: r for r in ops.list_conflicts(env.app.store)}
    waiting = [r["id"] for r in before.values() if r["doc_id"] == pe["name"]]
    own = [r["id"] for r in before.values() if r["doc_id"] == NATIVE_INVOICE]
    assert len(waiting) == 1 and len(own) == 1
    shown = json.loads(feesync(env, "conflicts", "show", str(waiting[0]), "--json").stdout)
    # the commands carry the operator's --config, so they can be pasted as printed
    assert (f'feesync --config {env.config} conflicts map --source erp --invoice "{NATIVE_INVOICE}" --plan LMS_PLAN_ID'
            in shown["commands"])

    plans_before = len(env.lms.plans())
    r = feesync(env, "conflicts", "map", "--invoice", NATIVE_INVOICE, "--plan", "7001", "--json")
    result = json.loads(r.stdout)
    assert r.exit_code == 0 and result["unblocked"] == waiting and result["resolved"] == 1
    assert result["closed"] == own
    assert [(p["fee_plan_id"], p["amount"]) for p in env.lms.payments() if p["notes"] == f"erp:erp:{pe['name']}"] == [
        (7001, 900)]
    assert len(env.lms.plans()) == plans_before                          # no plan created for the invoice
    after = {r["id"] for r in ops.list_conflicts(env.app.store)}
    assert after == set(before) - set(waiting) - set(own)
    note = ops.show_conflict(env.app.store, own[0])["note"]
    assert note == "mapped by hand to LMS plan 7001: no plan is created for this invoice"


def test_map_refuses_an_lms_student_that_does_not_exist(env):
    """A mapping to a student id the LMS does not know is refused and nothing is stored."""
    r = feesync(env, "conflicts", "map", "--customer", PHANTOM, "--student", "999999")
    assert r.exit_code == 1 and "no student 999999" in r.stderr
    with env.app.store.engine.connect() as c:
        assert c.execute(select(mappings).where(mappings.c.erp_id == PHANTOM)).first() is None


def test_list_filters_by_kind_source_student_and_age_and_sorts_by_amount_or_age(env):
    """Each filter narrows the list as documented; --sort amount puts the largest first."""
    assert listed(env, "--kind", "unknown_student")["total"] == 3
    assert listed(env, "--kind", "unknown_student", "--kind", "overpayment")["total"] == 4
    assert listed(env, "--student", "ghost")["total"] == 2
    assert listed(env, "--source", "erp")["total"] == 10 and listed(env, "--source", "other")["total"] == 0
    assert listed(env, "--older-than", "1d")["total"] == 0 and listed(env, "--newer-than", "1d")["total"] == 10
    by_amount = listed(env, "--sort", "amount")["conflicts"]
    assert [c["doc_id"] for c in by_amount[:2]] == ["ACC-PAY-2026-00109", "ACC-PAY-2026-00104"]
    by_age = listed(env, "--sort", "age")["conflicts"]
    assert [c["id"] for c in by_age] == sorted(c["id"] for c in by_age)
    assert listed(env, "--limit", "3")["total"] == 10
    bad = feesync(env, "conflicts", "list", "--older-than", "soon")
    assert bad.exit_code == 2 and "not a duration" in bad.output


def test_a_kind_feesync_never_opens_is_named_on_stderr(env):
    r = feesync(env, "conflicts", "list", "--kind", "unknown_studnet", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["total"] == 0
    assert "'unknown_studnet' is not a conflict kind feesync opens" in r.stderr and "unknown_student" in r.stderr
    assert "not a conflict kind" not in feesync(env, "conflicts", "list", "--kind", "unknown_student").stderr


def test_list_without_json_fits_an_80_column_terminal(env):
    """The table and its totals line never exceed the terminal's width."""
    r = feesync(env, "conflicts", "list")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "10 conflict(s); money at stake: 61,700.5 PKR, 150 USD" in r.stdout


def test_resolve_and_ignore_need_a_note_keep_the_history_and_change_only_open_ones(env):
    """open -> resolved / ignored with a note and an actor; a closed conflict is left alone (exit 1)."""
    cid = ids_of(env, kind="currency_mismatch")[0]
    other = ids_of(env, kind="fractional_amount")[0]
    r = feesync(env, "conflicts", "resolve", str(cid), "--note", "recorded by hand in the LMS", "--by", "amna")
    assert r.exit_code == 0 and "1 conflict(s) marked resolved" in r.stdout
    again = feesync(env, "conflicts", "ignore", str(cid), "--note", "x")
    assert again.exit_code == 1 and "already resolved" in again.stdout
    assert feesync(env, "conflicts", "ignore", str(other), "--note", " ").exit_code == 2   # a blank note
    assert feesync(env, "conflicts", "ignore", str(other), "--note", "ERP will be corrected").exit_code == 0
    shown = json.loads(feesync(env, "conflicts", "show", str(cid), "--json").stdout)
    assert shown["status"] == "resolved" and shown["resolved_by"] == "amna"
    assert [(h["action"], h["actor"], h["note"]) for h in shown["history"]] == [
        ("opened", "feesync", shown["detail"]), ("resolved", "amna", "recorded by hand in the LMS")]
    assert listed(env, "--status", "ignored")["conflicts"][0]["id"] == other


def test_show_gives_the_document_what_was_sent_what_the_lms_said_and_the_next_step(env):
    """The overpayment conflict shows the request body, the LMS's remaining_balance and what to do."""
    cid = ids_of(env, kind="overpayment")[0]
    data = json.loads(feesync(env, "conflicts", "show", str(cid), "--json").stdout)
    assert data["document"]["doc_id"] == "ACC-PAY-2026-00109" and data["document"]["customer"] == "Student 5"
    assert data["writes"][0]["body"]["amount"] == 50000 and data["writes"][0]["path"] == "/fee-plans/7003/payments"
    assert data["response"]["remaining_balance"] == 10000
    assert "balance is smaller than the receipt" in data["next_step"]
    assert f"feesync --config {env.config} conflicts retry {cid}" in data["commands"]
    text = feesync(env, "conflicts", "show", str(cid)).stdout
    for part in ("What to do next", "POST /fee-plans/7003/payments", "remaining_balance", "50,000 PKR"):
        assert part in text
    ghost = ids_of(env, customer=GHOST)[0]
    shown = json.loads(feesync(env, "conflicts", "show", str(ghost), "--json").stdout)
    assert (f'feesync --config {env.config} conflicts map --source erp --customer "{GHOST}" --student LMS_STUDENT_ID'
            in shown["commands"])
    assert "retries it by itself every 1h (attempt 0 of 3" in shown["next_step"]
    assert feesync(env, "conflicts", "show", "9999").exit_code == 2
    # "correct it in the ERP or record it by hand": both ways have their command
    cur = ids_of(env, kind="currency_mismatch")[0]
    cmds = json.loads(feesync(env, "conflicts", "show", str(cur), "--json").stdout)["commands"]
    assert f"feesync --config {env.config} conflicts retry {cur}" in cmds
    assert f'feesync --config {env.config} conflicts resolve {cur} --note "recorded by hand in the LMS"' in cmds


def test_bulk_retry_asks_with_the_count_and_the_yes_flag_skips_the_question(env):
    """Retry by filter shows how many and how much first; 'n' retries nothing, --yes retries them all."""
    r = feesync(env, "conflicts", "retry", "--kind", "unknown_student", input="n\n")
    assert r.exit_code == 1 and "Retry 3 conflict(s), 4,700 PKR?" in r.stderr
    with env.app.store.engine.connect() as c:
        assert not c.execute(select(conflict_history).where(conflict_history.c.action == "retried")).first()
    r = feesync(env, "conflicts", "retry", "--kind", "unknown_student", "--yes", "--json")
    out = json.loads(r.stdout)
    assert r.exit_code == 1 and len(out["retried"]) == 3 and out["resolved"] == 0   # still unknown: stays open
    assert {o["kind"] for o in out["retried"]} == {"unknown_student"}
    assert all(c["attempts"] == 2 for c in listed(env, "--kind", "unknown_student")["conflicts"])
    assert feesync(env, "conflicts", "retry").exit_code == 2                       # neither ids nor filters


def test_retry_after_a_definitive_refusal_uses_the_next_key_revision(env):
    """The overpayment (a definitive 422) is re-sent as <doc>~2 once a person retries it."""
    cid = ids_of(env, kind="overpayment")[0]
    r = feesync(env, "conflicts", "retry", str(cid), "--json")
    assert json.loads(r.stdout)["retried"][0]["status"] == "open"
    with env.app.store.engine.connect() as c:
        keys = c.execute(select(writes.c.idem_key, writes.c.status).where(
            writes.c.doc_id == "ACC-PAY-2026-00109").order_by(writes.c.id)).all()
    assert [tuple(k) for k in keys] == [("ACC-PAY-2026-00109", "superseded"), ("ACC-PAY-2026-00109~2", "conflict")]


def test_a_receipt_the_lms_already_holds_is_never_retried(env):
    """A receipt cancelled in the ERP after its push (reversed_in_erp) waits for a person: retry refuses it."""
    env.erp.cancel("Payment Entry", "ACC-PAY-2026-00001")
    env.app.engine.run_once("erp")
    cid = ids_of(env, kind="reversed_in_erp")[0]
    before = len(env.lms.payments())
    r = feesync(env, "conflicts", "retry", str(cid), "--json")
    out = json.loads(r.stdout)["retried"][0]
    assert out["outcome"].startswith("not retried: the LMS already holds this receipt") and out["status"] == "open"
    assert len(env.lms.payments()) == before
    assert f"feesync --config {env.config} conflicts resolve" in json.loads(
        feesync(env, "conflicts", "show", str(cid), "--json").stdout)["commands"][0]


def test_self_healing_kinds_are_retried_until_they_heal_and_stop_at_the_cap(env):
    """heal() resolves Phantom once the LMS knows the student, retries Noplan 3 times, never the others."""
    env.lms.add_student("inst-test", id=310, name="Phantom Payer", email="phantom@erp.example.pk")
    env.lms.add_plan("inst-test", {"id": 7010, "student_id": 310, "batch_id": 1, "plan_type": "one_time",
                                   "total_amount": 5000, "currency": "PKR"})
    first = ops.heal(env.app)
    assert {r["kind"] for r in first} == {"unknown_student", "no_active_plan"}       # self-healing kinds only
    by_doc = {r["doc_id"]: r for r in first}
    assert by_doc["ACC-PAY-2026-00103"]["status"] == "resolved"                      # Phantom healed
    assert by_doc["ACC-PAY-2026-00104"]["status"] == "open"                          # Noplan still has no plan
    for _ in range(3):
        ops.heal(env.app)
    noplan = ids_of(env, kind="no_active_plan")[0]
    shown = ops.show_conflict(env.app.store, noplan, settings=env.app.settings)
    assert shown["auto_retries"] == 3 and "stopped after 3 attempts" in shown["next_step"]
    assert all(r["doc_id"] != "ACC-PAY-2026-00104" for r in ops.heal(env.app))      # the cap holds
    assert ids_of(env, kind="overpayment", status="open")                            # a person's kind: untouched
    resolved = ids_of(env, doc_id="ACC-PAY-2026-00103")[0]
    assert [h["actor"] for h in ops.show_conflict(env.app.store, resolved)["history"]][-2:] == [
        "feesync:heal", "feesync"]


def test_status_json_shows_cursor_lag_and_last_runs(env):
    """`status --json` carries each source's cursor, its lag and the last runs."""
    data = json.loads(feesync(env, "status", "--json").stdout)
    erp = data["sources"][0]
    assert erp["source"] == "erp" and erp["cursor"]["doc_id"] == "ACC-PAY-2026-00110"
    assert erp["lag_seconds"] > 0 and erp["last_run"]["status"] == "conflicts" and erp["last_success"]
    assert erp["open_conflicts"] == 10


def test_retry_of_a_missing_closed_or_absurd_id_is_a_clear_answer_not_a_traceback(env):
    missing = feesync(env, "conflicts", "retry", "9999")
    assert missing.exit_code == 1 and "conflict 9999: no such conflict" in missing.stdout
    cid = ids_of(env, kind="currency_mismatch")[0]
    assert feesync(env, "conflicts", "resolve", str(cid), "--note", "by hand").exit_code == 0
    again = feesync(env, "conflicts", "retry", str(cid))
    assert again.exit_code == 1 and "not retried: already resolved" in again.stdout
    assert "-> resolved" not in again.stdout and "0 of 1 resolved" in again.stdout
    for cmd in (["show"], ["retry"], ["resolve", "--note", "x"]):
        huge = feesync(env, "conflicts", cmd[0], "99999999999999999999999", *cmd[1:])
        assert huge.exit_code == 2 and "is not in the range" in huge.output, huge.output


def test_a_retry_that_meets_another_problem_says_which_conflict_replaces_it_and_counts_no_resolution(env):
    """Mapping the ghost to a student without a plan: each retry opens no_active_plan. It said
    'conflict -> resolved' and '2 of 2 resolved' although nothing reached the LMS."""
    from tests.test_ops_scenario import NOPLAN_ID
    ghost = ids_of(env, customer=GHOST, status="open")
    before = len(env.lms.payments())
    r = feesync(env, "conflicts", "map", "--customer", GHOST, "--student", str(NOPLAN_ID), "--json")
    result = json.loads(r.stdout)
    assert r.exit_code == 1 and result["resolved"] == 0 and len(env.lms.payments()) == before
    new = {c["doc_id"]: c["id"] for c in ops.list_conflicts(env.app.store, kind="no_active_plan")
           if c["customer"] == GHOST}
    assert len(new) == 2
    assert sorted((o["status"], o["outcome"]) for o in result["retried"]) == sorted(
        ("superseded", f"replaced by conflict #{new[o['doc_id']]} (no_active_plan)") for o in result["retried"])
    assert sorted(o["id"] for o in result["retried"]) == ghost
    text = feesync(env, "conflicts", "retry", str(new[min(new)]), "--yes").output
    assert "0 of 1 resolved" in text, text
