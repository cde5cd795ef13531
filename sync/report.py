"""`feesync report --out DIR`: one self-contained HTML file (inline CSS, no script, no external asset;
opens offline, prints on A4 landscape) plus CSV files, for finance and ops staff.

It shows the open conflicts' totals by kind and by source, the money at stake per currency (exact
Decimal sums), their ages, the oldest and largest items, every conflict with its next step, each
source's cursor and last run, and the latest reconciliation of each source. The daemon writes it
on `report_schedule` (default daily) into `report_dir`.

Files: `feesync-report.html`, `conflicts.csv` (every open conflict) and `totals.csv` (one row per
kind/source and currency). Each is replaced atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sync import ops
from sync import reconcile as recon
from sync._web_html import attrs, esc, kind_badge, money_cell, page, table
from sync.state import Store
from sync.times import parse_duration, utcnow, zone

HTML_NAME, CONFLICTS_CSV, TOTALS_CSV = "feesync-report.html", "conflicts.csv", "totals.csv"
DAILY_AT = "0 6 * * *"     # 06:00 in the institute's time zone (lms.time_zone)
MAX_ROWS = 2000            # conflicts listed one by one in the HTML (the CSV has them all)


def parse_schedule(value: str, tz: Any) -> Any:
    """`daily` (06:00 local), `hourly`, `off`, a duration (`6h`, `30m`) or a crontab line
    (`m h dom mon dow`, local time) -> an APScheduler trigger, or None for `off`."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger
    text = (value or "").strip().lower()
    tzinfo = zone(tz) if isinstance(tz, str) else tz
    if text in ("off", "never", "none", ""):
        return None
    if text == "daily":
        return CronTrigger.from_crontab(DAILY_AT, timezone=tzinfo)
    if text == "hourly":
        return CronTrigger.from_crontab("0 * * * *", timezone=tzinfo)
    if len(text.split()) == 5:
        try:
            return CronTrigger.from_crontab(text, timezone=tzinfo)
        except ValueError as exc:
            raise ValueError(f"report_schedule {value!r}: {exc}") from None
    try:
        every = parse_duration(text)
    except Exception:  # noqa: BLE001 - ConfigError from parse_duration: say what is accepted
        raise ValueError(f"report_schedule {value!r}: use daily, hourly, off, a duration like 6h, or a "
                         f"crontab line like '0 6 * * *'") from None
    if every < timedelta(minutes=1):
        raise ValueError(f"report_schedule {value!r}: at most once a minute")
    return IntervalTrigger(seconds=every.total_seconds(), timezone=tzinfo)


# --- data ------------------------------------------------------------------------------------------
def report_data(store: Store, settings: Any = None, *, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    rows = ops.list_conflicts(store, status="open", sort="age", now=now)
    command = ops.command_prefix(settings, absolute=True)
    for r in rows:
        guide = ops.guidance(r, settings, command=command)
        r["next_step"] = guide["text"]
        r["commands"] = guide["commands"]
    configured = list(settings.sources) if settings is not None else []
    return {
        "generated_at": now.isoformat(),
        "time_zone": getattr(getattr(settings, "lms", None), "time_zone", "UTC"),
        "totals": ops.totals(rows, now),
        "conflicts": rows,
        "sources": ops.status(store, configured, settings=settings, now=now)["sources"],
        "reconciliations": recon.latest(store),
    }


# --- files ------------------------------------------------------------------------------------------------
def write_report(store: Store, settings: Any, out_dir: str | Path, *, now: datetime | None = None) -> dict[str, Any]:
    """Write the HTML report and the CSV files; returns their paths and the totals."""
    data = report_data(store, settings, now=now)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, conflicts_path, totals_path = out / HTML_NAME, out / CONFLICTS_CSV, out / TOTALS_CSV
    _atomic(html_path, render_html(data))
    _atomic(conflicts_path, ops.export(data["conflicts"], "csv"))
    _atomic(totals_path, totals_csv(data["totals"]))
    return {"html": str(html_path), "conflicts_csv": str(conflicts_path), "totals_csv": str(totals_path),
            "generated_at": data["generated_at"], "totals": {k: data["totals"][k] for k in (
                "total", "by_kind", "by_source", "money_at_stake", "invoiced_in_conflict", "credited_in_conflict",
                "amount_by_kind")},
            "reconciliations": [{"source": r["source"], "finished_at": r["finished_at"], "counts": r["counts"]}
                                for r in data["reconciliations"]]}


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def totals_csv(t: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "name", "count", "currency", "amount"])
    w.writerow(["all", "open conflicts", t["total"], "", ""])
    for key in ("money_at_stake", "invoiced_in_conflict", "credited_in_conflict"):
        for cur, amount in t.get(key, {}).items():
            w.writerow([key, "all", "", cur, amount])
    for group, counts, amounts in (("kind", t["by_kind"], t["amount_by_kind"]),
                                   ("source", t["by_source"], t["amount_by_source"])):
        for name, count in counts.items():
            per = amounts.get(name) or {"": ""}
            for cur, amount in per.items():
                w.writerow([group, name, count, cur, amount])
    for label, count in t["ages"].items():
        w.writerow(["age", label, count, "", ""])
    return buf.getvalue()


# --- HTML ---------------------------------------------------------------------------------------------------
def local_time(ts: str | None, tz: str) -> str:
    if not ts:
        return "-"
    try:
        return datetime.fromisoformat(ts).astimezone(zone(tz)).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return ts


def render_html(data: dict[str, Any]) -> str:
    t, tz = data["totals"], data["time_zone"]
    money_items = "".join(
        f"<li class=\"money\"{attrs(data_currency=cur, data_value=val)}>{esc(ops.money_display(val, cur))}</li>"
        for cur, val in t["money_at_stake"].items()) or "<li>-</li>"
    oldest = t["oldest"][0]["age"] if t["oldest"] else "-"
    healing = sum(1 for r in data["conflicts"] if r["self_healing"])
    parts = [
        f"<p class=\"muted\">Generated {esc(local_time(data['generated_at'], tz))} ({esc(tz)}) from the state store. "
        "Each open conflict is an ERP document (a receipt, an invoice or a credit note) that is not, or not "
        "correctly, in the LMS; the table at the end says what to do next for each one. The money at stake "
        "counts receipts only: money the ERP received that the LMS does not show, or shows after the ERP "
        "cancelled it. Invoice totals and credit notes in conflict are shown beside it, not added to it.</p>",
        "<div class=\"cards\">",
        f"<div class=\"card\"><div class=\"label\">Open conflicts</div>"
        f"<div class=\"value\" id=\"total-open\"{attrs(data_value=t['total'])}>{t['total']}</div></div>",
        f"<div class=\"card\"><div class=\"label\">Money at stake (receipts)</div><ul class=\"value\" "
        f"id=\"money-at-stake\">{money_items}</ul></div>",
        *(f"<div class=\"card\"><div class=\"label\">{label} in conflict (not counted)</div>"
          f"<ul class=\"value\" id=\"{key.replace('_', '-')}\">"
          + "".join(f"<li{attrs(data_currency=cur, data_value=val)}>{esc(ops.money_display(val, cur))}</li>"
                    for cur, val in t[key].items()) + "</ul></div>"
          for key, label in (("invoiced_in_conflict", "Invoices"), ("credited_in_conflict", "Credit notes"))
          if t.get(key)),
        f"<div class=\"card\"><div class=\"label\">Oldest</div><div class=\"value\">{esc(oldest)}</div></div>",
        f"<div class=\"card\"><div class=\"label\">Self-healing (retried by the daemon)</div>"
        f"<div class=\"value\">{healing}</div></div>",
        "</div>",
        "<h2>By kind</h2>",
        table(["kind", ("count", "num"), ("amount", "num"), "what to do"],
              (f"<tr{attrs(data_kind=k)}><td>{kind_badge(k)}</td><td class=\"num count\"{attrs(data_value=n)}>{n}</td>"
               f"{money_cell(t['amount_by_kind'].get(k))}<td class=\"next\">{esc(ops.NEXT_STEPS.get(k, ops.DEFAULT_NEXT_STEP))}</td></tr>"
               for k, n in t["by_kind"].items()), id="by-kind", empty="No open conflicts."),
        "<h2>By source</h2>",
        table(["source", ("count", "num"), ("amount", "num")],
              (f"<tr{attrs(data_source=s)}><td>{esc(s)}</td><td class=\"num count\"{attrs(data_value=n)}>{n}</td>"
               f"{money_cell(t['amount_by_source'].get(s))}</tr>" for s, n in t["by_source"].items()),
              id="by-source", empty="No open conflicts."),
        "<h2>Ages</h2>",
        table(["open for", ("count", "num")],
              (f"<tr{attrs(data_age=label)}><td>{esc(label)}</td><td class=\"num\">{n}</td></tr>"
               for label, n in t["ages"].items()), id="ages"),
        "<h2>Oldest</h2>", _brief_table(t["oldest"], "oldest"),
        "<h2>Largest</h2>", _brief_table(t["largest"], "largest"),
        "<h2>Sources</h2>", sources_table(data["sources"], tz),
        "<h2>Latest reconciliation</h2>", reconciliations_html(data["reconciliations"], tz),
        f"<h2>Every open conflict ({t['total']})</h2>", conflicts_table(data["conflicts"], tz),
        "<footer>feesync report. The same rows are in conflicts.csv; totals in totals.csv.</footer>",
    ]
    return page("feesync: conflicts report", "\n".join(parts))


def _brief_table(rows: list[dict[str, Any]], id_: str) -> str:
    return table(["#", "source", "document", "customer", "kind", ("amount", "num"), ("age", "num")],
                 (f"<tr{attrs(data_id=r['id'])}><td>{r['id']}</td><td>{esc(r['source'])}</td><td>{esc(r['doc_id'])}</td>"
                  f"<td>{esc(r['customer'])}</td><td>{kind_badge(r['kind'])}</td>"
                  f"<td class=\"num\">{esc(ops.money_display(r['amount'], r['currency']))}</td>"
                  f"<td class=\"num\">{esc(r['age'])}</td></tr>" for r in rows), id=id_, empty="No open conflicts.")


def sources_table(sources: list[dict[str, Any]], tz: str) -> str:
    def row(s: dict[str, Any]) -> str:
        last = s["last_run"] or {}
        lag = s["lag_seconds"]
        lag_text = "-" if lag is None else ops._age(lag)
        return (f"<tr{attrs(data_source=s['source'])}><td>{esc(s['source'])}</td>"
                f"<td>{esc(local_time((s['cursor'] or {}).get('changed_at'), tz))} "
                f"<span class=\"muted\">{esc((s['cursor'] or {}).get('doc_id', ''))}</span></td>"
                f"<td class=\"num\">{esc(lag_text)}</td><td>{esc(local_time(last.get('finished_at'), tz))}</td>"
                f"<td>{esc(last.get('status', '-'))}</td><td>{esc(local_time(s['last_success'], tz))}</td>"
                f"<td class=\"num\">{s['documents'].get('pushed', 0)}</td><td class=\"num\">{s['open_conflicts']}</td></tr>")
    return table(["source", "cursor", ("lag", "num"), "last run", "status", "last success", ("pushed", "num"),
                  ("open conflicts", "num")], (row(s) for s in sources), id="sources", empty="No source has run yet.")


def reconciliations_html(results: list[dict[str, Any]], tz: str) -> str:
    if not results:
        return "<p class=\"muted\" id=\"reconciliation\">No reconciliation has run yet (feesync reconcile --source NAME).</p>"
    out = []
    for r in results:
        c = r["counts"]
        out.append(
            f"<div{attrs(data_reconciliation=r['source'])}><h3>{esc(r['source'])}: "
            f"{esc(local_time(r['finished_at'], tz))}{' since ' + esc(r['since'][:10]) if r.get('since') else ''}</h3>"
            f"<p>ERP receipts compared: {r['erp']['received']} (cancelled {r['erp']['cancelled']}); LMS payments "
            f"from this source: {r['lms']['payments_from_source']}. Drifts: "
            f"<b class=\"{'bad' if r['drift_total'] else 'ok'}\">{r['drift_total']}</b> "
            f"(missing in LMS {c['missing_in_lms']}, not in ERP {c['not_in_erp']}, amount mismatch "
            f"{c['amount_mismatch']}); {r['unexplained']} not explained by an open conflict.</p>")
        out.append(table(["kind", "document", "student", "plan", "customer", ("ERP", "num"), ("LMS", "num"),
                          "explained by"],
                         (f"<tr{attrs(data_drift=d['kind'])}><td>{esc(d['kind'])}</td><td>{esc(d['doc_id'])}</td>"
                          f"<td>{esc(d['student_id'] or '-')}</td><td>{esc(d['plan_id'] or '-')}</td>"
                          f"<td>{esc(d['customer'] or '-')}</td>"
                          f"<td class=\"num\">{esc(ops.money_display(d['erp_amount']))}</td>"
                          f"<td class=\"num\">{esc(ops.money_display(d['lms_amount']))}</td>"
                          f"<td>{esc(_explained(d))}</td></tr>"
                          for d in r["drifts"][:500]), empty="No drift: the LMS holds exactly what the ERP received."))
        out.append("</div>")
    return "\n".join(out)


def _explained(drift: dict[str, Any]) -> str:
    return ", ".join(f"#{x['id']} {x['kind']}" for x in drift["explained_by"]) or "-"


def conflicts_table(rows: list[dict[str, Any]], tz: str) -> str:
    shown = rows[:MAX_ROWS]
    html = table(["#", "source", "document", "customer", "kind", ("amount", "num"), ("age", "num"), "detail",
                  "next step"],
                 (f"<tr{attrs(data_id=r['id'], data_kind=r['kind'], data_amount=r['amount'], data_currency=r['currency'])}>"
                  f"<td>{r['id']}</td><td>{esc(r['source'])}</td><td>{esc(r['doc_id'])}</td>"
                  f"<td>{esc(r['customer'])}</td><td>{kind_badge(r['kind'])}</td>"
                  f"<td class=\"num\">{esc(ops.money_display(r['amount'], r['currency']))}</td>"
                  f"<td class=\"num\" title=\"{esc(local_time(r['created_at'], tz))}\">{esc(r['age'])}</td>"
                  f"<td>{esc(r['detail'])}</td><td class=\"next\">{esc(r['next_step'])}"
                  f"{''.join('<br><code>' + esc(c) + '</code>' for c in r.get('commands', [])[:1])}</td></tr>"
                  for r in shown), id="conflicts", empty="No open conflicts.")
    if len(rows) > len(shown):
        html += f"<p class=\"muted\">{len(rows) - len(shown)} more in conflicts.csv.</p>"
    return html


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)
