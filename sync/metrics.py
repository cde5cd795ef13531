"""`/metrics`: Prometheus text (prometheus_client), read from the state store at scrape time.

Series (labels in braces; every series but the scheduler's carries `institute`, the config's
institute id, `default` for a single-institute file):
* `feesync_receipts_pushed_total{institute,source}`: ERP receipts recorded in the LMS (documents `pushed`)
* `feesync_lms_writes_total{institute,source,status}`: ledger writes by status (done, conflict, intent,
  superseded)
* `feesync_conflicts_open{institute,source,kind}`: open conflicts;
  `feesync_money_at_stake{institute,currency}`
  the money received that they keep out of the LMS
* `feesync_lms_requests_total{institute,status}`: LMS requests sent by this process under that institute's
  key, by HTTP status (or `error`)
* `feesync_run_duration_seconds{institute,source}` (summary: count and sum over finished runs) and
  `feesync_last_run_duration_seconds{institute,source}`; `feesync_runs_total{institute,source,status}`
* `feesync_cursor_lag_seconds{institute,source}`: now minus the cursor's ERP change time
* `feesync_last_success_timestamp_seconds{institute,source}`: the last successful live run (Unix time)
* `feesync_reconcile_drifts{institute,source,kind}`: drifts found by the latest reconciliation, and
  `feesync_reconcile_drifts_unexplained{institute,source}`
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

BY_SOURCE = ["institute", "source"]   # source names are unique across institutes; the label says whose


class StateCollector:
    """A prometheus_client custom collector over the state store (and this process's LMS counters)."""

    def __init__(self, store: Store, *, lms_requests: Callable[[], dict[str, Counter[str]]] | None = None,
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
        pushed = CounterMetricFamily("feesync_receipts_pushed", "ERP receipts recorded in the LMS", labels=BY_SOURCE)
        wr = CounterMetricFamily("feesync_lms_writes", "Ledger writes by status", labels=[*BY_SOURCE, "status"])
        open_c = GaugeMetricFamily("feesync_conflicts_open", "Open conflicts", labels=[*BY_SOURCE, "kind"])
        stake = GaugeMetricFamily("feesync_money_at_stake", "Money the ERP received that open conflicts keep out of the LMS",
                                  labels=["institute", "currency"])
        dur = SummaryMetricFamily("feesync_run_duration_seconds", "Duration of finished sync runs", labels=BY_SOURCE)
        last_dur = GaugeMetricFamily("feesync_last_run_duration_seconds", "Duration of the last finished run",
                                     labels=BY_SOURCE)
        runs_total = CounterMetricFamily("feesync_runs", "Finished sync runs by status", labels=[*BY_SOURCE, "status"])
        lag = GaugeMetricFamily("feesync_cursor_lag_seconds", "Now minus the cursor's ERP change time",
                                labels=BY_SOURCE)
        last_ok = GaugeMetricFamily("feesync_last_success_timestamp_seconds",
                                    "Unix time of the last successful live run", labels=BY_SOURCE)
        drifts = GaugeMetricFamily("feesync_reconcile_drifts", "Drifts found by the latest reconciliation",
                                   labels=[*BY_SOURCE, "kind"])
        with self.store.engine.connect() as c:
            d = documents.c
            for inst, source, n in c.execute(select(d.institute, d.source, func.count()).where(
                    d.status == "pushed", d.event_kind == "PaymentReceived")   # receipts, not plans
                    .group_by(d.institute, d.source)):
                pushed.add_metric([inst, source], n)
            for inst, source, status, n in c.execute(select(writes.c.institute, writes.c.source, writes.c.status,
                                                            func.count())
                                                     .group_by(writes.c.institute, writes.c.source, writes.c.status)):
                wr.add_metric([inst, source, status], n)
            money: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
            counts: Counter[tuple[str, str, str]] = Counter()
            doc = documents.alias("d")
            for inst, source, kind, amount, currency, event_kind in c.execute(select(
                    conflicts.c.institute, conflicts.c.source, conflicts.c.kind, conflicts.c.amount,
                    conflicts.c.currency, doc.c.event_kind)
                    .select_from(conflicts.outerjoin(doc, (doc.c.source == conflicts.c.source)
                                                     & (doc.c.doc_id == conflicts.c.doc_id)))
                    .where(conflicts.c.status == "open")):
                counts[(inst, source, kind)] += 1
                value = to_amount(amount)
                # the same rule as ops.totals: invoices' totals and credit notes are not money received
                if value is not None and ops.DOCUMENT_KINDS.get(event_kind or "", "other") not in ("invoice",
                                                                                                   "credit_note"):
                    money[(inst, currency or "?")] += value
            for (inst, source, kind), n in sorted(counts.items()):
                open_c.add_metric([inst, source, kind], n)
            for (inst, cur), value in sorted(money.items()):
                stake.add_metric([inst, cur], float(value))
            per_source: dict[tuple[str, str], list[float]] = defaultdict(list)
            last: dict[tuple[str, str], float] = {}
            status_counts: Counter[tuple[str, str, str]] = Counter()
            for inst, source, started, finished, status in c.execute(select(
                    runs.c.institute, runs.c.source, runs.c.started_at, runs.c.finished_at, runs.c.status).where(
                    runs.c.finished_at.is_not(None)).order_by(runs.c.id)):
                seconds = max(0.0, (parse_iso(finished) - parse_iso(started)).total_seconds())
                per_source[(inst, source)].append(seconds)
                last[(inst, source)] = seconds
                status_counts[(inst, source, status)] += 1
            for key, values in sorted(per_source.items()):
                dur.add_metric(list(key), count_value=len(values), sum_value=sum(values))
                last_dur.add_metric(list(key), last[key])
            for key3, n in sorted(status_counts.items()):
                runs_total.add_metric(list(key3), n)
            institute_of: dict[str, str] = {}
            for inst, source, changed in c.execute(select(cursors.c.institute, cursors.c.source, cursors.c.changed_at)):
                institute_of[source] = inst
                lag.add_metric([inst, source], max(0.0, (now - parse_iso(changed)).total_seconds()))
            for inst, source, finished in c.execute(select(runs.c.institute, runs.c.source,
                                                           func.max(runs.c.finished_at)).where(
                    runs.c.status.in_(("ok", "conflicts")), runs.c.mode == "live")
                    .group_by(runs.c.institute, runs.c.source)):
                institute_of.setdefault(source, inst)
                if finished:
                    last_ok.add_metric([inst, source], parse_iso(finished).timestamp())
            for inst, source in c.execute(select(runs.c.institute, runs.c.source).distinct()):
                institute_of.setdefault(source, inst)
        unexplained = GaugeMetricFamily("feesync_reconcile_drifts_unexplained",
                                        "Drifts of the latest reconciliation that no open conflict explains",
                                        labels=BY_SOURCE)
        for result in recon.latest(self.store):
            inst = result.get("institute") or institute_of.get(result["source"], "default")
            for kind, n in sorted(result.get("counts", {}).items()):
                drifts.add_metric([inst, result["source"], kind], n)
            if result.get("unexplained") is not None:
                unexplained.add_metric([inst, result["source"]], result["unexplained"])
        yield from (pushed, wr, open_c, stake, dur, last_dur, runs_total, lag, last_ok, drifts, unexplained)
        if self.lms_requests is not None:
            req = CounterMetricFamily("feesync_lms_requests",
                                      "LMS requests sent by this process under each institute's key, by HTTP status",
                                      labels=["institute", "status"])
            for inst, counter in sorted(self.lms_requests().items()):
                for status, n in sorted(counter.items(), key=lambda kv: str(kv[0])):
                    req.add_metric([inst, str(status)], n)
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
    def lms_requests() -> dict[str, Counter[str]]:   # every institute's client (one key each)
        return {inst: Counter(client.requests)
                for inst, client in (getattr(app, "lms_clients", None) or {"default": app.lms}).items()}
    return StateCollector(app.store, lms_requests=lms_requests,
                          scheduler_running=scheduler_running, clock=clock)
