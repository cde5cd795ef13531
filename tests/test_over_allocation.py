"""A receipt whose references allocate more than it received never puts more money in the LMS.

Odoo's reconciliation widget and Zoho's `amount_applied` are per invoice (Odoo's in the invoice's
currency), so their sum can exceed the payment; both connectors clamp the unallocated rest at zero.
It used to write 800 + 800 for a 1,000 receipt, with no conflict.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sync.testing import harnesses as H
from sync.testing.conformance import Kit


class _Odoo(H.OdooHarness):
    def mapping(self):
        return {"invoices": {"INV/1": "9701", "INV/2": "9702"}}


class _Zoho(H.ZohoHarness):
    def mapping(self):
        return {"invoices": {"INV-1": "9701", "INV-2": "9702"}}


def _odoo_payment(fake):
    at = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    i1, i2 = fake.add_invoice("INV/1", 101, 5000), fake.add_invoice("INV/2", 101, 5000)
    fake.add_payment(101, 1000.0, journal="Cash", currency="PKR", write_date=at,
                     invoices={str(i1): 800.0, str(i2): 800.0})


def _zoho_payment(fake):
    at = datetime.now(UTC) - timedelta(hours=1)
    fake.add_payment("Student 1", 1000.0, email="student1@conformance.test", currency_code="PKR",
                     created_time=at, updated_time=at,
                     invoices=[{"invoice_number": "INV-1", "amount_applied": 800.0},
                               {"invoice_number": "INV-2", "amount_applied": 800.0}])


@pytest.mark.parametrize("harness, add", [(_Odoo, _odoo_payment), (_Zoho, _zoho_payment)], ids=["odoo", "zoho"])
def test_references_allocating_more_than_the_receipt_are_a_conflict_and_nothing_is_written(tmp_path: Path,
                                                                                           harness, add):
    kit = Kit(harness(), tmp_path)
    try:
        add(kit.h.fake)
        result = kit.run()
        assert kit.payments() == []
        assert [kind for _, kind in kit.open_conflicts()] == ["over_allocated"], kit.open_conflicts()
        assert result.conflicts == {"over_allocated": 1}
    finally:
        kit.close()
