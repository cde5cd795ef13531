"""The `feesync` command line: parse, configure, call the engine. No sync logic lives here."""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from sync import logs
from sync.config import Settings, load_settings
from sync.errors import ConfigError, FeesyncError, StateError

console = Console(stderr=False, soft_wrap=False)
err_console = Console(stderr=True)

EXIT_OK, EXIT_CONFLICTS, EXIT_FAILURE = 0, 1, 2


def _emit(data: Any, as_json: bool, render: Any) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


def _settings(ctx: click.Context) -> Settings:
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load_settings(obj.get("config"))
        logs.configure(obj["settings"].log_format, obj["settings"].log_level)
    return obj["settings"]


def _fail(msg: str, code: int = EXIT_FAILURE) -> None:
    err_console.print(f"[red]error:[/red] {logs.redact(msg)}", highlight=False)
    sys.exit(code)


class _Group(click.Group):
    """Turns our own errors into one clear line and an exit code, never a traceback with inputs."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            err_console.print("[red]configuration problems:[/red]")
            for p in exc.problems:
                err_console.print(f"  - {logs.redact(p)}", highlight=False)
            sys.exit(EXIT_FAILURE)
        except StateError as exc:
            _fail(str(exc))
        except FeesyncError as exc:
            _fail(f"{type(exc).__name__}: {exc}")


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
    payload = {"results": [r.as_dict() for r in results], "lms_requests": dict(app.lms.requests)}
    if dry_run:
        payload["planned_writes"] = [w for r in results for w in r.planned]
    _emit(payload, as_json, lambda d: _render_runs(results, dry_run))
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
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
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
    _emit(payload, as_json, lambda d: _render_runs([result], dry_run))
    sys.exit(EXIT_FAILURE if result.status in ("failed", "stopped", "deferred")
             else EXIT_CONFLICTS if result.conflicts else EXIT_OK)


def _render_runs(results: list[Any], dry_run: bool) -> None:
    for r in results:
        console.print(f"[bold]{r.source}[/bold] run {r.run_id} ({r.mode}): {r.status}"
                      + (f" - {r.error}" if r.error else ""), highlight=False)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items())) or "nothing new"
        console.print(f"  {counts}", highlight=False)
        if r.skipped:
            console.print("  skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(r.skipped.items())), highlight=False)
        if r.conflicts:
            console.print("  conflicts: " + ", ".join(f"{k} {v}" for k, v in sorted(r.conflicts.items())),
                          highlight=False)
        if dry_run and r.planned:
            t = Table("doc", "op", "target", "key", "body", title="writes a real run would make")
            for w in r.planned:
                t.add_row(w["doc_id"], w["op"], f"{w['method']} {w['path']}", w["key"],
                          json.dumps(w["body"], sort_keys=True))
            console.print(t)


# --- status and conflicts ------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Per source: cursor, last run, document counts, open conflicts."""
    from sync import ops
    from sync.state import Store
    settings = _settings(ctx)
    store = Store.open(settings.state_path, create=False)
    try:
        data = ops.status(store, list(settings.sources))
    finally:
        store.close()

    def render(d: dict[str, Any]) -> None:
        t = Table("source", "cursor", "last run", "status", "pushed", "skipped", "conflict", "pending", "open conflicts")
        for s in d["sources"]:
            last = s["last_run"] or {}
            docs = s["documents"]
            t.add_row(s["source"], (s["cursor"] or {}).get("changed_at", "-"), last.get("finished_at") or "-",
                      last.get("status", "-"), str(docs.get("pushed", 0)), str(docs.get("skipped", 0)),
                      str(docs.get("conflict", 0) + docs.get("held", 0)), str(docs.get("pending", 0)),
                      str(s["open_conflicts"]))
        console.print(t)
    _emit(data, as_json, render)


@cli.group()
def conflicts() -> None:
    """Review and resolve conflicts."""


def _store(ctx: click.Context) -> Any:
    from sync.state import Store
    return Store.open(_settings(ctx.find_root()).state_path, create=False)


@conflicts.command("list")
@click.option("--status", "status_", default="open", type=click.Choice(["open", "resolved", "ignored", "all"]))
@click.option("--kind", default=None)
@click.option("--source", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def conflicts_list(ctx: click.Context, status_: str, kind: str | None, source: str | None, as_json: bool) -> None:
    from sync import ops
    store = _store(ctx)
    try:
        rows = ops.list_conflicts(store, status=status_, kind=kind, source=source)
    finally:
        store.close()

    def render(data: dict[str, Any]) -> None:
        t = Table("id", "source", "document", "kind", "amount", "age", "detail")
        for c in data["conflicts"]:
            t.add_row(str(c["id"]), c["source"], c["doc_id"], c["kind"],
                      f"{c['amount'] or ''} {c['currency'] or ''}".strip(), c["age"], c["detail"][:70])
        console.print(t)
        console.print(f"{len(data['conflicts'])} conflict(s); by kind: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(data["by_kind"].items())), highlight=False)
    _emit(ops.conflicts_payload(rows), as_json, render)


@conflicts.command("show")
@click.argument("conflict_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def conflicts_show(ctx: click.Context, conflict_id: int, as_json: bool) -> None:
    from sync import ops
    store = _store(ctx)
    try:
        data = ops.show_conflict(store, conflict_id)
    finally:
        store.close()
    if data is None:
        _fail(f"no conflict {conflict_id}")

    def render(d: dict[str, Any]) -> None:
        for k in ("id", "status", "kind", "source", "doc_id", "amount", "currency", "customer", "lms_receipt",
                  "detail", "next_step"):
            console.print(f"[bold]{k:>12}[/bold]  {d.get(k) if d.get(k) is not None else '-'}", highlight=False)
        for label in ("request", "response"):
            if d.get(label):
                console.print(f"[bold]{label:>12}[/bold]  {json.dumps(d[label], default=str)}", highlight=False)
        for h in d.get("history", []):
            console.print(f"{'':>14}{h['at']}  {h['action']} by {h['actor']}  {h['note'] or ''}", highlight=False)
    _emit(data, as_json, render)


def _set_status(ctx: click.Context, ids: tuple[int, ...], status_: str, note: str, actor: str) -> None:
    from sync import ops
    store = _store(ctx)
    try:
        changed = ops.set_status(store, list(ids), status_, actor=actor, note=note)
    finally:
        store.close()
    console.print(f"{changed} conflict(s) marked {status_}")


@conflicts.command("resolve")
@click.argument("ids", type=int, nargs=-1, required=True)
@click.option("--note", required=True, help="What was done (kept in the conflict's history).")
@click.option("--by", "actor", default=lambda: __import__("getpass").getuser())
@click.pass_context
def conflicts_resolve(ctx: click.Context, ids: tuple[int, ...], note: str, actor: str) -> None:
    """Mark conflicts resolved by a person (e.g. after reversing an LMS receipt by hand)."""
    _set_status(ctx, ids, "resolved", note, actor)


@conflicts.command("ignore")
@click.argument("ids", type=int, nargs=-1, required=True)
@click.option("--note", required=True)
@click.option("--by", "actor", default=lambda: __import__("getpass").getuser())
@click.pass_context
def conflicts_ignore(ctx: click.Context, ids: tuple[int, ...], note: str, actor: str) -> None:
    """Mark conflicts ignored (nothing will be written for them)."""
    _set_status(ctx, ids, "ignored", note, actor)


@conflicts.command("retry")
@click.argument("ids", type=int, nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def conflicts_retry(ctx: click.Context, ids: tuple[int, ...], as_json: bool) -> None:
    """Re-map and re-send the documents behind these conflicts (new key revision where rule 12 allows)."""
    from sync import ops
    from sync.app import build_app
    app = build_app(_settings(ctx.find_root()))
    try:
        outcomes = ops.retry_conflicts(app, list(ids))
    finally:
        app.close()
    _emit({"retried": outcomes}, as_json,
          lambda d: [console.print(f"conflict {o['id']} ({o['doc_id']}): {o['outcome']}", highlight=False)
                     for o in d["retried"]])


# --- check ---------------------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Validate the configuration, reach every endpoint and verify the LMS key's scopes. Exit 0 or 1."""
    from sync import ops
    obj = ctx.ensure_object(dict)
    try:
        settings = load_settings(obj.get("config"))
        logs.configure(settings.log_format, settings.log_level)
        problems = ops.check(settings)
    except ConfigError as exc:
        problems = exc.problems
    data = {"ok": not problems, "problems": [logs.redact(p) for p in problems]}

    def render(d: dict[str, Any]) -> None:
        if d["ok"]:
            console.print("[green]ok[/green]: configuration valid, LMS and every source reachable")
        else:
            console.print(f"[red]{len(d['problems'])} problem(s):[/red]")
            for p in d["problems"]:
                console.print(f"  - {p}", highlight=False)
    _emit(data, as_json, render)
    sys.exit(0 if not problems else 1)


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
                  f"({s['seconds']:.1f} s)", highlight=False)
    t = Table("what", "count")
    t.add_row("pushed (ERP receipts recorded in the LMS)", str(s["pushed"]))
    t.add_row("LMS payments written", str(s["lms_writes"]))
    t.add_row("unchanged (already in the ledger)", str(s["unchanged"]))
    for k, v in sorted(s["skipped"].items()):
        t.add_row(f"skipped: {k}", str(v))
    for k, v in sorted(s["conflicts"].items()):
        t.add_row(f"conflict: {k}", str(v))
    t.add_row("LMS requests sent", str(s["lms_requests"]))
    console.print(t)
    console.print(f"open conflicts: {s['open_conflicts']} - report: {s['report']}", highlight=False)
    console.print(f"state store: {s['state']}  (run `feesync demo` again: it pushes 0)", highlight=False)


@cli.group()
def sandbox() -> None:
    """Run a sandbox server in the foreground (for trials and dry runs)."""


@sandbox.command("lms")
@click.option("--seed", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=8765, type=int)
@click.option("--rate-limit", default=None, type=int, help="Requests per minute per key.")
def sandbox_lms(seed: str, host: str, port: int, rate_limit: int | None) -> None:
    """The Zenslearn LMS sandbox (lms-contract.md)."""
    from sync.sandbox.lms import serve_forever
    serve_forever(seed, host, port, rate_limit)


@sandbox.command("erpnext")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=8000, type=int)
def sandbox_erpnext(data: str, host: str, port: int) -> None:
    """The ERPNext 15 fake (erp-apis.md §1)."""
    from sync.sandbox.erpnext import serve_forever
    serve_forever(data, host, port)


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


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
