"""`/metrics`: Prometheus text (prometheus_client), read from the state store at scrape time.

Series (labels in braces):
* `feesync_receipts_pushed_total{source}`: ERP receipts recorded in the LMS (ledger documents `pushed`)
* `feesync_lms_writes_total{source,status}`: ledger writes by status (done, conflict, intent, superseded)
* `feesync_conflicts_open{source,kind}`: open conflicts; `feesync_money_at_stake{currency}` their amounts
* `feesync_lms_requests_total{status}`: LMS requests sent by this process, by HTTP status (or `error`)
* `feesync_run_duration_seconds{source}` (summary: count and sum over finished runs) and
  `feesync_last_run_duration_seconds{source}`; `feesync_runs_total{source,status}`
* `feesync_cursor_lag_seconds{source}`: now minus the cursor's ERP change time
* `feesync_last_success_timestamp_seconds{source}`: the last successful live run (Unix time)
* `feesync_reconcile_drifts{source,kind}`: drifts found by the latest reconciliation
* `feesync_scheduler_running`: 1 while the daemon's scheduler runs (when served by the daemon)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from sqlalchemy import func, select

from sync import reconcile as recon
from sync import ops
from sync.ops import to_amount
from sync.state import Store, conflicts, cursors, documents, runs, writes
from sync.times import parse_iso, utcnow

__all__ = ["CONTENT_TYPE_LATEST", "StateCollector", "render"]


class StateCollector:
    """A prometheus_client custom collector over the state store (and this process's LMS counters)."""

    def __init__(self, store: Store, *, lms_requests: Callable[[], Counter[str]] | None = None,
                 scheduler_running: Callable[[], bool] | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.lms_requests = lms_requests
        self.scheduler_running = scheduler_running
        self.clock = clock

    def describe(self) -> list[Metric]:
        return []   # collected on demand only

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        pushed = CounterMetricFamily("feesync_receipts_pushed", "ERP receipts recorded in the LMS", labels=["source"])
        wr = CounterMetricFamily("feesync_lms_writes", "Ledger writes by status", labels=["source", "status"])
        open_c = GaugeMetricFamily("feesync_conflicts_open", "Open conflicts", labels=["source", "kind"])
        stake = GaugeMetricFamily("feesync_money_at_stake", "Money the ERP received that open conflicts keep out of the LMS",
                                  labels=["currency"])
        dur = SummaryMetricFamily("feesync_run_duration_seconds", "Duration of finished sync runs", labels=["source"])
        last_dur = GaugeMetricFamily("feesync_last_run_duration_seconds", "Duration of the last finished run",
                                     labels=["source"])
        runs_total = CounterMetricFamily("feesync_runs", "Finished sync runs by status", labels=["source", "status"])
        lag = GaugeMetricFamily("feesync_cursor_lag_seconds", "Now minus the cursor's ERP change time",
                                labels=["source"])
        last_ok = GaugeMetricFamily("feesync_last_success_timestamp_seconds",
                                    "Unix time of the last successful live run", labels=["source"])
        drifts = GaugeMetricFamily("feesync_reconcile_drifts", "Drifts found by the latest reconciliation",
                                   labels=["source", "kind"])
        with self.store.engine.connect() as c:
            for source, n in c.execute(select(documents.c.source, func.count()).where(   # receipts, not plans
                    documents.c.status == "pushed", documents.c.event_kind == "PaymentReceived")
                    .group_by(documents.c.source)):
                pushed.add_metric([source], n)
            for source, status, n in c.execute(select(writes.c.source, writes.c.status, func.count())
                                               .group_by(writes.c.source, writes.c.status)):
                wr.add_metric([source, status], n)
            money: dict[str, Decimal] = defaultdict(Decimal)
            counts: Counter[tuple[str, str]] = Counter()
            doc = documents.alias("d")
            for source, kind, amount, currency, event_kind in c.execute(select(
                    conflicts.c.source, conflicts.c.kind, conflicts.c.amount, conflicts.c.currency, doc.c.event_kind)
                    .select_from(conflicts.outerjoin(doc, (doc.c.source == conflicts.c.source)
                                                     & (doc.c.doc_id == conflicts.c.doc_id)))
                    .where(conflicts.c.status == "open")):
                counts[(source, kind)] += 1
                value = to_amount(amount)
                # the same rule as ops.totals: invoices' totals and credit notes are not money received
                if value is not None and ops.DOCUMENT_KINDS.get(event_kind or "", "other") not in ("invoice",
                                                                                                   "credit_note"):
                    money[currency or "?"] += value
            for (source, kind), n in sorted(counts.items()):
                open_c.add_metric([source, kind], n)
            for cur, value in sorted(money.items()):
                stake.add_metric([cur], float(value))
            per_source: dict[str, list[float]] = defaultdict(list)
            last: dict[str, float] = {}
            status_counts: Counter[tuple[str, str]] = Counter()
            for source, started, finished, status in c.execute(select(
                    runs.c.source, runs.c.started_at, runs.c.finished_at, runs.c.status).where(
                    runs.c.finished_at.is_not(None)).order_by(runs.c.id)):
                seconds = max(0.0, (parse_iso(finished) - parse_iso(started)).total_seconds())
                per_source[source].append(seconds)
                last[source] = seconds
                status_counts[(source, status)] += 1
            for source, values in sorted(per_source.items()):
                dur.add_metric([source], count_value=len(values), sum_value=sum(values))
                last_dur.add_metric([source], last[source])
            for (source, status), n in sorted(status_counts.items()):
                runs_total.add_metric([source, status], n)
            for source, changed in c.execute(select(cursors.c.source, cursors.c.changed_at)):
                lag.add_metric([source], max(0.0, (now - parse_iso(changed)).total_seconds()))
            for source, finished in c.execute(select(runs.c.source, func.max(runs.c.finished_at)).where(
                    runs.c.status.in_(("ok", "conflicts")), runs.c.mode == "live").group_by(runs.c.source)):
                if finished:
                    last_ok.add_metric([source], parse_iso(finished).timestamp())
        unexplained = GaugeMetricFamily("feesync_reconcile_drifts_unexplained",
                                        "Drifts of the latest reconciliation that no open conflict explains",
                                        labels=["source"])
        for result in recon.latest(self.store):
            for kind, n in sorted(result.get("counts", {}).items()):
                drifts.add_metric([result["source"], kind], n)
            if result.get("unexplained") is not None:
                unexplained.add_metric([result["source"]], result["unexplained"])
        yield from (pushed, wr, open_c, stake, dur, last_dur, runs_total, lag, last_ok, drifts, unexplained)
        if self.lms_requests is not None:
            req = CounterMetricFamily("feesync_lms_requests", "LMS requests sent by this process, by HTTP status",
                                      labels=["status"])
            for status, n in sorted(self.lms_requests().items()):
                req.add_metric([str(status)], n)
            yield req
        if self.scheduler_running is not None:
            yield GaugeMetricFamily("feesync_scheduler_running", "1 while the daemon's scheduler runs",
                                    value=1 if self.scheduler_running() else 0)


def render(collector: StateCollector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)   # type: ignore[arg-type]
    return generate_latest(registry)


def app_collector(app: Any, *, scheduler_running: Callable[[], bool] | None = None,
                  clock: Callable[[], datetime] = utcnow) -> StateCollector:
    def lms_requests() -> Counter[str]:   # every institute's client (one key each)
        total: Counter[str] = Counter()
        for client in (getattr(app, "lms_clients", None) or {"default": app.lms}).values():
            total.update(client.requests)
        return total
    return StateCollector(app.store, lms_requests=lms_requests,
                          scheduler_running=scheduler_running, clock=clock)
