"""File connector: a drop folder of CSV receipt exports, each file processed once (by content hash)."""

from connectors.files.connector import COLUMNS, FileConnector, FileSettings

__all__ = ["COLUMNS", "FileConnector", "FileSettings"]
