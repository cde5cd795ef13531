"""Small helpers shared by the configuration and the status page (no heavy imports here)."""

from __future__ import annotations

import ipaddress


def parse_listen(value: str) -> tuple[str, int]:
    """`"127.0.0.1:8787"`, `"localhost:8787"` or `"[::1]:8787"` -> (host, port). Loopback only.

    The status page shows money and who owes it; it is meant for the machine itself (or an SSH
    tunnel / a reverse proxy on it), so any other address is refused.
    """
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8787)")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{value!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: port must be 0-65535")
    if host != "localhost":
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{value!r}: host must be a loopback address (127.0.0.1, ::1 or localhost)") from None
        if not addr.is_loopback:
            raise ValueError(f"{value!r}: the status page listens on loopback only (127.0.0.1, ::1 or localhost)")
    return host, port
