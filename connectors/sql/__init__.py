"""SQL connector: fee receipts from any SQLAlchemy database by a `(changed_at, document_id)` keyset (see `connector.py`)."""

from connectors.sql.connector import SQLConnector, SQLSettings

__all__ = ["SQLConnector", "SQLSettings"]
