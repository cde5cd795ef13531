"""systemd's notify protocol (no dependency) and the daemon's watchdog: READY, WATCHDOG, STOPPING, STATUS.

The protocol (sd_notify(3)): newline-separated `KEY=VALUE` lines sent as one datagram to the
`AF_UNIX SOCK_DGRAM` socket named by `$NOTIFY_SOCKET` (a path, or an abstract-namespace name when it
starts with `@`). Without `$NOTIFY_SOCKET` (not under systemd, or `Type=simple`) every call is a no-op.

The unit (`deploy/feesync.service`) is `Type=notify`, `NotifyAccess=main`, `WatchdogSec=`. The daemon
(sync/daemon.py) drives one `Watchdog`:

* `READY=1` once start-up succeeded: the state store is open (build_app) and the scheduler runs;
* `WATCHDOG=1` every half of `$WATCHDOG_USEC`, **only while healthy**: the APScheduler scheduler is
  running, its thread is alive, and the heartbeat job (a no-op job scheduled on the daemon's own
  executor every `beat_every` seconds) ran within `max_age` (3 beats). A wedged scheduler loop, a
  dead executor or a job store deadlock stops that job, so the pings stop and systemd restarts the
  service after `WatchdogSec` (with `PYTHONFAULTHANDLER=1` the SIGABRT first dumps every thread's
  stack to the journal). A slow or stuck sync run does not: it holds its own worker thread, the
  heartbeat has one of its own; a source that stops succeeding is `/healthz`'s business
  (`max_stale`), not a reason to restart;
* `STATUS=...` with the daemon's counters on each ping, or the reason while pings are withheld;
* `STOPPING=1` when shutdown begins.

Test-only fault switch: `FEESYNC_TEST_WEDGE_AFTER=<seconds>` makes the heartbeat job block (until the
daemon stops) once that many seconds have passed since start-up, which is what a wedged scheduler
looks like from outside: the process lives, the pings stop. It is read only here and only when set;
when it fires it logs `watchdog.test_wedge` and sends `STATUS=test wedge ...` (so a test knows when).
An environment variable rather than a signal handler: nothing in production can trip it by accident
(a stray SIGUSR2), and the test needs no mocking of our code.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sync.logs import get_logger

TEST_WEDGE_ENV = "FEESYNC_TEST_WEDGE_AFTER"
HEARTBEAT_SECONDS = 5.0     # heartbeat job period, shortened for short watchdogs (a quarter of WatchdogSec)
MIN_HEARTBEAT_SECONDS = 0.2
log = get_logger(component="sdnotify")


def _address(path: str) -> str:
    """`@name` is a Linux abstract-namespace socket: a leading NUL byte instead of the `@`."""
    return "\0" + path[1:] if path.startswith("@") else path


def notify(*lines: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=...") as one datagram to `$NOTIFY_SOCKET`.

    True when sent; False when there is no socket (not under systemd) or sending failed (logged once
    per call, never raised: a notification must not take the daemon down)."""
    env = os.environ if env is None else env
    path = env.get("NOTIFY_SOCKET", "")
    if not path or not lines:
        return False
    if not path.startswith(("/", "@")):
        log.warning("sdnotify.unsupported_socket", socket=path)   # e.g. vsock: not used by service units
        return False
    message = "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:   # not inherited (PEP 446)
            sock.connect(_address(path))
            sock.sendall(message)
    except OSError as exc:
        log.warning("sdnotify.failed", socket=path, error=str(exc))
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of `$WATCHDOG_USEC`), or None when systemd expects none.

    `$WATCHDOG_PID`, when set, must be this process (sd_watchdog_enabled(3))."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


class Watchdog:
    """Readiness, health-gated watchdog pings and the stop notice for one daemon's scheduler."""

    def __init__(self, scheduler: Any, *, summary: Mapping[str, int] | None = None,
                 env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.scheduler = scheduler
        self.summary = summary
        self.env = os.environ if env is None else env
        self.clock = clock
        self.ping_every = watchdog_interval(self.env)
        watchdog_sec = 2 * self.ping_every if self.ping_every else None
        self.beat_every = (max(MIN_HEARTBEAT_SECONDS, min(HEARTBEAT_SECONDS, watchdog_sec / 4))
                           if watchdog_sec else HEARTBEAT_SECONDS)
        self.max_age = 3 * self.beat_every
        self.last_beat = clock()
        self.pings = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        wedge = self.env.get(TEST_WEDGE_ENV, "")
        self._wedge_at = clock() + float(wedge) if wedge else None

    @property
    def enabled(self) -> bool:
        return self.ping_every is not None

    # --- the heartbeat job (runs on the scheduler's default executor) ------------------------------
    def install(self) -> None:
        """Schedule the heartbeat job; only when systemd asks for watchdog pings (otherwise nothing reads it)."""
        if not self.enabled:
            return
        from apscheduler.triggers.interval import IntervalTrigger
        self.last_beat = self.clock()
        self.scheduler.add_job(self.beat, IntervalTrigger(seconds=self.beat_every), id="ops:heartbeat",
                               name="watchdog heartbeat", next_run_time=datetime.now(UTC),
                               misfire_grace_time=None)

    def beat(self) -> None:
        if self._wedge_at is not None and self.clock() >= self._wedge_at:
            self._wedge_at = None
            log.warning("watchdog.test_wedge", env=TEST_WEDGE_ENV)
            notify(f"STATUS=test wedge ({TEST_WEDGE_ENV}): heartbeat job blocked", env=self.env)
            self._stop.wait()   # blocked like a wedged executor, but released on shutdown
            return
        self.last_beat = self.clock()

    def healthy(self) -> tuple[bool, str]:
        """(ok, reason): the scheduler runs, its thread lives and the heartbeat job ran recently."""
        if not getattr(self.scheduler, "running", False):
            return False, "the scheduler is not running"
        thread = getattr(self.scheduler, "_thread", None)
        if thread is not None and not thread.is_alive():
            return False, "the scheduler thread has died"
        age = self.clock() - self.last_beat
        if age > self.max_age:
            return False, f"the scheduler's heartbeat job last ran {age:.1f} s ago (limit {self.max_age:.1f} s)"
        return True, "ok"

    # --- notifications ---------------------------------------------------------------------------
    def status_line(self) -> str:
        s = dict(self.summary or {})
        return (f"syncing: {s.get('runs', 0)} run(s), {s.get('pushed', 0)} pushed, "
                f"{s.get('conflicts', 0)} conflict(s), {s.get('failed', 0)} failed")

    def ready(self) -> None:
        """Start-up succeeded: tell systemd, and start pinging if it set a watchdog."""
        notify("READY=1", f"STATUS={self.status_line()}", env=self.env)
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="sd-watchdog", daemon=True)
            self._thread.start()
            log.info("watchdog.started", ping_seconds=self.ping_every, heartbeat_seconds=self.beat_every,
                     max_heartbeat_age=self.max_age)

    def _loop(self) -> None:
        assert self.ping_every is not None
        withheld = False
        while not self._stop.wait(self.ping_every):
            ok, why = self.healthy()
            if self._stop.is_set():
                return
            if ok:
                notify("WATCHDOG=1", f"STATUS={self.status_line()}", env=self.env)
                self.pings += 1
                if withheld:
                    log.info("watchdog.resumed")
                    withheld = False
            elif not withheld:
                log.error("watchdog.withheld", reason=why)
                notify(f"STATUS=unhealthy, watchdog pings withheld: {why}", env=self.env)
                withheld = True

    def stopping(self) -> None:
        """Shutdown begins: no more pings; tell systemd; release a test wedge."""
        first = not self._stop.is_set()
        self._stop.set()
        if first:
            notify("STOPPING=1", "STATUS=stopping: finishing the document in flight", env=self.env)
