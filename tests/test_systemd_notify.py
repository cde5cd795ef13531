"""`feesync run` under a systemd-like supervisor: READY=1, health-gated WATCHDOG=1, STOPPING=1 on a test-owned socket.

The daemon runs as a child process against the loopback sandboxes with `NOTIFY_SOCKET` naming an
AF_UNIX datagram socket this test binds and `WATCHDOG_USEC` = 1 s, exactly what systemd hands a
`Type=notify` + `WatchdogSec=1s` service. The scheduler is wedged from outside with the documented
test-only switch `FEESYNC_TEST_WEDGE_AFTER` (sync/sdnotify.py): its heartbeat job blocks.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests import proc, scenario


class Listener:
    """Collects (monotonic time, line) for every notify datagram on a socket the test owns."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self._lock:
                self.lines.extend((now, line) for line in data.decode().split("\n"))

    def times(self, prefix: str, after: float = 0.0) -> list[float]:
        with self._lock:
            return [t for t, line in self.lines if line.startswith(prefix) and t > after]

    def first(self, prefix: str, timeout: float, child=None, after: float = 0.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.times(prefix, after)
            if found:
                return found[0]
            if child is not None and child.poll() is not None:
                pytest.fail(f"daemon exited {child.returncode}: {child.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        pytest.fail(f"no {prefix!r} within {timeout} s; got {self.lines}")

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=1)


@pytest.fixture
def listener(tmp_path):
    lst = Listener(tmp_path / "notify.sock")
    yield lst
    lst.close()


def _stop(child) -> tuple[int, str]:
    child.send_signal(signal.SIGTERM)
    code = child.wait(timeout=15)
    err = child.stderr.read().decode()
    child.stdout.close()
    child.stderr.close()
    return code, err


def test_ready_then_watchdog_pings_while_healthy_then_silence_when_the_scheduler_is_wedged(
        sandboxes, tmp_path, listener):
    """READY=1 after start-up; WATCHDOG=1 every ~0.5 s; a wedged heartbeat stops the pings while the process lives."""
    lms, erp = sandboxes(scenario.build(n_students=3, receipts_per_student=2))
    cfg = proc.write_config(tmp_path, lms, erp, interval="1s")
    child = proc.feesync("--config", str(cfg), "run", extra_env={
        "NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "1000000", "FEESYNC_TEST_WEDGE_AFTER": "4"})
    try:
        ready = listener.first("READY=1", timeout=20, child=child)
        assert (tmp_path / "state.db").exists(), "READY=1 only once the state store is open"
        assert all(t > ready for t in listener.times("WATCHDOG=1")), "no ping before READY=1"
        assert listener.times("STATUS=syncing")[0] == ready   # sent in the same datagram

        # healthy: pings keep coming at half the watchdog period until the wedge (4 s after start-up)
        wedged = listener.first("STATUS=test wedge", timeout=10, child=child)
        pings = listener.times("WATCHDOG=1", after=ready)
        assert len(pings) >= 4, listener.lines
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert max(gaps) < 1.2, gaps   # every 0.5 s (a missed one would show as >= 1 s)

        # wedged: the heartbeat job blocks; the pinger sees its age and withholds the pings
        unhealthy = listener.first("STATUS=unhealthy", timeout=8, child=child, after=wedged)
        assert unhealthy - wedged < 3.0, "withheld within the heartbeat limit (0.75 s) plus a ping period"
        time.sleep(2.0)
        assert child.poll() is None, "stale but alive: the process still runs"
        assert listener.times("WATCHDOG=1", after=unhealthy) == []
        assert len(listener.times("WATCHDOG=1", after=ready)) >= len(pings)
        status = [line for t, line in listener.lines if line.startswith("STATUS=unhealthy")]
        assert "heartbeat job last ran" in status[0], status
        deadline = time.monotonic() + 10
        while len(lms.payments()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(lms.payments()) == 6, "the daemon really synced meanwhile"
    finally:
        if child.poll() is None:
            code, err = _stop(child)
        else:
            code, err = child.returncode, child.stderr.read().decode()
    assert code == 0, err[-2000:]
    assert listener.times("STOPPING=1"), "STOPPING=1 on shutdown"
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "watchdog.test_wedge" in events and "watchdog.withheld" in events and "daemon.stopped" in events


def test_stopping_is_sent_on_sigterm_and_no_ping_follows_it(sandboxes, tmp_path, listener):
    """SIGTERM: STOPPING=1 arrives, the pings end with it, the daemon exits 0."""
    lms, erp = sandboxes(scenario.build(n_students=2, receipts_per_student=1))
    cfg = proc.write_config(tmp_path, lms, erp, interval="1s")
    child = proc.feesync("--config", str(cfg), "run", extra_env={
        "NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "1000000"})
    try:
        ready = listener.first("READY=1", timeout=20, child=child)
        deadline = time.monotonic() + 5
        while len(listener.times("WATCHDOG=1", after=ready)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(listener.times("WATCHDOG=1", after=ready)) >= 2
    finally:
        code, err = _stop(child)
    assert code == 0, err[-2000:]
    stopping = listener.times("STOPPING=1")
    assert len(stopping) == 1
    time.sleep(0.3)
    assert listener.times("WATCHDOG=1", after=stopping[0]) == []
