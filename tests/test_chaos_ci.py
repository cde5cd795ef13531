"""The short chaos run in CI: real `feesync once`/`run` children SIGKILLed at random moments while the
LMS sandbox and the ERPNext fake inject every fault type; afterwards each receipt is in the LMS once.

The long run (5,000 receipts, 50 kills) is `tests/benchmarks/chaos_run.py`; both use one harness.
"""

from __future__ import annotations

import pytest

from tests.benchmarks.chaos_run import FAULT_TYPES, format_report, run_chaos


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    report = run_chaos(receipts=240, kills=12, seed=20261203, workdir=tmp_path_factory.mktemp("chaos"),
                       page_size=20)
    print(format_report(report))
    return report


def test_chaos_run_kills_the_daemon_at_least_ten_times_while_receipts_are_still_unsynced(chaos):
    """At least 10 SIGKILLs landed on a live daemon, most of them before the seeded receipts were synced."""
    assert chaos["kills"] >= 10, chaos["kills_by_mode"]
    assert chaos["kills_during_sync"] >= chaos["kills"] // 2, chaos["kills_during_sync"]
    assert set(chaos["kills_by_mode"]) == {"after_apply", "mid_page", "random"}, chaos["kills_by_mode"]


def test_chaos_run_fires_every_fault_type(chaos):
    """Each fault type fired at least once (counted at the servers and hooks, not when armed)."""
    missing = [k for k in FAULT_TYPES if chaos["faults_fired"][k] == 0]
    assert not missing, f"never fired: {missing}"


def test_chaos_run_loses_no_receipt(chaos):
    """Every receipt the ERP holds at the end (seeded and added mid-run) is in the LMS."""
    assert chaos["receipts_lost"] == 0, chaos["lost_ids"]
    assert chaos["receipts_recorded"] == chaos["receipts_expected"] > 240


def test_chaos_run_duplicates_no_receipt(chaos):
    """No receipt is in the LMS twice, and the LMS holds nothing the ERP does not."""
    assert chaos["receipts_duplicated"] == 0
    assert chaos["lms_payments"] == chaos["receipts_expected"]
    assert chaos["amount_ok"]


def test_chaos_run_leaves_a_ledger_that_agrees_with_the_lms(chaos):
    """No write is left undecided, and the ledger's receipt numbers are the LMS's."""
    assert chaos["open_intents"] == 0
    assert chaos["ledger_matches_lms"]
    assert chaos["conflicts_by_kind"] == {}, chaos["conflicts_by_kind"]
    assert chaos["final_passes"][-1]["status"] == "ok", chaos["final_passes"]
