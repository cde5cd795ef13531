"""Built-in ERP connectors; each subpackage registers itself through the `feesync.connectors` entry-point group."""
