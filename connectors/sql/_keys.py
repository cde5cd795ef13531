"""How the SQL connector reads and binds cursor values in the database's own representation.

A `changed_at` column can be a timezone-aware timestamp (PostgreSQL `timestamptz`), a naive one
(`timestamp`, MySQL `DATETIME`, local time in the configured `time_zone`), ISO text (SQLite,
whose comparisons are textual), a date, or epoch seconds. The connector samples one value and
binds cursor times in the same representation, explicitly typed, so the database compares like
with like; it never formats a value into SQL text. ISO text is bound in the sample's separator and
offset, with the shortest fraction and no offset suffix, which sorts at or before every
spelling of the same instant: a bound may re-read a row (the ledger drops it) but never skips
one. Within one fetch, pages continue from the last row's raw values, so they are exact. Text timestamps
must use one separator and one offset throughout the column; fractions may vary.

Document ids may be text or integers. Positions carry them as text; integers are zero-padded
to 20 digits so that the text order of positions is the numeric order the database sorts by.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO = re.compile(r"^(\d{4}-\d{2}-\d{2})(?P<sep>[T ])(\d{2}:\d{2}:\d{2})(?P<frac>\.\d+)?(?P<tz>Z|[+-]\d{2}:?\d{2})?$")


@dataclass(frozen=True)
class TimeCodec:
    """The representation of one `changed_at` column, learned from a sample value."""

    kind: str                       # aware | naive | date | text | epoch_int | epoch_float
    zone: tzinfo                    # the configured zone for naive values
    sep: str = " "
    frac_digits: int = 0
    text_offset: timezone | None = None   # text: the offset every value carries (None = naive local text)

    @classmethod
    def learn(cls, sample: Any, zone: tzinfo) -> TimeCodec:
        if isinstance(sample, datetime):
            return cls("aware" if sample.tzinfo is not None else "naive", zone)
        if isinstance(sample, date):
            return cls("date", zone)
        if isinstance(sample, bool):
            raise ValueError("changed_at is a boolean")
        if isinstance(sample, int):
            return cls("epoch_int", zone)
        if isinstance(sample, float | Decimal):
            return cls("epoch_float", zone)
        if isinstance(sample, str):
            m = _ISO.match(sample.strip())
            if not m:
                if re.fullmatch(r"\d{4}-\d{2}-\d{2}", sample.strip()):
                    return cls("text", zone, sep=" ", frac_digits=-1)   # date-only text
                raise ValueError(f"changed_at {sample[:40]!r} is not an ISO timestamp")
            frac = m.group("frac")
            tz = m.group("tz")
            offset = None
            if tz:
                offset = parse_iso(sample, zone).utcoffset() if tz != "Z" else timedelta(0)
            return cls("text", zone, sep=m.group("sep"), frac_digits=len(frac) - 1 if frac else 0,
                       text_offset=timezone(offset) if offset is not None else None)
        raise ValueError(f"changed_at has type {type(sample).__name__}")

    @property
    def local_naive(self) -> bool:
        """Values are wall-clock times of `zone` without an offset (they repeat when DST ends)."""
        return self.kind == "naive" or (self.kind == "text" and self.text_offset is None and self.frac_digits >= 0)

    def sa_type(self) -> sa.types.TypeEngine[Any]:
        return {"aware": sa.DateTime(timezone=True), "naive": sa.DateTime(), "date": sa.Date(),
                "text": sa.String(), "epoch_int": sa.BigInteger(), "epoch_float": sa.Float()}[self.kind]

    def bind(self, moment: datetime) -> Any:
        """An aware time -> the column's representation, never later than `moment`."""
        if self.kind == "aware":
            return moment.astimezone(UTC)
        if self.kind == "naive":
            return moment.astimezone(self.zone).replace(tzinfo=None)
        if self.kind == "date":
            return moment.astimezone(self.zone).date()
        if self.kind == "epoch_int":
            delta = moment - EPOCH
            return delta.days * 86400 + delta.seconds
        if self.kind == "epoch_float":
            return (moment - EPOCH).total_seconds()
        local = moment.astimezone(self.text_offset or self.zone)
        if self.frac_digits < 0:
            return local.strftime("%Y-%m-%d")
        text = local.strftime(f"%Y-%m-%d{self.sep}%H:%M:%S")
        if local.microsecond:
            # The shortest fraction: as text it sorts at or before every spelling of the same instant
            # (".25" <= ".250" <= ".250000"), so a bound can re-read a row but never skip one.
            text += "." + f"{local.microsecond:06d}".rstrip("0")
        # No offset suffix even when the column has one: "…:00" sorts before "…:00Z" and "…:00.5Z",
        # while "…:00Z" would sort after "…:00.5Z" and skip it.
        return text


def parse_iso(text: str, zone: tzinfo) -> datetime:
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value


def to_utc(value: Any, zone: tzinfo) -> datetime:
    """A `changed_at` value as the driver returned it -> aware UTC; ValueError when it is not a time."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=zone)
        return aware.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=zone).astimezone(UTC)
    if isinstance(value, bool) or value is None:
        raise ValueError(f"changed_at is {value!r}")
    if isinstance(value, int | float | Decimal):
        return EPOCH + timedelta(seconds=float(value))
    if isinstance(value, str):
        return parse_iso(value, zone).astimezone(UTC)
    raise ValueError(f"changed_at has type {type(value).__name__}")


def position_id(doc_id: Any) -> str:
    """Document id as it sorts in a Position (integers zero-padded)."""
    if isinstance(doc_id, int) and not isinstance(doc_id, bool) and doc_id >= 0:
        return f"{doc_id:020d}"
    return str(doc_id)


def bind_id(position_doc_id: str, sample: Any) -> Any:
    """A Position's doc id back in the column's type (the sample is any value of the column)."""
    if isinstance(sample, int) and not isinstance(sample, bool):
        try:
            return int(position_doc_id)
        except ValueError:
            return position_doc_id
    return position_doc_id


def id_type(sample: Any) -> sa.types.TypeEngine[Any]:
    if isinstance(sample, int) and not isinstance(sample, bool):
        return sa.BigInteger()
    return sa.String()
