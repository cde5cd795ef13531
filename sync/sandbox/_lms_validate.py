"""Strict request validation with FastAPI/Pydantic-v2-style error lists (private; see `sync.sandbox.lms`).

A validation failure answers 422 with `{"detail": [{"loc": [...], "msg": ..., "type": ..., "input": ...}]}`.
Bodies are strict: integers must be JSON integers (no floats, strings or booleans), unknown fields are
rejected (`extra_forbidden`), timestamps must carry an offset.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Callable, Sequence

_MISSING: Any = object()

# a validator returns None when the value is fine, else (type, msg, ctx-or-None)
Problem = tuple[str, str, dict[str, Any] | None]
Validator = Callable[[Any], Problem | None]


class ValidationFailed(Exception):
    """Raised with the FastAPI-style error list."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


def error(loc: Sequence[str | int], type_: str, msg: str, input_: Any = _MISSING,
          ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type_, "loc": list(loc), "msg": msg}
    if input_ is not _MISSING:
        out["input"] = input_
    if ctx:
        out["ctx"] = ctx
    return out


# --- value validators -----------------------------------------------------------------------
def v_int(ge: int | None = None, le: int | None = None) -> Validator:
    def check(v: Any) -> Problem | None:
        if type(v) is not int:
            return ("int_type", "Input should be a valid integer", None)
        if ge is not None and v < ge:
            return ("greater_than_equal", f"Input should be greater than or equal to {ge}", {"ge": ge})
        if le is not None and v > le:
            return ("less_than_equal", f"Input should be less than or equal to {le}", {"le": le})
        return None
    return check


def v_number(ge: float | None = None, le: float | None = None) -> Validator:
    def check(v: Any) -> Problem | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            return ("float_type", "Input should be a valid number", None)
        if ge is not None and v < ge:
            return ("greater_than_equal", f"Input should be greater than or equal to {ge}", {"ge": ge})
        if le is not None and v > le:
            return ("less_than_equal", f"Input should be less than or equal to {le}", {"le": le})
        return None
    return check


def v_str(min_length: int = 0, max_length: int | None = None) -> Validator:
    def check(v: Any) -> Problem | None:
        if not isinstance(v, str):
            return ("string_type", "Input should be a valid string", None)
        if len(v) < min_length:
            return ("string_too_short", f"String should have at least {min_length} character"
                    + ("s" if min_length != 1 else ""), {"min_length": min_length})
        if max_length is not None and len(v) > max_length:
            return ("string_too_long", f"String should have at most {max_length} characters",
                    {"max_length": max_length})
        return None
    return check


def v_literal(options: Sequence[str]) -> Validator:
    quoted = [repr(o) for o in options]
    expected = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]

    def check(v: Any) -> Problem | None:
        if not isinstance(v, str) or v not in options:
            return ("literal_error", f"Input should be {expected}", {"expected": expected})
        return None
    return check


def v_aware_datetime() -> Validator:
    def check(v: Any) -> Problem | None:
        if not isinstance(v, str):
            return ("datetime_type", "Input should be a valid datetime", None)
        try:
            parsed = datetime.fromisoformat(v)
        except ValueError:
            return ("datetime_from_date_parsing", "Input should be a valid datetime or date", None)
        if len(v) <= 10 or parsed.tzinfo is None or parsed.utcoffset() is None:
            return ("timezone_aware", "Input should have timezone info", None)
        return None
    return check


def v_date() -> Validator:
    def check(v: Any) -> Problem | None:
        if not isinstance(v, str):
            return ("date_type", "Input should be a valid date", None)
        try:
            date.fromisoformat(v)
        except ValueError:
            return ("date_from_datetime_parsing", "Input should be a valid date in the format YYYY-MM-DD", None)
        if len(v) != 10:
            return ("date_from_datetime_parsing", "Input should be a valid date in the format YYYY-MM-DD", None)
        return None
    return check


def nullable(inner: Validator) -> Validator:
    def check(v: Any) -> Problem | None:
        return None if v is None else inner(v)
    return check


class Field:
    def __init__(self, validator: Validator, required: bool = True) -> None:
        self.validator = validator
        self.required = required


def check_object(value: Any, fields: dict[str, Field], loc: list[str | int]) -> list[dict[str, Any]]:
    """Validate a JSON object against `fields`; unknown keys are errors. Returns the error list."""
    if not isinstance(value, dict):
        return [error(loc, "model_attributes_type",
                      "Input should be a valid dictionary or object to extract fields from", value)]
    errors: list[dict[str, Any]] = []
    for name, spec in fields.items():
        if name not in value:
            if spec.required:
                errors.append(error(loc + [name], "missing", "Field required", value))
            continue
        problem = spec.validator(value[name])
        if problem is not None:
            type_, msg, ctx = problem
            errors.append(error(loc + [name], type_, msg, value[name], ctx))
    for name in value:
        if name not in fields:
            errors.append(error(loc + [name], "extra_forbidden", "Extra inputs are not permitted", value[name]))
    return errors


def query_int(query: dict[str, list[str]], name: str, default: int | None, ge: int | None = None,
              le: int | None = None, errors: list[dict[str, Any]] | None = None) -> int | None:
    """Read an integer query parameter (last value wins), appending a FastAPI-style error on failure."""
    values = query.get(name)
    if not values:
        return default
    raw = values[-1]
    errs = errors if errors is not None else []
    try:
        val = int(raw.strip()) if raw.strip().lstrip("+-").isdigit() else int("x")
    except ValueError:
        errs.append(error(["query", name], "int_parsing",
                          "Input should be a valid integer, unable to parse string as an integer", raw))
        return default
    if ge is not None and val < ge:
        errs.append(error(["query", name], "greater_than_equal", f"Input should be greater than or equal to {ge}",
                          raw, {"ge": ge}))
        return default
    if le is not None and val > le:
        errs.append(error(["query", name], "less_than_equal", f"Input should be less than or equal to {le}",
                          raw, {"le": le}))
        return default
    return val


def path_int(raw: str, name: str) -> int:
    """Parse an integer path parameter or raise ValidationFailed."""
    if raw.lstrip("+-").isdigit():
        return int(raw)
    raise ValidationFailed([error(["path", name], "int_parsing",
                                  "Input should be a valid integer, unable to parse string as an integer", raw)])
