"""The conformance kit (`sync.testing.conformance`) against the Zoho connector and its fake."""

from __future__ import annotations

import pytest

from sync.testing import ConnectorConformance
from sync.testing.harnesses import ZohoHarness


class TestZohoConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self):
        return ZohoHarness()
