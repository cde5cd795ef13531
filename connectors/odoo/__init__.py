"""Odoo connector (16, 17, 18 over JSON-RPC; 19 over JSON-RPC or JSON-2): inbound customer payments."""

from connectors.odoo.connector import OdooConnector, OdooSettings

__all__ = ["OdooConnector", "OdooSettings"]
