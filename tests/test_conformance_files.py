"""The conformance kit (`sync.testing.conformance`) against the Files connector and its fake."""

from __future__ import annotations

import pytest

from sync.testing import ConnectorConformance
from sync.testing.harnesses import FilesHarness


class TestFilesConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self):
        return FilesHarness()
