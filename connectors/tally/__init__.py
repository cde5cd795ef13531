"""TallyPrime connector: receipt vouchers by AlterID over the XML-over-HTTP port (see `connector.py`)."""

from connectors.tally.connector import TallyConnector, TallySettings

__all__ = ["TallyConnector", "TallySettings"]
