"""ERPNext / Frappe connector: submitted customer receipts (Payment Entry) by a `(modified, name)` keyset cursor."""

from connectors.erpnext.connector import ERPNextConnector, ERPNextSettings

__all__ = ["ERPNextConnector", "ERPNextSettings"]
