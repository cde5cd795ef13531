"""sync/sdnotify.py: the sd_notify datagram protocol over real AF_UNIX sockets, and the watchdog's health rule."""

from __future__ import annotations

import os
import socket
import threading
import uuid

import pytest

from sync import sdnotify


@pytest.fixture
def receiver(tmp_path):
    """A test-owned AF_UNIX SOCK_DGRAM socket bound to a path; yields (path, recv)."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)

    def recv() -> str:
        return sock.recv(4096).decode()
    yield path, recv
    sock.close()


def test_notify_sends_all_lines_as_one_datagram_to_a_path_socket(receiver):
    """READY=1 and STATUS arrive together, newline-separated, in one datagram."""
    path, recv = receiver
    assert sdnotify.notify("READY=1", "STATUS=syncing", env={"NOTIFY_SOCKET": path}) is True
    assert recv() == "READY=1\nSTATUS=syncing"


def test_notify_reaches_an_abstract_namespace_socket_named_with_at():
    """`@name` is the abstract namespace: the datagram reaches a socket bound to NUL+name."""
    name = f"feesync-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert sdnotify.notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_notify_is_a_noop_without_a_socket_and_never_raises_on_a_dead_one(tmp_path):
    """No NOTIFY_SOCKET: False; a socket path nobody listens on: False, no exception."""
    assert sdnotify.notify("READY=1", env={}) is False
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")}) is False


def test_a_newline_inside_a_status_cannot_inject_another_assignment(receiver):
    """A STATUS text carrying a newline stays one line (no smuggled WATCHDOG=1 or READY=1)."""
    path, recv = receiver
    sdnotify.notify("STATUS=bad\nREADY=1", env={"NOTIFY_SOCKET": path})
    assert recv() == "STATUS=bad READY=1"


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid_only():
    """WATCHDOG_USEC=1 s -> ping every 0.5 s; another WATCHDOG_PID, none or garbage -> no pings."""
    me = str(os.getpid())
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": me}) == 0.5
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


class _Scheduler:
    """Just what Watchdog.healthy reads: `running` and the scheduler thread."""

    def __init__(self, thread: threading.Thread | None) -> None:
        self.running = True
        self._thread = thread


def test_healthy_means_scheduler_running_thread_alive_and_a_recent_heartbeat():
    """Each of the three conditions alone makes the watchdog unhealthy, with the reason."""
    now = [100.0]
    alive = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
    alive.start()
    sched = _Scheduler(alive)
    wd = sdnotify.Watchdog(sched, env={"WATCHDOG_USEC": "2000000"}, clock=lambda: now[0])
    assert (wd.ping_every, wd.beat_every, wd.max_age) == (1.0, 0.5, 1.5)
    wd.beat()
    assert wd.healthy() == (True, "ok")
    now[0] += 1.6   # the heartbeat job did not run for longer than 3 beats
    ok, why = wd.healthy()
    assert not ok and "heartbeat job last ran 1.6 s ago (limit 1.5 s)" in why
    wd.beat()
    assert wd.healthy()[0]
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    sched._thread = dead
    assert wd.healthy() == (False, "the scheduler thread has died")
    sched._thread, sched.running = alive, False
    assert wd.healthy() == (False, "the scheduler is not running")


def test_production_watchdog_beats_every_5_s_and_pings_every_30_s():
    """WatchdogSec=60s (the unit's): ping every 30 s, heartbeat every 5 s, unhealthy after 15 s without one."""
    wd = sdnotify.Watchdog(_Scheduler(None), env={"WATCHDOG_USEC": "60000000"})
    assert (wd.ping_every, wd.beat_every, wd.max_age) == (30.0, 5.0, 15.0)
    assert not sdnotify.Watchdog(_Scheduler(None), env={}).enabled
