"""The long-running daemon: APScheduler jobs that call `engine.run_once`, and a bounded graceful shutdown.

* one job per enabled source (interval or cron), `max_instances=1` so a source never runs twice at once;
* SIGTERM/SIGINT: stop starting work, let the document in flight finish and commit, exit 0 within the
  grace period (10 s). A write still unanswered at the deadline stays an intent in the ledger and is
  re-sent with the same key and body at the next start, so cutting it short loses nothing.
* ops jobs: the report (`report_schedule`, default daily, into `report_dir`), the self-healing
  retries (`heal_interval`, at most `heal_max_attempts` per conflict) and, when `status_listen` is
  set, the status page (sync/web.py). A retry never runs beside its source's sync pass (one lock
  per source).
* systemd (`Type=notify`, sync/sdnotify.py): READY=1 once started, WATCHDOG=1 only while the scheduler's
  heartbeat job keeps running, STOPPING=1 when shutdown begins.
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

from sync import ops
from sync.app import App, build_app
from sync.config import Settings
from sync.logs import get_logger, redact
from sync.sdnotify import Watchdog
from sync.times import parse_duration, zone

GRACE_SECONDS = 9.0
log = get_logger(component="daemon")


class Daemon:
    def __init__(self, app: App) -> None:
        self.app = app
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max(1, len(app.connectors)) + 3)},   # + report, heal, heartbeat
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 3600},
            timezone=UTC)
        self.stopping = threading.Event()
        self.busy: dict[str, bool] = {}
        self.last_ok: dict[str, datetime] = {}
        self.summary: dict[str, int] = {"runs": 0, "pushed": 0, "conflicts": 0, "failed": 0}
        self._lock = threading.Lock()
        self.started_at: datetime | None = None
        self.status_server: Any = None
        from sync.leases import LeaseKeeper
        self.leases = LeaseKeeper(app.store, parse_duration(app.settings.lease_ttl).total_seconds())
        app.engine.heartbeat = self.leases.heartbeat
        self.watchdog = Watchdog(self.scheduler, summary=self.summary)   # systemd READY/WATCHDOG/STOPPING

    def job(self, source: str) -> None:
        if self.stopping.is_set():
            return
        try:
            if not self.leases.acquire(source):
                return   # another replica holds this source
        except Exception as exc:  # noqa: BLE001 - e.g. a read-only or vanished state store: logged, not a traceback
            with self._lock:
                self.summary["failed"] += 1
            log.error("run.crashed", source=source, error=redact(f"{type(exc).__name__}: {exc}")[:500])
            return
        with self._lock:
            self.busy[source] = True
        try:
            with ops.source_lock(source):
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
        self._schedule_ops()
        self.started_at = datetime.now(UTC)
        self.leases.start()
        self.watchdog.install()
        self.scheduler.start()
        self._start_status_page()
        log.info("daemon.started", sources=sorted(self.app.connectors))
        self.watchdog.ready()

    # --- ops jobs: report, self-healing retries, status page ---------------------------------------------
    def _schedule_ops(self) -> None:
        from sync.report import parse_schedule
        settings = self.app.settings
        trigger = parse_schedule(settings.report_schedule, zone(settings.lms.time_zone))
        if trigger is not None:
            self.scheduler.add_job(self.report_job, trigger, id="ops:report", name="report")
        if settings.heal_max_attempts > 0 and self.app.connectors:
            every = parse_duration(settings.heal_interval).total_seconds()
            self.scheduler.add_job(self.heal_job, IntervalTrigger(seconds=every), id="ops:heal", name="self-healing retries")
        recon = parse_schedule(settings.reconcile_schedule, zone(settings.lms.time_zone))
        if recon is not None and self.app.connectors:
            self.scheduler.add_job(self.reconcile_job, recon, id="ops:reconcile", name="reconcile pass")

    def reconcile_job(self) -> dict[str, Any]:
        """The periodic reconcile pass (sync-correctness rule 9): deletions and silent edits a cursor cannot
        see show up as drifts in the report and on the status page; it writes nothing to the LMS."""
        from sync.reconcile import reconcile
        since = datetime.now(UTC) - parse_duration(self.app.settings.reconcile_window)
        found: dict[str, Any] = {}
        for source in sorted(self.leases.held()):
            if self.stopping.is_set():
                break
            try:
                with ops.source_lock(source):
                    result = reconcile(self.app, source, since=since)
                drifts = result.get("drifts") or []
                found[source] = len(drifts)
                (log.warning if drifts else log.info)("reconcile.finished", source=source, drifts=len(drifts))
            except Exception as exc:  # noqa: BLE001 - a failed pass waits for the next one
                log.error("reconcile.failed", source=source, error=f"{type(exc).__name__}: {exc}")
        return found

    def report_job(self) -> dict[str, Any] | None:
        if self.stopping.is_set():
            return None
        from sync.report import write_report
        try:
            out = write_report(self.app.store, self.app.settings, self.app.settings.report_dir)
            log.info("report.written", path=out["html"], open_conflicts=out["totals"]["total"])
            return out
        except Exception as exc:  # noqa: BLE001 - a report failure must not stop syncing
            log.error("report.failed", error=f"{type(exc).__name__}: {exc}")
            return None

    def heal_job(self) -> list[dict[str, Any]]:
        if self.stopping.is_set():
            return []
        with self._lock:
            self.busy["_heal"] = True
        try:
            results = ops.heal(self.app, sources=self.leases.held())   # only what this replica runs
            if results:
                log.info("heal.finished", retried=len(results),
                         resolved=sum(1 for r in results if r["status"] == "resolved"))
            return results
        except Exception as exc:  # noqa: BLE001 - one failed pass waits for the next
            log.error("heal.failed", error=f"{type(exc).__name__}: {exc}")
            return []
        finally:
            with self._lock:
                self.busy["_heal"] = False

    def _start_status_page(self) -> None:
        settings = self.app.settings
        if not settings.status_listen:
            return
        from sync.web import StatusServer
        token = settings.status_admin_token.get_secret_value() if settings.status_admin_token else None
        try:
            self.status_server = StatusServer(
                self.app, listen=settings.status_listen, admin_token=token,
                scheduler=lambda: (bool(self.scheduler.running) and not self.stopping.is_set(),
                                   self.started_at)).start()
        except OSError as exc:   # e.g. the port is taken: syncing matters more than the page
            log.error("status.failed", listen=settings.status_listen, error=str(exc))

    def stop(self) -> None:
        """Stop starting work; wait for in-flight runs up to the grace period."""
        self.watchdog.stopping()
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
        if self.status_server is not None:
            self.status_server.stop()
        self.leases.stop(release=not any(self.busy.values()))
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
