"""feesync: ERP -> Zenslearn LMS fee synchronisation daemon."""

__version__ = "0.1.0"
