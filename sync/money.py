"""Money: Decimal from the moment it is parsed; integers in the LMS's major unit when sent."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from sync.errors import ConflictError

_MAX_AMOUNT = Decimal("1e15")
# "1000", "1,000.50", "1,00,000" (lakh grouping), "-25.5": the only text amounts accepted. "1,5" (a decimal
# comma) would otherwise be read as 15; "1.2E+06" is a rounded spreadsheet display; "NaN"/"Infinity" are not
# money. ("." is the decimal point: "18.000" is 18.)
_AMOUNT_TEXT = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d{1,2}(?:,\d{2})*,\d{3}|\d+)(?:\.\d+)?")


def to_decimal(value: Any, *, field: str = "amount") -> Decimal:
    """Parse an ERP amount (JSON float, int or string) to Decimal without float rounding.

    JSON floats are converted through `repr`, which is the shortest string that round-trips,
    so `18000.0` becomes `Decimal("18000.0")`, never `18000.000000000001`.
    """
    if isinstance(value, bool) or value is None:
        raise ConflictError("malformed_document", f"{field} is missing or not a number: {value!r}",
                            definitive=False)
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip()
        if not _AMOUNT_TEXT.fullmatch(text):
            raise ConflictError("malformed_document", f"{field} {value[:40]!r} is not a plain amount: digits with "
                                "an optional '.' decimal part and ',' only between groups of three "
                                "(a decimal comma, an exponent or another separator is never guessed)",
                                definitive=False)
        try:
            result = Decimal(text.replace(",", ""))
        except InvalidOperation:
            raise ConflictError("malformed_document", f"{field} is not a number: {value[:40]!r}",
                                definitive=False) from None
    else:
        raise ConflictError("malformed_document", f"{field} has type {type(value).__name__}",
                            definitive=False)
    if not result.is_finite():
        raise ConflictError("malformed_document", f"{field} is not finite: {value!r}",
                            definitive=False)
    if abs(result) >= _MAX_AMOUNT:
        raise ConflictError("malformed_document", f"{field} is implausibly large: {result}",
                            definitive=False)
    return result


def to_lms_amount(amount: Decimal, *, field: str = "amount") -> int:
    """The LMS holds whole major units; a fraction is a conflict, never a rounding."""
    if amount != amount.to_integral_value():
        raise ConflictError("fractional_amount",
                            f"{field} {amount} has a fraction the LMS cannot hold (whole units only)",
                            definitive=False, extra={"amount": str(amount)})
    if amount < 1:
        raise ConflictError("invalid_amount", f"{field} {amount} is below 1; the LMS needs a payment >= 1",
                            definitive=False, extra={"amount": str(amount)})
    return int(amount)


def plain(value: Decimal) -> Decimal:
    """The same value without trailing zeros or an exponent (150.0 -> 150, 1000.50 -> 1000.5)."""
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


def money_text(value: Decimal) -> str:
    """Exact, plain (no exponent, no trailing zeros): what JSON, CSV and messages carry."""
    return format(plain(value), "f")
