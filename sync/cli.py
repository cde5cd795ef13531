"""The `feesync` command line: parse, configure, call the engine. No sync logic lives here."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import DBAPIError

from sync import logs
from sync.config import Settings, load_settings
from sync.errors import ConfigError, FeesyncError, StateError

# markup off: ERP and LMS text ("Sana [old account]", "[/closed]") is printed as it is, never read as rich
# markup; the few styled labels below opt in with markup=True and escape() whatever data they carry.
console = Console(stderr=False, soft_wrap=False, markup=False)
err_console = Console(stderr=True, markup=False)

EXIT_OK, EXIT_CONFLICTS, EXIT_FAILURE = 0, 1, 2
CONFLICT_ID = click.IntRange(1, 2**63 - 1)   # a SQLite INTEGER: a larger number is a typo, not an id


def _emit(data: Any, as_json: bool, render: Any) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


def _settings(ctx: click.Context, *, secrets: bool = True) -> Settings:
    """The configuration; `secrets=False` for commands that only read the state store (no LMS key needed)."""
    from sync.config import require_secrets
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        if not obj.get("config") and not os.environ.get("FEESYNC_CONFIG"):
            err_console.print("note: no configuration file given (feesync --config FILE ... or FEESYNC_CONFIG); "
                              "using defaults and the environment", highlight=False)
        obj["settings"] = load_settings(obj.get("config"), secrets=False)
        logs.configure(obj["settings"].log_format, obj["settings"].log_level)
    if secrets:
        require_secrets(obj["settings"])
    return obj["settings"]


def _wants_json() -> bool:
    """`--json` among the command's own arguments: its errors then come as JSON on stdout too."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and root.obj is not None and root.obj.get("json_errors"))


def _fail(msg: str, code: int = EXIT_FAILURE, *, problems: list[str] | None = None) -> None:
    text = logs.redact(msg)
    if problems is None:
        err_console.print(f"[red]error:[/red] {escape(text)}", highlight=False, markup=True, soft_wrap=True)
    if _wants_json():
        out: dict[str, Any] = {"ok": False, "error": text}
        if problems is not None:
            out["problems"] = [logs.redact(p) for p in problems]
        click.echo(json.dumps(out, indent=2))
    sys.exit(code)


class _Group(click.Group):
    """Turns our own errors into one clear line and an exit code, never a traceback with inputs."""

    def invoke(self, ctx: click.Context) -> Any:
        ctx.ensure_object(dict)["json_errors"] = "--json" in ctx.args or "--json" in getattr(
            ctx, "_protected_args", [])
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            err_console.print("[red]configuration problems:[/red]", markup=True)
            for p in exc.problems:
                err_console.print(f"  - {logs.redact(p)}", highlight=False, soft_wrap=True)
            _fail("configuration problems", EXIT_FAILURE, problems=exc.problems)
        except StateError as exc:
            _fail(str(exc))
        except FeesyncError as exc:
            _fail(f"{type(exc).__name__}: {exc}")
        except OSError as exc:   # a path the operator gave: missing folder, no permission, a directory
            _fail(f"{exc.strerror or type(exc).__name__}: {exc.filename or exc}")
        except DBAPIError as exc:   # the state database refused (read-only file, disk full, locked): one line,
            hint = ""               # never the SQL or its parameters
            if "readonly" in str(exc.orig) or "read-only" in str(exc.orig):
                hint = "; check the owner and permissions of the state file and its folder (or the mount)"
            _fail(f"state store: {exc.orig}{hint}; the change was not saved")


@click.group(cls=_Group)
@click.option("--config", "config", envvar="FEESYNC_CONFIG", type=click.Path(dir_okay=False),
              help="TOML configuration file (or FEESYNC_CONFIG).")
@click.version_option(package_name="feesync")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """feesync: ERP -> Zenslearn LMS fee synchronisation."""
    ctx.ensure_object(dict)["config"] = config


# --- run modes ---------------------------------------------------------------------------------------
@cli.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the daemon: every source on its schedule until SIGTERM/SIGINT."""
    from sync.daemon import run_daemon
    sys.exit(run_daemon(_settings(ctx)))


@cli.command()
@click.option("--source", "sources", multiple=True, help="Only this source (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the writes a real run would make; write nothing.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def once(ctx: click.Context, sources: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """One pass over every (or the named) source. Exit 0 clean, 1 new conflicts, 2 failure."""
    from sync.app import build_app
    settings = _settings(ctx)
    names = list(sources) or [n for n, s in settings.sources.items() if s.enabled]
    unknown = [n for n in names if n not in settings.sources]
    if unknown:
        raise ConfigError([f"unknown source {n!r}" for n in unknown])
    app = build_app(settings)
    results = []
    try:
        for name in names:
            results.append(app.engine.run_once(name, datetime.now(UTC), dry_run=dry_run))
    finally:
        app.close()
    requests: dict[str, int] = {}
    for client in app.lms_clients.values():
        for status_code, n in client.requests.items():
            requests[status_code] = requests.get(status_code, 0) + n
    payload = {"results": [r.as_dict() for r in results], "lms_requests": requests}
    if dry_run:
        payload["planned_writes"] = [w for r in results for w in r.planned]
        payload["would_open_conflicts"] = [c for r in results for c in r.would_open]
    _emit(payload, as_json, lambda d: _render_runs(results, dry_run, _prefix(settings)))
    if any(r.status in ("failed", "stopped", "deferred") for r in results):
        sys.exit(EXIT_FAILURE)
    sys.exit(EXIT_CONFLICTS if any(r.conflicts for r in results) else EXIT_OK)


def _parse_day(value: str, tz: Any) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(value), time(0), tzinfo=tz).astimezone(UTC)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


@cli.command()
@click.option("--source", required=True)
@click.option("--since", required=True, help="First day (YYYY-MM-DD, ERP site time).")
@click.option("--until", default=None, help="Day after the last (default: now).")
@click.option("--dry-run", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def backfill(ctx: click.Context, source: str, since: str, until: str | None, dry_run: bool, as_json: bool) -> None:
    """Walk a window of ERP history without moving the live cursor; resumable after an interruption."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from sync.app import build_app
    from sync.times import zone
    settings = _settings(ctx)
    if source not in settings.sources:
        raise ConfigError(f"unknown source {source!r}")
    tz = zone(str(settings.sources[source].settings.get("site_time_zone", settings.lms.time_zone)))
    start = _parse_day(since, tz)
    end = _parse_day(until, tz) if until else datetime.now(UTC)
    if end <= start:
        raise click.BadParameter("--until must be after --since")
    app = build_app(settings)
    span = (end - start).total_seconds()
    cursor_name = f"backfill:{source}:{start.date()}:{until or 'now'}"
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TextColumn("{task.fields[docs]} docs"), TimeElapsedColumn(),
                  console=err_console, disable=as_json or not err_console.is_terminal) as progress:
        task = progress.add_task(f"backfill {source}", total=100.0, docs=0)
        seen = [0]

        def on_event(_src: str, event: Any) -> None:
            seen[0] += 1
            done = (event.position.changed_at - start).total_seconds() / span * 100
            progress.update(task, completed=max(0.0, min(100.0, done)), docs=seen[0])
        app.engine.on_event = on_event
        try:
            result = app.engine.run_once(source, datetime.now(UTC), mode="backfill", since=start, until=end,
                                         dry_run=dry_run, cursor_name=cursor_name)
        finally:
            app.close()
        progress.update(task, completed=100.0 if result.status in ("ok", "conflicts") else None)
    payload = {**result.as_dict(), "window": [start.isoformat(), end.isoformat()], "cursor_name": cursor_name}
    if dry_run:
        payload["planned_writes"] = result.planned
        payload["would_open_conflicts"] = result.would_open
    _emit(payload, as_json, lambda d: _render_runs([result], dry_run, _prefix(settings)))
    sys.exit(EXIT_FAILURE if result.status in ("failed", "stopped", "deferred")
             else EXIT_CONFLICTS if result.conflicts else EXIT_OK)


# run counters in words (the JSON keeps the counter names); unknown ones print as they are
COUNT_WORDS = {
    "pushed": "receipts recorded", "record_payment_done": "payments written",
    "create_plan_done": "plans created", "cancel_plan_done": "plans cancelled",
    "waive_installment_done": "installments waived", "writes_done": "LMS writes in all",
    "unchanged": "unchanged (already in the ledger)", "document_errors": "documents that failed",
    "would_record_payment": "payments a real run would write", "would_create_plan": "plans it would create",
    "would_cancel_plan": "plans it would cancel", "would_waive_installment": "installments it would waive",
}


def _prefix(settings: Settings) -> str:
    from sync import ops
    return ops.command_prefix(settings)


def _render_runs(results: list[Any], dry_run: bool, prefix: str | None = None) -> None:
    for r in results:
        console.print(f"[bold]{escape(r.source)}[/bold] run {r.run_id} ({r.mode}): {r.status}"
                      + escape(f" - {r.error}" if r.error else ""), highlight=False, markup=True)
        counts = ", ".join(f"{COUNT_WORDS.get(k, k)} {v}" for k, v in sorted(r.counts.items())) or "nothing new"
        console.print(f"  {counts}", highlight=False)
        if r.skipped:
            console.print("  skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(r.skipped.items())), highlight=False)
        if r.conflicts:
            console.print("  conflicts: " + ", ".join(f"{k} {v}" for k, v in sorted(r.conflicts.items())),
                          highlight=False)
        if r.conflicts and not dry_run and prefix:
            console.print(f"  next: {prefix} conflicts list", highlight=False, soft_wrap=True)
        if dry_run and r.would_open:
            console.print(f"  conflicts a real run would open: {len(r.would_open)}", highlight=False)
            for c in r.would_open:
                console.print(f"  {c['kind']}  doc {c['doc_id']}: {c['detail']}", highlight=False, markup=False,
                              soft_wrap=True)
        if dry_run and r.planned:
            console.print(f"  writes a real run would make: {len(r.planned)}", highlight=False)
            for w in r.planned:   # one block per write: readable on an 80-column terminal, greppable
                console.print(f"  {w['op']} {w['method']} {w['path']}", highlight=False, soft_wrap=True)
                console.print(f"    doc {w['doc_id']}  key {w['key']}", highlight=False, soft_wrap=True)
                console.print(f"    body {json.dumps(w['body'], sort_keys=True)}", highlight=False, soft_wrap=True)


# --- status and conflicts ------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Per source: cursor and its lag, last run, last success, document counts, open conflicts."""
    from sync import ops
    settings = _settings(ctx, secrets=False)
    store = _store(ctx)
    try:
        data = ops.status(store, list(settings.sources), settings=settings)
    finally:
        store.close()

    def render(d: dict[str, Any]) -> None:
        t = Table(box=None, header_style="bold", pad_edge=False)   # one line per source, 80 columns
        t.add_column("source", no_wrap=True, overflow="ellipsis", max_width=18)
        for col in ("cursor (UTC)", "lag", "last run", "last ok", "done", "open"):
            t.add_column(col, no_wrap=True, justify="right" if col in ("lag", "done", "open") else "left")
        for s in d["sources"]:
            last = s["last_run"] or {}
            run = f"{last['status']} {_short_ts(last.get('finished_at') or last.get('started_at'))[5:]}" if last else "-"
            t.add_row(s["source"], _short_ts((s["cursor"] or {}).get("changed_at")),
                      "-" if s["lag_seconds"] is None else ops._age(s["lag_seconds"]), run,
                      _short_ts(s["last_success"])[5:] or "-", str(s["documents"].get("pushed", 0)),
                      str(s["open_conflicts"]))
        console.print(t)
        console.print("last ok: the last successful run; done: ERP documents (receipts, invoices, credit notes) "
                      "whose LMS writes are all made; open: open conflicts. Documents by status and the last runs:",
                      style="dim", highlight=False)
        console.print(f"  {ops.command_prefix(settings)} status --json", style="dim", highlight=False,
                      soft_wrap=True)
    _emit(data, as_json, render)


def _short_ts(value: str | None) -> str:
    return value[:16].replace("T", " ") if value else "-"


@cli.group()
def conflicts() -> None:
    """Review and fix conflicts: list, show, resolve, ignore, retry, map, export."""


def _store(ctx: click.Context) -> Any:
    from sync.state import Store
    return Store.open(_settings(ctx.find_root(), secrets=False).state_target(), create=False)


def _filter_options(f: Any) -> Any:
    """The filters every conflict-selecting command shares."""
    for opt in reversed([
        click.option("--kind", "kinds", multiple=True, help="Only this kind (repeatable)."),
        click.option("--source", default=None, help="Only this source."),
        click.option("--student", default=None, help="ERP customer (part of the name) or LMS student id."),
        click.option("--older-than", default=None, help="Opened more than this long ago (e.g. 2d, 12h)."),
        click.option("--newer-than", default=None, help="Opened less than this long ago."),
    ]):
        f = opt(f)
    return f


def _filters(kinds: tuple[str, ...], source: str | None, student: str | None, older_than: str | None,
             newer_than: str | None) -> dict[str, Any]:
    from sync.times import parse_duration
    for name, value in (("--older-than", older_than), ("--newer-than", newer_than)):
        if value:
            try:
                parse_duration(value)
            except ValueError:
                raise click.BadParameter(f"{value!r} is not a duration (e.g. 2d, 12h, 30m)", param_hint=name) from None
    from sync import ops
    for k in kinds:
        if k not in ops.KNOWN_KINDS:   # a typo matches nothing: say so, do not fail
            err_console.print(f"note: {k!r} is not a conflict kind feesync opens; known kinds: "
                              f"{', '.join(sorted(ops.KNOWN_KINDS))}", highlight=False, soft_wrap=True)
    return {"kind": list(kinds) or None, "source": source, "student": student, "older_than": older_than,
            "newer_than": newer_than}


def _money_line(money: dict[str, str]) -> str:
    from sync import ops
    return ", ".join(ops.money_display(v, c) for c, v in money.items()) or "-"


DRIFT_LABELS = {"missing_in_lms": "missing in LMS", "not_in_erp": "not in ERP", "amount_mismatch": "amount differs"}


def _drift_table(drifts: list[dict[str, Any]]) -> Table:
    """Document ids and amounts are never cut (they are what a person looks up); the student and the
    explaining conflict shrink, and the latter shows only where there is room."""
    from sync import ops
    several = len({x.get("currency") for x in drifts}) > 1   # then every amount names its currency
    rows = [(DRIFT_LABELS.get(x["kind"], x["kind"]), x["doc_id"], str(x["student_id"] or x["customer"] or "-"),
             str(x["plan_id"] or "-"), ops.money_display(x["erp_amount"], x.get("currency") if several else None),
             ops.money_display(x["lms_amount"], x.get("currency") if several else None),
             ", ".join(f"#{e['id']} {e['kind']}" for e in x["explained_by"]) or "-") for x in drifts]
    width = console.width
    keep = [max(len(r[i]) for r in rows) for i in range(7)]
    fixed = sum(keep[i] for i in (0, 1, 3, 4, 5)) + 2 * 6
    t = Table(box=None, header_style="bold", pad_edge=False)
    t.add_column("drift", no_wrap=True, min_width=max(5, keep[0]))
    t.add_column("document", no_wrap=True, min_width=keep[1])
    t.add_column("student", no_wrap=True, overflow="ellipsis", max_width=max(7, min(24, width - fixed - 2)))
    t.add_column("plan", no_wrap=True, min_width=keep[3])
    t.add_column("ERP", justify="right", no_wrap=True, min_width=max(3, keep[4]))
    t.add_column("LMS", justify="right", no_wrap=True, min_width=max(3, keep[5]))
    with_why = width - fixed - min(24, keep[2]) >= 16
    if with_why:
        t.add_column("explained by", no_wrap=True, overflow="ellipsis")
    elif any(x["explained_by"] for x in drifts):
        n = sum(1 for x in drifts if x["explained_by"])
        t.caption = f"{n} of these are explained by open conflicts: a wider terminal or --json shows which"
        t.caption_justify = "left"
    for r in rows:
        t.add_row(*(r if with_why else r[:6]))
    return t


def _billed_line(totals: dict[str, Any]) -> str:
    """Invoice totals and credit notes in conflict: shown beside the money at stake, never added to it."""
    parts = [f"{label} {_money_line(totals[key])}" for key, label in (
        ("invoiced_in_conflict", "invoices"), ("credited_in_conflict", "credit notes")) if totals.get(key)]
    return f" (not counted: {'; '.join(parts)})" if parts else ""


def _conflict_table(rows: list[dict[str, Any]], *, show_status: bool = False) -> Table:
    """Fits the terminal: the detail (and the source) only where there is room (`show` has everything)."""
    from sync import ops
    width = console.width
    with_source = width >= 110 or len({r["source"] for r in rows}) > 1
    with_detail = width >= 120
    with_customer = width >= 100
    id_width = max([len(str(r["id"])) for r in rows] + [2])
    t = Table(box=None, header_style="bold", pad_edge=False)
    t.add_column("id", justify="right", no_wrap=True, min_width=id_width)   # never cut: `show ID` needs it
    if show_status:
        t.add_column("status", no_wrap=True)
    t.add_column("kind", no_wrap=True, overflow="ellipsis", max_width=22)
    if with_source:
        t.add_column("source", no_wrap=True, overflow="ellipsis", max_width=14)
    t.add_column("document", no_wrap=True, overflow="ellipsis", max_width=20)
    if with_customer:
        t.add_column("customer", no_wrap=True, overflow="ellipsis", max_width=18)
    t.add_column("amount", justify="right", no_wrap=True, min_width=8)
    t.add_column("age", justify="right", no_wrap=True, min_width=3)
    if with_detail:
        t.add_column("detail", no_wrap=True, overflow="ellipsis", max_width=max(20, width - 110))
    for c in rows:
        cells = [str(c["id"])] + ([c["status"]] if show_status else []) + [c["kind"]] + (
            [c["source"]] if with_source else []) + [
            c["doc_id"]] + ([c["customer"] or "-"] if with_customer else []) + [
            ops.money_display(c["amount"], c["currency"]), c["age"]] + (
            [c["detail"]] if with_detail else [])
        t.add_row(*cells)
    return t


@conflicts.command("list")
@click.option("--status", "status_", default="open", type=click.Choice(["open", "resolved", "ignored", "all"]))
@_filter_options
@click.option("--sort", default="id", type=click.Choice(["id", "amount", "age"]),
              help="amount: largest first; age: oldest first.")
@click.option("--limit", default=None, type=click.IntRange(1, 10**9), help="Show at most N (the totals cover all that match).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def conflicts_list(ctx: click.Context, status_: str, kinds: tuple[str, ...], source: str | None, student: str | None,
                   older_than: str | None, newer_than: str | None, sort: str, limit: int | None, as_json: bool) -> None:
    """List conflicts with their amounts; totals by kind and the money at stake at the end."""
    from sync import ops
    filters = _filters(kinds, source, student, older_than, newer_than)
    store = _store(ctx)
    try:
        rows = ops.list_conflicts(store, status=status_, sort=sort, **filters)
    finally:
        store.close()
    payload = ops.conflicts_payload(rows)
    if limit:
        payload["conflicts"] = rows[:limit]

    def render(data: dict[str, Any]) -> None:
        console.print(_conflict_table(data["conflicts"], show_status=status_ != "open"))
        shown = f" (showing {len(data['conflicts'])})" if len(data["conflicts"]) < data["total"] else ""
        console.print(f"{data['total']} conflict(s){shown}; money at stake: {_money_line(data['money_at_stake'])}"
                      + _billed_line(data), highlight=False)
        if data["by_kind"]:
            console.print("by kind: " + ", ".join(f"{k} {v}" for k, v in data["by_kind"].items()), highlight=False)
    _emit(payload, as_json, render)


@conflicts.command("show")
@click.argument("conflict_id", type=CONFLICT_ID)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def conflicts_show(ctx: click.Context, conflict_id: int, as_json: bool) -> None:
    """One conflict: the ERP document, what was sent, what the LMS said, and what to do next."""
    from sync import ops
    settings = _settings(ctx.find_root(), secrets=False)
    store = _store(ctx)
    try:
        data = ops.show_conflict(store, conflict_id, settings=settings, command=ops.command_prefix(settings))
    finally:
        store.close()
    if data is None:
        _fail(f"no conflict {conflict_id}")

    def render(d: dict[str, Any]) -> None:
        def line(label: str, value: Any) -> None:
            console.print(f"[bold]{label:>13}[/bold]  {escape(str(value if value not in (None, '') else '-'))}",
                          highlight=False, markup=True)
        line("conflict", f"#{d['id']} {d['kind']} ({d['status']})")
        line("document", f"{d['source']} / {d['doc_id']}")
        line("customer", d["customer"])
        line("amount", ops.money_display(d["amount"], d["currency"]))
        line("LMS receipt", d["lms_receipt"])
        line("opened", f"{_short_ts(d['created_at'])} UTC ({d['age']} ago), attempts {d['attempts']}, "
                       f"automatic retries {d['auto_retries']}")
        line("detail", d["detail"])
        if d["status"] != "open":
            line("closed", f"{_short_ts(d['resolved_at'])} UTC by {d['resolved_by']}: {d['note'] or ''}")
        console.print("\n[bold]What to do next[/bold]", markup=True)
        console.print(f"  {d['next_step']}", highlight=False)
        for cmd in d["commands"]:
            console.print(f"    $ {cmd}", highlight=False, soft_wrap=True)
        doc = d.get("document")
        if doc:
            console.print("\n[bold]The ERP document[/bold]", markup=True)
            keys = ("customer", "customer_email", "amount", "currency", "posting_date", "method", "reference_number",
                    "amended_from")
            for k in keys:
                if doc.get(k) not in (None, ""):
                    value = ops.money_display(doc[k]) if k == "amount" else doc[k]
                    console.print(f"  {k}: {value}", highlight=False)
            for r in doc.get("references") or []:
                console.print(f"  reference: {r.get('invoice_id') or '-'} {r.get('amount')} "
                              f"{r.get('installment_term') or ''} plan {r.get('lms_plan_id') or '-'}", highlight=False)
        console.print("\n[bold]What was sent to the LMS[/bold]", markup=True)
        if not d["writes"]:
            req = d.get("request")
            as_mapped = f" (as mapped: {json.dumps(req, default=str)})" if req and req != doc else ""
            console.print(f"  nothing: it stopped before sending{as_mapped}", highlight=False)
        for w in d["writes"]:
            console.print(f"  {w['method']} {w['path']}  key {w['key']}  {w['status']} ({w['attempts']} attempt(s))",
                          highlight=False)
            console.print(f"    body: {json.dumps(w['body'], default=str)}", highlight=False)
        console.print("\n[bold]What the LMS said[/bold]", markup=True)
        console.print(f"  {json.dumps(d['response'], default=str) if d.get('response') else '-'}", highlight=False)
        console.print("\n[bold]History[/bold] (UTC)", markup=True)
        for h in d.get("history", []):
            console.print(f"  {_short_ts(h['at'])}  {h['action']} by {h['actor']}  {h['note'] or ''}", highlight=False)
    _emit(data, as_json, render)


def _change_status(ctx: click.Context, ids: tuple[int, ...], status_: str, note: str, actor: str,
                   as_json: bool) -> None:
    from sync import ops
    store = _store(ctx)
    try:
        try:
            outcomes = ops.change_status(store, list(ids), status_, actor=actor, note=note)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--note") from None
    finally:
        store.close()
    changed = sum(1 for o in outcomes if o["changed"])

    def render(d: dict[str, Any]) -> None:
        for o in d["outcomes"]:
            if not o["changed"]:
                console.print(f"conflict {o['id']}: {o['outcome']} (unchanged)", highlight=False)
        console.print(f"{d['changed']} conflict(s) marked {status_}", highlight=False)
    _emit({"changed": changed, "outcomes": outcomes}, as_json, render)
    if changed < len(ids):
        sys.exit(EXIT_CONFLICTS)


def _actor() -> str:
    import getpass
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "cli"


@conflicts.command("resolve")
@click.argument("ids", type=CONFLICT_ID, nargs=-1, required=True)
@click.option("--note", required=True, help="What was done (kept in the conflict's history).")
@click.option("--by", "actor", default=_actor, help="Who did it (default: your login).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def conflicts_resolve(ctx: click.Context, ids: tuple[int, ...], note: str, actor: str, as_json: bool) -> None:
    """Mark open conflicts resolved by a person (e.g. after reversing an LMS receipt by hand)."""
    _change_status(ctx, ids, "resolved", note, actor, as_json)


@conflicts.command("ignore")
@click.argument("ids", type=CONFLICT_ID, nargs=-1, required=True)
@click.option("--note", required=True, help="Why nothing will be written for it.")
@click.option("--by", "actor", default=_actor, help="Who decided (default: your login).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def conflicts_ignore(ctx: click.Context, ids: tuple[int, ...], note: str, actor: str, as_json: bool) -> None:
    """Mark open conflicts ignored (nothing will be written for them)."""
    _change_status(ctx, ids, "ignored", note, actor, as_json)


def _render_retried(d: dict[str, Any]) -> None:
    for o in d["retried"]:
        what = f" ({o['doc_id']}, {o['kind']})" if o.get("kind") else ""
        moved = o.get("status") and not o["outcome"].startswith("not retried")
        console.print(f"conflict {o['id']}{what}: {o['outcome']}" + (f" -> {o['status']}" if moved else ""),
                      highlight=False, soft_wrap=True)
    if "resolved" in d:
        console.print(f"{d['resolved']} of {len(d['retried'])} resolved", highlight=False)


@conflicts.command("retry")
@click.argument("ids", type=CONFLICT_ID, nargs=-1)
@_filter_options
@click.option("--all", "all_", is_flag=True, help="Every open conflict a retry can act on.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (bulk retries ask).")
@click.option("--by", "actor", default=_actor, help="Who retried (kept in the history).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def conflicts_retry(ctx: click.Context, ids: tuple[int, ...], kinds: tuple[str, ...], source: str | None,
                    student: str | None, older_than: str | None, newer_than: str | None, all_: bool, yes: bool,
                    actor: str, as_json: bool) -> None:
    """Re-map and re-send the documents behind conflicts: by id, or in bulk by filter (asks first).

    The engine sends a new key revision only where sync-correctness rule 12 allows it; kinds where the
    LMS already holds money (reversed_in_erp, changed_after_sync, idempotency_key_reused) are not retried.
    Exit 0 when every retried conflict is resolved, 1 otherwise."""
    from sync import ops
    from sync.app import build_app
    filters = _filters(kinds, source, student, older_than, newer_than)
    bulk = any(v for v in filters.values()) or all_
    if ids and bulk:
        raise click.UsageError("name conflict ids or use filters/--all, not both")
    if not ids and not bulk:
        raise click.UsageError("name conflict ids, or select them with --kind/--source/--student/--older-than/--all")
    settings = _settings(ctx.find_root())
    app = build_app(settings)
    try:
        if bulk:
            rows = ops.list_conflicts(app.store, status="open", **filters)
            targets = [r["id"] for r in rows if r["retryable"]]
            if not targets:
                _emit({"retried": [], "resolved": 0}, as_json, _render_retried)
                return
            money = ops.totals([r for r in rows if r["id"] in set(targets)])["money_at_stake"]
            skipped = len(rows) - len(targets)
            if not yes:
                note = f" ({skipped} more cannot be retried: fix those by hand)" if skipped else ""
                click.confirm(f"Retry {len(targets)} conflict(s), {_money_line(money)}{note}?", abort=True,
                              err=True)
        else:
            targets = list(ids)
        outcomes = ops.retry_conflicts(app, targets, actor=actor)
    finally:
        app.close()
    # only what this retry resolved counts; "not retried: already resolved" is not a success of this run
    resolved = sum(1 for o in outcomes if o["status"] == "resolved" and not o["outcome"].startswith("not retried"))
    _emit({"retried": outcomes, "resolved": resolved}, as_json, _render_retried)
    sys.exit(EXIT_OK if resolved == len(outcomes) else EXIT_CONFLICTS)


def _only_source(settings: Settings, source: str | None) -> str:
    if source:
        if source not in settings.sources:
            raise ConfigError(f"unknown source {source!r}")
        return source
    if len(settings.sources) == 1:
        return next(iter(settings.sources))
    raise click.UsageError("several sources are configured: name one with --source")


@conflicts.command("map")
@click.option("--source", default=None, help="The source (needed when several are configured).")
@click.option("--customer", default=None, help="ERP customer (exactly as in the ERP) ...")
@click.option("--student", default=None, help="... to this LMS student id.")
@click.option("--invoice", default=None, help="ERP invoice ...")
@click.option("--plan", default=None, help="... to this LMS fee plan id.")
@click.option("--no-verify", is_flag=True, help="Do not check that the LMS student/plan exists.")
@click.option("--no-retry", is_flag=True, help="Only store the mapping.")
@click.option("--by", "actor", default=_actor)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def conflicts_map(ctx: click.Context, source: str | None, customer: str | None, student: str | None,
                  invoice: str | None, plan: str | None, no_verify: bool, no_retry: bool, actor: str,
                  as_json: bool) -> None:
    """Map an ERP customer to an LMS student (or an invoice to a plan), then retry what it unblocks.

    Stored in the state store (origin `manual`); a mapping in the config file for the same customer or
    invoice wins over it."""
    from sync import ops
    from sync.app import build_app
    if bool(customer) == bool(invoice) or (customer and not student) or (invoice and not plan) \
            or (customer and plan) or (invoice and student):
        raise click.UsageError("use --customer NAME --student ID, or --invoice NAME --plan ID")
    settings = _settings(ctx.find_root())
    src = _only_source(settings, source)
    kind, erp_id, lms_id = ((ops.KIND_CUSTOMER, customer, student) if customer else (ops.KIND_INVOICE, invoice, plan))
    app = build_app(settings)
    try:
        try:
            result = ops.add_mapping(app, kind, src, str(erp_id), str(lms_id), actor=actor, verify=not no_verify,
                                     retry=not no_retry)
        except ValueError as exc:
            _fail(str(exc), EXIT_CONFLICTS)
    finally:
        app.close()

    def render(d: dict[str, Any]) -> None:
        console.print(f"mapped {d['kind']} {d['erp_id']!r} -> {d['lms_id']} (source {d['source']})"
                      + (f", was {d['previous']}" if d["previous"] else ""), highlight=False)
        if d["shadowed_by_config"]:
            console.print(f"[yellow]note:[/yellow] the config file maps it to {escape(str(d['shadowed_by_config']))}, "
                          "which wins", highlight=False, markup=True)
        if d.get("closed"):
            console.print(f"closed the invoice's own conflict(s) {', '.join(f'#{c}' for c in d['closed'])}: "
                          "no plan is created for it", highlight=False)
        console.print(f"{len(d['unblocked'])} open conflict(s) it unblocks", highlight=False)
        _render_retried(d)
    _emit(result, as_json, render)
    # as `retry`: 1 while a conflict it retried is still (or again) in conflict
    sys.exit(EXIT_OK if result.get("resolved", 0) == len(result.get("retried") or []) else EXIT_CONFLICTS)


@conflicts.command("export")
@click.option("--format", "fmt", default="csv", show_default=True, type=click.Choice(["csv", "json"]))
@click.option("--out", default="-", type=click.Path(dir_okay=False, allow_dash=True), help="File (default: stdout).")
@click.option("--status", "status_", default="open", type=click.Choice(["open", "resolved", "ignored", "all"]))
@_filter_options
@click.option("--sort", default="id", type=click.Choice(["id", "amount", "age"]))
@click.pass_context
def conflicts_export(ctx: click.Context, fmt: str, out: str, status_: str, kinds: tuple[str, ...],
                     source: str | None, student: str | None, older_than: str | None, newer_than: str | None,
                     sort: str) -> None:
    """Export conflicts (with amounts and next steps) as CSV or JSON."""
    from sync import ops
    filters = _filters(kinds, source, student, older_than, newer_than)
    store = _store(ctx)
    try:
        rows = ops.list_conflicts(store, status=status_, sort=sort, **filters)
    finally:
        store.close()
    text = ops.export(rows, fmt)
    if out == "-":
        click.echo(text, nl=False)
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")
        err_console.print(f"{len(rows)} conflict(s) written to {out}", highlight=False)


# --- report and reconciliation -------------------------------------------------------------------------
@cli.command()
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for the report (default: report_dir).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def report(ctx: click.Context, out_dir: str | None, as_json: bool) -> None:
    """Write the HTML report (self-contained, prints well) and CSV files of the open conflicts."""
    from sync.report import write_report
    settings = _settings(ctx, secrets=False)
    store = _store(ctx)
    try:
        result = write_report(store, settings, out_dir or settings.report_dir)
    finally:
        store.close()

    def render(d: dict[str, Any]) -> None:
        t = d["totals"]
        console.print(f"report: {d['html']}", highlight=False, soft_wrap=True)
        console.print(f"csv:    {d['conflicts_csv']}, {d['totals_csv']}", highlight=False, soft_wrap=True)
        console.print(f"{t['total']} open conflict(s); money at stake: {_money_line(t['money_at_stake'])}"
                      + _billed_line(t), highlight=False)
    _emit(result, as_json, render)


@cli.command()
@click.option("--source", required=True)
@click.option("--since", default=None, help="Only ERP receipts changed since this day (YYYY-MM-DD, ERP site time).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def reconcile(ctx: click.Context, source: str, since: str | None, as_json: bool) -> None:
    """Compare what the ERP received with what the LMS holds, per student and plan; writes nothing to
    the LMS. Exit 0 without drift, 1 with drifts."""
    from sync import ops
    from sync import reconcile as recon
    from sync.app import build_app
    from sync.times import zone
    settings = _settings(ctx)
    if source not in settings.sources:
        raise ConfigError(f"unknown source {source!r}")
    tz = zone(str(settings.sources[source].settings.get("site_time_zone", settings.lms.time_zone)))
    start = _parse_day(since, tz) if since else None
    app = build_app(settings)
    try:
        result = recon.reconcile(app, source, since=start)
    finally:
        app.close()

    def render(d: dict[str, Any]) -> None:
        c = d["counts"]
        console.print(f"{d['source']}: {d['erp']['received']} ERP receipts, {d['lms']['payments_from_source']} LMS "
                      f"payments from this source; drifts: {d['drift_total']} (missing in LMS {c['missing_in_lms']}, "
                      f"not in ERP {c['not_in_erp']}, amount mismatch {c['amount_mismatch']}; "
                      f"{d['unexplained']} not explained by an open conflict)", highlight=False)
        if d["drifts"]:
            console.print(_drift_table(d["drifts"]))
    _emit(result, as_json, render)
    sys.exit(EXIT_CONFLICTS if result["drifts"] else EXIT_OK)


# --- check ---------------------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--liveness", is_flag=True, help="Only probe that this host's daemon is alive and healthy (its "
              "/healthz when status_listen is set, else recent runs in the state store); for health checks.")
@click.option("--offline", is_flag=True, help="Validate the configuration, the connectors and the state store "
              "(it must be writable) without reaching the LMS or any ERP: the check a service runs before it "
              "starts, so one ERP or key that is down does not keep the other sources from running.")
@click.pass_context
def check(ctx: click.Context, as_json: bool, liveness: bool = False, offline: bool = False) -> None:
    """Validate the configuration, reach every endpoint and verify the LMS key's scopes. Exit 0 or 1."""
    from sync import ops
    obj = ctx.ensure_object(dict)
    if liveness:
        _liveness(obj.get("config"), as_json)
    from sync.config import missing_secrets
    try:
        settings = load_settings(obj.get("config"), secrets=False)
        logs.configure(settings.log_format, settings.log_level)
        problems = missing_secrets(settings) + ops.check(settings, offline=offline)   # every problem, one list
    except ConfigError as exc:
        from sync.config import raw_source_problems
        extra = raw_source_problems(obj.get("config") or os.environ.get("FEESYNC_CONFIG"))
        problems = exc.problems + [p for p in extra if p not in exc.problems]
    data = {"ok": not problems, "problems": [logs.redact(p) for p in problems]}

    def render(d: dict[str, Any]) -> None:
        if d["ok"]:
            console.print("[green]ok[/green]: configuration valid" + (
                ", state store writable (offline: LMS and sources not contacted)" if offline
                else ", LMS and every source reachable"), markup=True)
        else:
            console.print(f"[red]{len(d['problems'])} problem(s):[/red]", markup=True)
            for p in d["problems"]:
                console.print(f"  - {p}", highlight=False)
    _emit(data, as_json, render)
    sys.exit(0 if not problems else 1)


def _liveness(config: str | None, as_json: bool) -> None:
    """`check --liveness` (sync/health.py): exit 0 when the daemon is alive and healthy, else 1 saying why."""
    from sync.health import liveness
    try:
        settings = load_settings(config, secrets=False)
        logs.configure(settings.log_format, settings.log_level)
        data = liveness(settings)
    except ConfigError as exc:
        data = {"ok": False, "via": "config", "problems": exc.problems}
    data["problems"] = [logs.redact(p) for p in data["problems"]]

    def render(d: dict[str, Any]) -> None:   # plain lines, never wrapped: health logs keep them whole
        click.echo(f"alive: daemon healthy ({d['via']})" if d["ok"] else f"not alive ({d['via']}):")
        for p in d["problems"]:
            click.echo(f"  - {p}")
    _emit(data, as_json, render)
    sys.exit(0 if data["ok"] else 1)


# --- demo and sandboxes --------------------------------------------------------------------------------
@cli.command()
@click.option("--dir", "work_dir", default="./feesync-demo", type=click.Path(file_okay=False),
              help="Where the demo keeps its state store and conflict report.")
@click.option("--json", "as_json", is_flag=True)
def demo(work_dir: str, as_json: bool) -> None:
    """Start both sandboxes with bundled data, run one sync, print a summary, write a conflict report."""
    from sync.demo import run_demo
    logs.configure("json" if as_json else "console", "warning")
    summary = run_demo(Path(work_dir))
    _emit(summary, as_json, _render_demo)


def _render_demo(s: dict[str, Any]) -> None:
    console.print(f"[bold]feesync demo[/bold]: {s['erp_documents']} ERP payment entries -> LMS sandbox "
                  f"({s['seconds']:.1f} s)", highlight=False, markup=True)
    t = Table("what", "count")
    t.add_row("pushed (ERP receipts recorded in the LMS)", str(s["pushed"]))
    t.add_row("LMS payments written", str(s["lms_writes"] - s["plans_created"] - s["plans_cancelled"]
                                           - s["installments_waived"]))
    t.add_row("fee plans created from ERP invoices", str(s["plans_created"]))
    t.add_row("fee plans cancelled", str(s["plans_cancelled"]))
    t.add_row("installments waived by credit notes", str(s["installments_waived"]))
    t.add_row("re-read behind the cursor, unchanged", str(s["unchanged"]))
    for k, v in sorted(s["skipped"].items()):
        t.add_row(f"skipped: {k}", str(v))
    for k, v in sorted(s["conflicts"].items()):
        t.add_row(f"conflict: {k}", str(v))
    t.add_row("LMS requests sent", str(s["lms_requests"]))
    console.print(t)
    console.print(f"open conflicts: {s['open_conflicts']} - report: {s['report']}", highlight=False)
    console.print(f"state store: {s['state']}  (run the demo again: it pushes 0)", highlight=False)
    # the folder the printed command works from (scripts/demo.sh runs in the checkout, wherever it is called)
    console.print(f"look around, from {Path.cwd()} (then status, conflicts show ID, report):", highlight=False)
    program = Path(sys.argv[0])
    if program.name == "feesync" and program.is_absolute():
        try:
            program = program.relative_to(Path.cwd())
        except ValueError:
            pass
    shown = program if program.name == "feesync" else "feesync"
    console.print(f"  {shown} --config {s['config']} conflicts list", highlight=False)


@cli.group()
def sandbox() -> None:
    """Run a sandbox server in the foreground (for trials and dry runs)."""


@sandbox.command("lms")
@click.option("--seed", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=8765, type=int)
@click.option("--rate-limit", default=None, type=int, help="Requests per minute per key.")
def sandbox_lms(seed: str, host: str, port: int, rate_limit: int | None) -> None:
    """The Zenslearn LMS sandbox: the Public API's fee endpoints, status rules, rate limit and fault switches."""
    from sync.sandbox.lms import serve_forever
    serve_forever(seed, host, port, rate_limit)


@sandbox.command("erpnext")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=8000, type=int)
def sandbox_erpnext(data: str, host: str, port: int) -> None:
    """The ERPNext 15 fake: Frappe REST as ERPNext 15 answers (paging, `modified` ties, cancel/amend, errors)."""
    from sync.sandbox.erpnext import serve_forever
    serve_forever(data, host, port)


@sandbox.command("odoo")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=8069, type=int)
@click.option("--version", "odoo_version", default=17, type=click.Choice(["16", "17", "18", "19"]))
def sandbox_odoo(data: str, host: str, port: int, odoo_version: str) -> None:
    """The Odoo 16-19 fake (JSON-RPC / JSON-2)."""
    from sync.sandbox.odoo import main as odoo_main
    sys.exit(odoo_main([data, "--host", host, "--port", str(port), "--version", odoo_version]))


@sandbox.command("tally")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=9000, type=int)
def sandbox_tally(data: str, host: str, port: int) -> None:
    """The TallyPrime XML-over-HTTP fake."""
    from sync.sandbox.tally import main as tally_main
    sys.exit(tally_main(["--data", data, "--host", host, "--port", str(port)]))


@sandbox.command("demo-data")
@click.option("--out", default="./feesync-demo-data", type=click.Path(file_okay=False))
def sandbox_demo_data(out: str) -> None:
    """Write the bundled demo seeds (lms-seed.json, erpnext-data.json) to a folder."""
    from sync.demo_data import write_demo_files
    paths = write_demo_files(Path(out))
    for p in paths:
        console.print(str(p))


@cli.group()
def state() -> None:
    """State store utilities."""


@state.command("schema")
def state_schema() -> None:
    """Print the DDL of the state store (what state.db-schema holds)."""
    from sync.state import schema_ddl
    click.echo(schema_ddl(), nl=False)


@state.command("upgrade")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def state_upgrade(ctx: click.Context, as_json: bool) -> None:
    """Apply the state store's migrations (back it up first: feesync state backup FILE)."""
    from sync.state import Store
    settings = _settings(ctx.find_root(), secrets=False)
    before, after = Store.upgrade(settings.state_target())
    _emit({"from": before, "to": after}, as_json,
          lambda d: console.print(f"state store at revision {d['to']} (already current)" if d["from"] == d["to"]
                                  else f"state store at revision {d['to']} (was {d['from'] or 'new'})"))


@state.command("backup")
@click.argument("dest", type=click.Path(dir_okay=False))
@click.pass_context
def state_backup(ctx: click.Context, dest: str) -> None:
    """Take an online, consistent copy of the SQLite state store (the daemon may keep running)."""
    from sync.state import Store
    settings = _settings(ctx.find_root(), secrets=False)
    store = Store.open(settings.state_target(), create=False, any_version=True)   # also before an upgrade
    try:
        out = store.backup(dest)
    finally:
        store.close()
    console.print(f"backup written: {out}")


def _config_first(args: list[str]) -> list[str]:
    """`feesync conflicts list --config X` works like `feesync --config X conflicts list`: --config is an
    option of feesync itself, and people put it where they put every other option."""
    out, moved, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a == "--":
            out += args[i:]
            break
        if a == "--config" and i + 1 < len(args):
            moved += args[i:i + 2]
            i += 2
            continue
        if a.startswith("--config="):
            moved.append(a)
        else:
            out.append(a)
        i += 1
    return moved + out


def main() -> None:
    cli(args=_config_first(sys.argv[1:]), obj={})


if __name__ == "__main__":
    main()
