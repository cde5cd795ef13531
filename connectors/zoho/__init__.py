"""Zoho Books connector: customer payments by windowed rescan, OAuth refresh, per-minute and daily pacing."""

from connectors.zoho.connector import ZohoConnector, ZohoSettings

__all__ = ["ZohoConnector", "ZohoSettings"]
