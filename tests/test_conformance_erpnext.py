"""The conformance kit (`sync.testing.conformance`) against the ERPNext connector and its fake."""

from __future__ import annotations

import pytest

from sync.testing import ConnectorConformance
from sync.testing.harnesses import ERPNextHarness


class TestERPNextConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self):
        return ERPNextHarness()
