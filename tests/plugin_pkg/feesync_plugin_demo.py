"""feesync-plugin-demo: a minimal third-party connector, found through the `feesync.connectors` entry points.

It reads fee receipts from one JSON file and yields them as `sync.events` events in ascending
`(changed_at, id)` order (so `ordered = True` and the engine checkpoints its cursor)::

    {"receipts": [{"id": "R-1", "changed_at": "2026-11-02T09:00:00+05:00", "amount": "18000",
                   "currency": "PKR", "date": "2026-11-02", "student": "Ayesha Khan",
                   "email": "ayesha@example.pk", "method": "Cash", "status": "paid"}]}

`status: "cancelled"` makes the row a cancellation. A row the ledger already decided at its
version is `Unchanged`. It imports nothing of feesync but the public contract (`sync.events`,
`sync.errors`) and needs no change in feesync to run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, field_validator

from sync.errors import SourceError
from sync.events import FeeEvent, Malformed, PaymentCancelled, PaymentReceived, Position, Unchanged


class DemoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str

    @field_validator("path")
    @classmethod
    def _json_file(cls, v: str) -> str:
        if not v.endswith(".json"):
            raise ValueError("must name a .json file")
        return v


class Connector:
    name: ClassVar[str] = "demo_csvish"
    settings_model: ClassVar[type[BaseModel]] = DemoSettings
    ordered: ClassVar[bool] = True

    def __init__(self, settings: DemoSettings, **_: Any) -> None:
        self.settings = settings

    def server_now(self) -> datetime | None:
        return None

    def close(self) -> None:
        return None

    def fetch(self, since: Position | None, ctx: Any, until: datetime | None = None) -> Iterator[FeeEvent]:
        try:
            data = json.loads(Path(self.settings.path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SourceError(f"demo_csvish: cannot read {self.settings.path}: {type(exc).__name__}") from None
        rows = []
        for r in data.get("receipts", []):
            at = datetime.fromisoformat(str(r["changed_at"])).astimezone(UTC)
            pos = Position(at, str(r["id"]))
            if (since is not None and pos <= since) or (until is not None and at >= until):
                continue   # (t, "") from the engine's lookback includes every row at t
            rows.append((pos, r))
        for pos, r in sorted(rows, key=lambda item: item[0]):
            doc_id = str(r["id"])
            version = f"{r['changed_at']}|{r.get('status') or ''}|{r.get('amount')}"
            if ctx.seen(doc_id, version):
                yield Unchanged(doc_id=doc_id, position=pos, version=version)
            elif r.get("status") == "cancelled":
                yield PaymentCancelled(doc_id=doc_id, position=pos, version=version)
            else:
                try:
                    yield PaymentReceived(
                        doc_id=doc_id, position=pos, version=version, customer=str(r["student"]),
                        customer_email=r.get("email"), amount=Decimal(str(r["amount"])),
                        currency=str(r["currency"]).upper(), posting_date=date.fromisoformat(str(r["date"])),
                        method=r.get("method"))
                except (KeyError, ValueError, InvalidOperation) as exc:
                    yield Malformed(doc_id=doc_id, position=pos, version=version,
                                    problem=f"receipt {doc_id}: {type(exc).__name__}: {exc}")
