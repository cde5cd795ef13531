"""The conformance kit (`sync.testing.conformance`) against the Odoo connector and its fake."""

from __future__ import annotations

import pytest

from sync.testing import ConnectorConformance
from sync.testing.harnesses import OdooHarness


class TestOdooConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self):
        return OdooHarness()
