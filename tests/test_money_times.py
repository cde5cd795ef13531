"""Money is Decimal then whole units; ERP naive local times become aware UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from sync.errors import ConflictError
from sync.money import to_decimal, to_lms_amount
from sync.times import format_naive_local, local_midnight, parse_naive_local, zone

KHI = zone("Asia/Karachi")


@pytest.mark.parametrize(("raw", "expected"), [
    (18000.0, Decimal("18000.0")), (0.1, Decimal("0.1")), ("1,234.50", Decimal("1234.50")), (7, Decimal(7)),
])
def test_amounts_parse_to_exact_decimals(raw, expected):
    """JSON floats, ints and formatted strings become the exact Decimal (no float noise)."""
    assert to_decimal(raw) == expected


@pytest.mark.parametrize("raw", [None, True, "abc", float("nan"), float("inf"), [], 1e16])
def test_bad_amounts_are_conflicts(raw):
    """Missing, non-numeric, non-finite or absurd amounts are a malformed_document conflict."""
    with pytest.raises(ConflictError) as err:
        to_decimal(raw)
    assert err.value.kind == "malformed_document"


def test_fraction_is_a_conflict_not_a_rounding():
    """1500.5 cannot be held by the LMS: a fractional_amount conflict; 1500.0 becomes 1500."""
    assert to_lms_amount(Decimal("1500.0")) == 1500
    with pytest.raises(ConflictError) as err:
        to_lms_amount(Decimal("1500.5"))
    assert err.value.kind == "fractional_amount"
    with pytest.raises(ConflictError) as err:
        to_lms_amount(Decimal("0"))
    assert err.value.kind == "invalid_amount"


def test_frappe_modified_with_and_without_fraction():
    """`2026-12-03 23:28:40.308844` and `... 23:28:40` are Karachi local, 5 h ahead of UTC."""
    assert parse_naive_local("2026-12-03 23:28:40.308844", KHI) == datetime(2026, 12, 3, 18, 28, 40, 308844, tzinfo=UTC)
    assert parse_naive_local("2026-12-03 23:28:40", KHI) == datetime(2026, 12, 3, 18, 28, 40, tzinfo=UTC)
    moment = datetime(2026, 12, 3, 18, 28, 40, 5, tzinfo=UTC)
    assert format_naive_local(moment, KHI) == "2026-12-03 23:28:40.000005"
    assert parse_naive_local(format_naive_local(moment, KHI), KHI) == moment


def test_posting_date_is_local_midnight_with_offset():
    """A posting date becomes the institute's local midnight with its UTC offset (rule 21)."""
    assert local_midnight(date(2026, 12, 3), KHI).isoformat() == "2026-12-03T00:00:00+05:00"


@pytest.mark.parametrize("text,value", [("1000", "1000"), ("1,000.50", "1000.50"), ("1,00,000", "100000"),
                                        (" -25.5 ", "-25.5"), ("12,345,678", "12345678")])
def test_text_amounts_with_digit_groups_are_read_exactly(text, value):
    assert to_decimal(text) == Decimal(value)


@pytest.mark.parametrize("text", ["1,5", "2,50", "1.234,00", "1,0000", ",100", "100,", "1e3", "1.2E+06",
                                  "NaN", "Infinity", "12 000", "1_000"])
def test_a_decimal_comma_an_exponent_or_odd_separators_are_refused_not_guessed(text):
    """"1,5" read as 15 would push ten times the money: it is a malformed_document conflict instead."""
    with pytest.raises(ConflictError) as err:
        to_decimal(text)
    assert err.value.kind == "malformed_document" and repr(text[:40]) in err.value.detail
