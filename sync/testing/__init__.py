"""Testing aids shipped with feesync: the connector conformance kit and harnesses for the bundled fakes.

`ConnectorConformance`, `Harness` and `Kit` live in `sync.testing.conformance` (which needs
pytest); `sync.testing.helpers` has the pytest-free pieces; `sync.testing.harnesses` has one
harness per bundled connector fake (ERPNext, CSV folder, Odoo, Zoho Books, TallyPrime, SQL).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConnectorConformance", "Harness", "Kit", "Killed", "kill_after", "SOURCE"]


def __getattr__(name: str) -> Any:   # lazy: importing sync.testing does not import pytest
    if name in __all__:
        from sync.testing import conformance
        return getattr(conformance, name)
    raise AttributeError(f"module 'sync.testing' has no attribute {name!r}")
