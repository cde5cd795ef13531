"""The connector contract (one small Protocol) and discovery through the entry-point group.

A connector turns one ERP's documents into `sync.events` events. Paging helpers may live in
a connector; retries of LMS writes, state, mapping and pushing belong to the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from sync.errors import ConfigError
from sync.events import FeeEvent, Position

ENTRY_POINT_GROUP = "feesync.connectors"


class SourceContext(Protocol):
    """What the engine lends a connector: a read-only view of the ledger plus a small memo."""

    def seen(self, doc_id: str, version: str) -> bool:
        """True when the ledger already decided `doc_id` at exactly this version."""

    def recall(self, key: str) -> str | None: ...

    def remember(self, key: str, value: str) -> None: ...


@runtime_checkable
class Connector(Protocol):
    """Yield fee events in ascending `position` order when `ordered` is True."""

    name: ClassVar[str]
    settings_model: ClassVar[type[BaseModel]]
    ordered: ClassVar[bool]

    def fetch(self, since: Position | None, ctx: SourceContext,
              until: datetime | None = None) -> Iterator[FeeEvent]: ...

    def server_now(self) -> datetime | None:
        """The ERP's own clock (for the cursor signpost), or None when it has none."""

    def close(self) -> None: ...


@runtime_checkable
class Reconcilable(Protocol):
    """Optional: connectors that can list what exists in a window (deletions are invisible to a cursor)."""

    def snapshot(self, since: datetime, until: datetime | None = None) -> dict[str, str]:
        """doc_id -> version of every live receipt whose change time is in [since, until)."""


ConnectorFactory = Callable[..., Connector]


def available() -> dict[str, Any]:
    """Every registered connector entry point, by name (not loaded yet)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load(name: str) -> type:
    """Load a connector class by entry-point name; a failure names the connector."""
    eps = available()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise ConfigError(f"connector {name!r} is not installed (known: {known})")
    try:
        cls = eps[name].load()
    except Exception as exc:  # noqa: BLE001 - any import error of a plug-in stops start-up by name
        raise ConfigError(f"connector {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
    for attr in ("name", "settings_model", "fetch", "close"):
        if not hasattr(cls, attr):
            raise ConfigError(f"connector {name!r} does not implement the contract (missing {attr})")
    return cls
