"""The long-running daemon: APScheduler jobs that call `engine.run_once`, and a bounded graceful shutdown.

* one job per enabled source (interval or cron), `max_instances=1` so a source never runs twice at once;
* SIGTERM/SIGINT: stop starting work, let the document in flight finish and commit, exit 0 within the
  grace period (10 s). A write still unanswered at the deadline stays an intent in the ledger and is
  re-sent with the same key and body at the next start, so cutting it short loses nothing.
"""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from sync.app import App, build_app
from sync.config import Settings
from sync.logs import get_logger
from sync.times import parse_duration

GRACE_SECONDS = 9.0
log = get_logger(component="daemon")


class Daemon:
    def __init__(self, app: App) -> None:
        self.app = app
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max(1, len(app.connectors)))},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 3600},
            timezone=UTC)
        self.stopping = threading.Event()
        self.busy: dict[str, bool] = {}
        self.last_ok: dict[str, datetime] = {}
        self.summary: dict[str, int] = {"runs": 0, "pushed": 0, "conflicts": 0, "failed": 0}
        self._lock = threading.Lock()

    def job(self, source: str) -> None:
        if self.stopping.is_set():
            return
        with self._lock:
            self.busy[source] = True
        try:
            result = self.app.engine.run_once(source, datetime.now(UTC))
            with self._lock:
                self.summary["runs"] += 1
                self.summary["pushed"] += result.counts.get("pushed", 0)
                self.summary["conflicts"] += sum(result.conflicts.values())
                if result.status in ("ok", "conflicts"):
                    self.last_ok[source] = datetime.now(UTC)
        except Exception as exc:  # noqa: BLE001 - one source's failure must not kill the daemon
            with self._lock:
                self.summary["failed"] += 1
            log.error("run.crashed", source=source, error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self.busy[source] = False

    def start(self) -> None:
        for name, src in self.app.settings.sources.items():
            if name not in self.app.connectors:
                continue
            trigger: Any
            if src.cron:
                trigger = CronTrigger.from_crontab(src.cron, timezone=UTC)
            else:
                trigger = IntervalTrigger(seconds=parse_duration(src.interval or "5m").total_seconds())
            self.scheduler.add_job(self.job, trigger, args=[name], id=f"sync:{name}", name=f"sync {name}",
                                   next_run_time=datetime.now(UTC))
        self.scheduler.start()
        log.info("daemon.started", sources=sorted(self.app.connectors))

    def stop(self) -> None:
        """Stop starting work; wait for in-flight runs up to the grace period."""
        self.stopping.set()
        self.app.stop_event.set()
        self.scheduler.pause()
        deadline = threading.Event()
        waited = 0.0
        while any(self.busy.values()) and waited < GRACE_SECONDS:
            deadline.wait(0.05)
            waited += 0.05
        try:
            self.scheduler.shutdown(wait=False)
        except Exception:  # noqa: BLE001,S110 - already stopped
            pass
        log.info("daemon.stopped", in_flight_cut=any(self.busy.values()), **self.summary)


def run_daemon(settings: Settings) -> int:
    app = build_app(settings)
    daemon = Daemon(app)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("daemon.signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start()
    while not stop.wait(0.5):
        pass
    daemon.stop()
    if not any(daemon.busy.values()):
        app.close()
    return 0
