"""The conformance kit (`sync.testing.conformance`) against the Tally connector and its fake."""

from __future__ import annotations

import pytest

from sync.testing import ConnectorConformance
from sync.testing.harnesses import TallyHarness


class TestTallyConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self):
        return TallyHarness()
