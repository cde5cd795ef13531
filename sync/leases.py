"""Source leases: replicas sharing one state database run each source on one replica at a time.

A replica runs a source only while it holds that source's lease in the state database. It renews
the lease while a run goes on (at most every third of the TTL, checked before each document) and
between runs (a keeper thread), so a live replica keeps its sources; one that dies stops renewing
and another replica takes the source over once the lease has expired. Renewal before each
document is the fence: a replica that lost its lease stops before writing anything more (and
anything it had in flight carries its idempotency key, so the LMS replays rather than duplicates).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

from sync.logs import get_logger
from sync.state import Store

log = get_logger(component="leases")


class LeaseKeeper:
    def __init__(self, store: Store, ttl: float, owner: str | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._renewed: dict[str, float] = {}
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, source: str) -> bool:
        got = self.store.acquire_lease(source, self.owner, self.ttl)
        with self._lock:
            if got:
                if source not in self._held:
                    log.info("lease.acquired", source=source, owner=self.owner)
                self._held.add(source)
                self._renewed[source] = time.monotonic()
            elif source in self._held:
                self._held.discard(source)
                log.warning("lease.lost", source=source, owner=self.owner)
        return got

    def heartbeat(self, source: str) -> bool:
        """Renew when a third of the TTL has passed; False once another replica holds the source."""
        with self._lock:
            fresh = time.monotonic() - self._renewed.get(source, 0.0) < self.ttl / 3
        return True if fresh else self.acquire(source)

    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def start(self) -> LeaseKeeper:
        def loop() -> None:
            while not self._stop.wait(self.ttl / 3):
                for source in self.held():
                    try:
                        self.heartbeat(source)
                    except Exception as exc:  # noqa: BLE001 - the next beat tries again
                        log.warning("lease.renew_failed", source=source, error=str(exc))
        self._thread = threading.Thread(target=loop, name="lease-keeper", daemon=True)
        self._thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        if release:
            for source in self.held():
                try:
                    self.store.release_lease(source, self.owner)
                except Exception:  # noqa: BLE001,S110 - expiry hands it over anyway
                    pass
