"""The status page: a small web server the daemon runs on a loopback address (`status_listen`).

Pages (server-rendered HTML, inline CSS, no script, no external asset):
  `/`                   sources (cursor, lag, last runs), open conflicts by kind, latest reconciliations
  `/conflicts`          open (or all) conflicts with filters: kind, source, status, student, age, sort
  `/conflicts/<id>`     one conflict: the ERP document, what was sent, what the LMS said, next step, history
  `/reconciliation`     the latest reconciliation of each source, every drift
  `/healthz`            200 while the scheduler runs and every source's last successful run is recent
                        (`sources.<name>.max_stale`; default 3 x interval, at least 10 min; 25 h for cron),
                        503 with the reasons otherwise
  `/metrics`            Prometheus text (sync/metrics.py)
  `/api/status`, `/api/conflicts[?filters]`, `/api/conflicts/<id>`, `/api/reconciliation`: the same as JSON

Read-only unless `status_admin_token` (or `status_admin_token_file`) is set. Then resolve, ignore
and retry work from a conflict's page, and only when every one of these holds:
  * the request is a POST (a GET on an action URL is 405);
  * the Host header names this server (DNS rebinding), and Origin (or, without it, Referer) is this
    server: a cross-site form post is refused;
  * the form carries the CSRF token of the visitor's session (an HMAC of the session id keyed by
    the admin token; the session cookie is HttpOnly and SameSite=Strict);
  * the session was unlocked with the admin token (the `token` field of the form or `/login`), or
    the request carries `Authorization: Bearer <admin token>` (for scripts; no cookie involved).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from sync import metrics, ops, report
from sync import reconcile as recon
from sync._web_html import attrs, esc, kind_badge, money_cell, page, status_span, table
from sync._web_util import parse_listen
from sync.health import _age as short_age   # seconds under two minutes: a limit can be that short
from sync.logs import get_logger, redact
from sync.state import runs
from sync.times import parse_duration, parse_iso, utcnow

__all__ = ["StatusServer", "health", "parse_listen", "stale_limit"]

log = get_logger(component="web")
COOKIE = "feesync_session"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 5000
MAX_BODY = 64 * 1024
LOGIN_FAILURES_PER_WINDOW, LOGIN_WINDOW = 20, 600.0
# ids are SQLite INTEGERs: more than 18 digits is no id (404, not an overflow and a 500)
_ACTION = re.compile(r"^/conflicts/(\d{1,18})/(resolve|ignore|retry)$")
_DETAIL = re.compile(r"^/conflicts/(\d{1,18})$")
_API_DETAIL = re.compile(r"^/api/conflicts/(\d{1,18})$")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# --- health -----------------------------------------------------------------------------------------
def stale_limit(src: Any) -> timedelta:
    if src.max_stale:
        return parse_duration(src.max_stale)
    if src.cron:
        return timedelta(hours=25)
    return max(timedelta(minutes=10), 3 * parse_duration(src.interval or "5m"))


def health(app: Any, *, scheduler_running: bool, started_at: datetime | None,
           now: datetime | None = None) -> dict[str, Any]:
    """{"ok", "reasons", "sources"}: the scheduler runs and every enabled source succeeded recently."""
    now = now or utcnow()
    reasons: list[str] = []
    if not scheduler_running:
        reasons.append("the scheduler is not running")
    detail: dict[str, Any] = {}
    from sqlalchemy import func, select
    with app.store.engine.connect() as c:
        last = dict(c.execute(select(runs.c.source, func.max(runs.c.finished_at)).where(
            runs.c.status.in_(("ok", "conflicts")), runs.c.mode == "live").group_by(runs.c.source)).all())
    for name, src in sorted(app.settings.sources.items()):
        if not src.enabled:
            continue
        limit = stale_limit(src)
        ok_at = parse_iso(last[name]) if last.get(name) else None
        age = (now - ok_at) if ok_at else None
        fresh = age is not None and age <= limit
        if ok_at is None and started_at is not None and now - started_at <= limit:
            fresh = True   # just started: the first run has its whole limit to succeed
        detail[name] = {"last_success": ok_at.isoformat() if ok_at else None,
                        "age_seconds": int(age.total_seconds()) if age else None,
                        "max_stale_seconds": int(limit.total_seconds()), "ok": fresh}
        if not fresh:
            if ok_at is None:
                reasons.append(f"source {name}: no successful run (limit {short_age(limit.total_seconds())})")
            else:
                reasons.append(f"source {name}: last successful run {short_age(age.total_seconds())} ago, "
                               f"older than its limit {short_age(limit.total_seconds())}")
    return {"ok": not reasons, "reasons": reasons, "sources": detail, "checked_at": now.isoformat()}


# --- sessions ---------------------------------------------------------------------------------------
class _Sessions:
    def __init__(self, key: bytes) -> None:
        self._key = key
        self._lock = threading.Lock()
        self._d: dict[str, dict[str, Any]] = {}
        self._failures: list[float] = []

    def get(self, sid: str | None) -> dict[str, Any] | None:
        if not sid:
            return None
        with self._lock:
            s = self._d.get(sid)
            if s is None or s["expires"] < time.monotonic():
                self._d.pop(sid, None)
                return None
            return s

    def new(self) -> str:
        sid = secrets.token_urlsafe(24)
        with self._lock:
            if len(self._d) >= MAX_SESSIONS:
                for old in sorted(self._d, key=lambda k: self._d[k]["expires"])[: MAX_SESSIONS // 10]:
                    del self._d[old]
            self._d[sid] = {"admin": False, "expires": time.monotonic() + SESSION_SECONDS, "flash": None}
        return sid

    def csrf(self, sid: str) -> str:
        return hmac.new(self._key, b"csrf:" + sid.encode(), hashlib.sha256).hexdigest()

    def login_allowed(self) -> bool:
        now = time.monotonic()
        with self._lock:
            self._failures = [t for t in self._failures if now - t < LOGIN_WINDOW]
            return len(self._failures) < LOGIN_FAILURES_PER_WINDOW

    def failed(self) -> None:
        with self._lock:
            self._failures = self._failures[-LOGIN_FAILURES_PER_WINDOW * 4:] + [time.monotonic()]   # bounded


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    status: StatusServer


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class StatusServer:
    """The status page over one App; `scheduler()` -> (running, started_at) when served by the daemon."""

    def __init__(self, app: Any, *, listen: str, admin_token: str | None = None,
                 scheduler: Callable[[], tuple[bool, datetime | None]] | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.app = app
        self.host, port = parse_listen(listen)
        self.admin_token = admin_token or None
        self.scheduler = scheduler
        self.clock = clock
        key = hashlib.sha256(b"feesync-csrf:" + (self.admin_token or secrets.token_hex(16)).encode()).digest()
        self.sessions = _Sessions(key)
        bind = "127.0.0.1" if self.host == "localhost" else self.host
        self.httpd = (_HTTPServer6 if ":" in bind else _HTTPServer)((bind, port), _Handler)
        self.httpd.status = self
        self.port = self.httpd.server_address[1]
        self.allowed_hosts = {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", "[::1]")}
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> StatusServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="feesync-status", daemon=True)
        self._thread.start()
        log.info("status.listening", url=self.url, admin=self.admin_token is not None)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- data --------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        running, started = self.scheduler() if self.scheduler else (False, None)
        return health(self.app, scheduler_running=running, started_at=started, now=self.clock())

    def metrics_text(self) -> bytes:
        running = (lambda: self.scheduler()[0]) if self.scheduler else None
        return metrics.render(metrics.app_collector(self.app, scheduler_running=running, clock=self.clock))

    @property
    def tz(self) -> str:
        return self.app.settings.lms.time_zone


# --- request handling ---------------------------------------------------------------------------------
class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "feesync-status"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("status.request", line=redact(format % args))

    @property
    def st(self) -> StatusServer:
        return self.server.status

    # --- plumbing ------------------------------------------------------------------------------------
    def _cookie_sid(self) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and value:
                return value
        return None

    def _send(self, status: int, body: bytes | str, ctype: str = "text/html; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data, indent=2, default=str), "application/json")

    def _html(self, status: int, title: str, body: str, session: tuple[str, dict[str, Any]] | None = None,
              set_cookie: str | None = None) -> None:
        who = ""
        if self.st.admin_token:
            if session and session[1]["admin"]:
                who = (f"admin <form class=\"inline\" method=\"post\" action=\"/logout\">"
                       f"<input type=\"hidden\" name=\"csrf\" value=\"{esc(self.st.sessions.csrf(session[0]))}\">"
                       f"<button class=\"secondary\" type=\"submit\">log out</button></form>")
            else:
                who = "read-only · <a href=\"/login\">log in</a>"
        else:
            who = "read-only (no admin token configured)"
        nav = ("<nav><a href=\"/\">Overview</a> · <a href=\"/conflicts\">Conflicts</a> · "
               "<a href=\"/reconciliation\">Reconciliation</a> · <a href=\"/healthz\">Health</a> · "
               "<a href=\"/metrics\">Metrics</a></nav>")
        headers = {"Set-Cookie": set_cookie} if set_cookie else None
        self._send(status, page(f"feesync · {title}", body, nav=nav, who=who), headers=headers)

    def _session(self) -> tuple[tuple[str, dict[str, Any]] | None, str | None]:
        """The visitor's session (created for HTML pages when an admin token is configured)."""
        if not self.st.admin_token:
            return None, None
        sid = self._cookie_sid()
        s = self.st.sessions.get(sid)
        if s is not None and sid is not None:
            return (sid, s), None
        sid = self.st.sessions.new()
        cookie = f"{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict"
        return (sid, self.st.sessions.get(sid) or {}), cookie

    def _check_host(self) -> None:
        """Only loopback names (any port: an SSH tunnel may use another), never a foreign domain that
        resolves to 127.0.0.1 (DNS rebinding)."""
        host = self.headers.get("Host") or ""
        if host in self.st.allowed_hosts:
            return
        try:
            parse_listen(host)
        except ValueError:
            raise _Refused(421, "unexpected Host header: use the address the status page listens on") from None

    def _query(self) -> dict[str, str]:
        q = parse_qs(urlsplit(self.path).query, keep_blank_values=False)
        return {k: v[-1] for k, v in q.items()}

    # --- GET --------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        try:
            self._check_host()
            if _ACTION.match(path) or path in ("/logout",):
                raise _Refused(405, "use POST")
            if path == "/healthz":
                h = self.st.health()
                return self._json(200 if h["ok"] else 503, {"status": "ok" if h["ok"] else "unhealthy", **h})
            if path == "/metrics":
                return self._send(200, self.st.metrics_text(), metrics.CONTENT_TYPE_LATEST)
            if path.startswith("/api/"):
                return self._api(path)
            session, cookie = self._session()
            if path == "/":
                return self._html(200, "overview", self._overview(), session, cookie)
            if path == "/conflicts":
                return self._html(200, "conflicts", self._list(), session, cookie)
            m = _DETAIL.match(path)
            if m:
                body = self._detail(int(m.group(1)), session)
                if body is None:
                    raise _Refused(404, f"no conflict {m.group(1)}")
                return self._html(200, f"conflict {m.group(1)}", body, session, cookie)
            if path == "/reconciliation":
                return self._html(200, "reconciliation", report.reconciliations_html(
                    recon.latest(self.st.app.store), self.st.tz), session, cookie)
            if path == "/login":
                return self._html(200, "log in", self._login_form(session), session, cookie)
            raise _Refused(404, "not found")
        except _Refused as exc:
            self._refused(exc)
        except Exception as exc:  # noqa: BLE001 - a page error must not kill the server thread quietly
            log.error("status.error", path=path, error=redact(f"{type(exc).__name__}: {exc}"))
            self._send(500, "internal error; see the daemon log", "text/plain; charset=utf-8")

    def _refused(self, exc: _Refused) -> None:
        if urlsplit(self.path).path.startswith("/api/") or "application/json" in (self.headers.get("Accept") or ""):
            return self._json(exc.status, {"error": exc.message})
        m = _ACTION.match(urlsplit(self.path).path)
        back = f"<a href=\"/conflicts/{m.group(1)}\">back to conflict {m.group(1)}</a> · " if m else ""
        body = (f"<div class=\"notice bad\" id=\"refused\"{attrs(data_status=exc.status)}><b>{exc.status}</b>: "
                f"{esc(exc.message)}</div><p>{back}<a href=\"/conflicts\">conflicts</a></p>")
        self._html(exc.status, "refused", body)

    def _api(self, path: str) -> None:
        app = self.st.app
        if path == "/api/status":
            return self._json(200, ops.status(app.store, list(app.settings.sources), settings=app.settings,
                                              now=self.st.clock()))
        if path == "/api/conflicts":
            rows = ops.list_conflicts(app.store, **self._filters()[0], now=self.st.clock())
            return self._json(200, ops.conflicts_payload(rows, self.st.clock()))
        m = _API_DETAIL.match(path)
        if m:
            row = ops.show_conflict(app.store, int(m.group(1)), settings=app.settings,
                                     command=ops.command_prefix(app.settings, absolute=True))
            if row is None:
                raise _Refused(404, "no such conflict")
            return self._json(200, row)
        if path == "/api/reconciliation":
            return self._json(200, {"reconciliations": recon.latest(app.store)})
        raise _Refused(404, "not found")

    def _filters(self) -> tuple[dict[str, Any], list[str]]:
        q = self._query()
        problems = []
        f: dict[str, Any] = {"status": q.get("status", "open"), "kind": q.get("kind") or None,
                             "source": q.get("source") or None, "student": q.get("student") or None,
                             "sort": q.get("sort", "id")}
        if f["status"] not in ops.STATUSES:
            problems.append(f"status {f['status']!r} is not one of {', '.join(ops.STATUSES)}")
            f["status"] = "open"
        if f["sort"] not in ops.SORTS:
            problems.append(f"sort {f['sort']!r} is not one of {', '.join(ops.SORTS)}")
            f["sort"] = "id"
        for name in ("older_than", "newer_than"):
            if q.get(name):
                try:
                    f[name] = parse_duration(q[name])
                except Exception:  # noqa: BLE001 - ConfigError: shown to the user
                    problems.append(f"{name.replace('_', ' ')} {q[name]!r} is not a duration (e.g. 2d, 12h)")
        return f, problems

    # --- pages ------------------------------------------------------------------------------------------
    def _overview(self) -> str:
        app, now = self.st.app, self.st.clock()
        st = ops.status(app.store, list(app.settings.sources), settings=app.settings, now=now)
        rows = ops.list_conflicts(app.store, status="open", now=now)
        t = ops.totals(rows, now)
        h = self.st.health()
        money = "".join(f"<li class=\"money\"{attrs(data_currency=c, data_value=v)}>{esc(ops.money_display(v, c))}</li>"
                        for c, v in t["money_at_stake"].items()) or "<li>-</li>"
        parts = [
            f"<div class=\"notice {'ok' if h['ok'] else 'bad'}\" id=\"health\">"
            f"{'Healthy' if h['ok'] else 'Unhealthy: ' + esc('; '.join(h['reasons']))}</div>",
            "<div class=\"cards\">",
            f"<div class=\"card\"><div class=\"label\">Open conflicts</div><div class=\"value\" id=\"total-open\""
            f"{attrs(data_value=t['total'])}><a href=\"/conflicts\">{t['total']}</a></div></div>",
            f"<div class=\"card\"><div class=\"label\">Money at stake</div><ul class=\"value\">{money}</ul></div>",
            "</div>",
            "<h2>Sources</h2>", report.sources_table(st["sources"], self.st.tz),
            "<h2>Last runs</h2>", self._runs_table(st["sources"]),
            "<h2>Open conflicts by kind</h2>",
            table(["kind", ("count", "num"), ("amount", "num"), "what to do"],
                  (f"<tr{attrs(data_kind=k)}><td><a href=\"/conflicts?{esc(urlencode({'kind': k}))}\">{kind_badge(k)}</a></td>"
                   f"<td class=\"num\">{n}</td>{money_cell(t['amount_by_kind'].get(k))}"
                   f"<td class=\"next\">{esc(ops.NEXT_STEPS.get(k, ops.DEFAULT_NEXT_STEP))}</td></tr>"
                   for k, n in t["by_kind"].items()), id="by-kind", empty="No open conflicts."),
            "<h2>Reconciliation</h2>", self._recon_summary(),
        ]
        return "\n".join(parts)

    def _runs_table(self, sources: list[dict[str, Any]]) -> str:
        rows = []
        for s in sources:
            for r in s["last_runs"]:
                counts = r["counts"] or {}
                took = "-" if r["seconds"] is None else f"{r['seconds']:.1f} s"
                rows.append(f"<tr><td>{esc(s['source'])}</td><td>{esc(r['mode'])}</td>"
                            f"<td>{esc(report.local_time(r['started_at'], self.st.tz))}</td>"
                            f"<td class=\"num\">{esc(took)}</td>"
                            f"<td>{esc(r['status'])}</td><td class=\"num\">{counts.get('pushed', 0)}</td>"
                            f"<td class=\"num\">{sum((counts.get('conflicts') or {}).values())}</td>"
                            f"<td>{esc(r['error'] or '')}</td></tr>")
        return table(["source", "mode", "started", ("took", "num"), "status", ("pushed", "num"),
                      ("conflicts", "num"), "error"], rows, id="runs", empty="No run yet.")

    def _recon_summary(self) -> str:
        results = recon.latest(self.st.app.store)
        if not results:
            return "<p class=\"muted\">No reconciliation yet (<code>feesync reconcile --source NAME</code>).</p>"
        return table(["source", "finished", ("missing in LMS", "num"), ("not in ERP", "num"),
                      ("amount mismatch", "num"), ("unexplained", "num")],
                     (f"<tr{attrs(data_reconciliation=r['source'])}><td><a href=\"/reconciliation\">{esc(r['source'])}</a></td>"
                      f"<td>{esc(report.local_time(r['finished_at'], self.st.tz))}</td>"
                      f"<td class=\"num\">{r['counts']['missing_in_lms']}</td><td class=\"num\">{r['counts']['not_in_erp']}</td>"
                      f"<td class=\"num\">{r['counts']['amount_mismatch']}</td><td class=\"num\">{r['unexplained']}</td></tr>"
                      for r in results), id="reconciliations")

    def _list(self) -> str:
        app, now = self.st.app, self.st.clock()
        f, problems = self._filters()
        rows = ops.list_conflicts(app.store, **f, now=now)
        t = ops.totals(rows, now)
        q = self._query()
        kinds = sorted(set(ops.NEXT_STEPS) | set(t["by_kind"]))
        sources = sorted(set(app.settings.sources) | set(t["by_source"]))

        def select_(name: str, options: list[str], current: str | None, blank: str | None) -> str:
            opts = ([f"<option value=\"\">{esc(blank)}</option>"] if blank is not None else []) + [
                f"<option value=\"{esc(o)}\"{' selected' if o == current else ''}>{esc(o)}</option>" for o in options]
            return f"<select name=\"{name}\" id=\"f-{name}\">{''.join(opts)}</select>"
        form = (
            "<form class=\"filters\" method=\"get\" action=\"/conflicts\">"
            f"<label>status {select_('status', list(ops.STATUSES), f['status'], None)}</label>"
            f"<label>kind {select_('kind', kinds, f['kind'], 'any kind')}</label>"
            f"<label>source {select_('source', sources, f['source'], 'any source')}</label>"
            f"<label>student / customer <input name=\"student\" id=\"f-student\" value=\"{esc(q.get('student', ''))}\" "
            "placeholder=\"name or LMS id\"></label>"
            f"<label>older than <input name=\"older_than\" size=\"6\" value=\"{esc(q.get('older_than', ''))}\" placeholder=\"2d\"></label>"
            f"<label>newer than <input name=\"newer_than\" size=\"6\" value=\"{esc(q.get('newer_than', ''))}\" placeholder=\"12h\"></label>"
            f"<label>sort {select_('sort', list(ops.SORTS), f['sort'], None)}</label>"
            "<button type=\"submit\" id=\"apply-filters\">apply</button> <a href=\"/conflicts\">clear</a></form>")
        notices = "".join(f"<div class=\"notice bad\">{esc(p)}</div>" for p in problems)
        shown = rows[:500]
        body = table(["#", "status", "source", "document", "customer", "kind", ("amount", "num"), ("age", "num"),
                      "detail"],
                     (f"<tr{attrs(data_id=r['id'], data_kind=r['kind'])}><td><a class=\"open-conflict\" href=\"/conflicts/{r['id']}\">"
                      f"#{r['id']}</a></td><td>{status_span(r['status'])}</td><td>{esc(r['source'])}</td>"
                      f"<td><a href=\"/conflicts/{r['id']}\">{esc(r['doc_id'])}</a></td><td>{esc(r['customer'])}</td>"
                      f"<td>{kind_badge(r['kind'])}</td>"
                      f"<td class=\"num\">{esc(ops.money_display(r['amount'], r['currency']))}</td>"
                      f"<td class=\"num\">{esc(r['age'])}</td><td>{esc(r['detail'][:140])}</td></tr>" for r in shown),
                     id="conflicts", empty="No conflict matches these filters.")
        money = ", ".join(ops.money_display(v, c) for c, v in t["money_at_stake"].items()) or "-"
        more = f" (showing the first {len(shown)})" if len(rows) > len(shown) else ""
        return (form + notices + f"<p id=\"list-summary\"{attrs(data_count=t['total'])}><b>{t['total']}</b> "
                f"conflict(s){esc(more)}; money at stake: {esc(money)}.</p>" + body)

    def _detail(self, cid: int, session: tuple[str, dict[str, Any]] | None) -> str | None:
        app = self.st.app
        row = ops.show_conflict(app.store, cid, settings=app.settings,
                                command=ops.command_prefix(app.settings, absolute=True))
        if row is None:
            return None
        tz = self.st.tz
        flash = ""
        if session and session[1].get("flash"):
            kind, text = session[1]["flash"]
            session[1]["flash"] = None
            flash = f"<div class=\"notice {esc(kind)}\" id=\"flash\">{esc(text)}</div>"
        kv = [("status", status_span(row["status"])), ("kind", kind_badge(row["kind"])),
              ("source", esc(row["source"])), ("ERP document", esc(row["doc_id"])),
              ("customer", esc(row["customer"] or "-")),
              ("amount", esc(ops.money_display(row["amount"], row["currency"]))),
              ("LMS receipt", esc(row["lms_receipt"] or "-")),
              ("opened", f"{esc(report.local_time(row['created_at'], tz))} ({esc(row['age'])} ago)"),
              ("attempts", f"{row['attempts']} (automatic retries: {row['auto_retries']})"),
              ("detail", esc(row["detail"]))]
        if row["status"] != "open":
            kv.append(("closed", f"{esc(report.local_time(row['resolved_at'], tz))} by {esc(row['resolved_by'])}: "
                                 f"{esc(row['note'] or '')}"))
        parts = [flash,
                 f"<dl class=\"kv\" id=\"conflict\"{attrs(data_id=cid, data_status=row['status'])}>"
                 + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in kv) + "</dl>",
                 "<h2>What to do next</h2>",
                 f"<div class=\"notice{' ok' if row['status'] != 'open' else ''}\" id=\"next-step\">{esc(row['next_step'])}"
                 + "".join(f"<br><code>{esc(c)}</code>" for c in row["commands"]) + "</div>",
                 self._actions(row, session),
                 "<h2>The ERP document</h2>", _document(row["document"]),
                 "<h2>What was sent to the LMS, and its answer</h2>", self._writes(row)]
        if row["response"] and not any(w["lms_answer"] is not None for w in row["writes"]):
            parts += ["<h2>What the LMS said</h2>", _pre(row["response"])]
        parts += [
                 "<h2>History</h2>",
                 table(["when", "action", "by", "note"],
                       (f"<tr><td>{esc(report.local_time(h['at'], tz))}</td><td>{esc(h['action'])}</td>"
                        f"<td>{esc(h['actor'])}</td><td>{esc(h['note'] or '')}</td></tr>" for h in row["history"]),
                       id="history")]
        return "\n".join(parts)

    def _writes(self, row: dict[str, Any]) -> str:
        if not row["writes"]:
            if row.get("request") and row["request"] != row.get("document"):
                return "<p class=\"muted\">The request as mapped (not sent):</p>" + _pre(row["request"])
            return "<p class=\"muted\" id=\"nothing-sent\">Nothing was sent: it stopped before sending (mapping).</p>"
        out = []
        for w in row["writes"]:
            out.append(f"<h3>{esc(w['method'])} {esc(w['path'])} · key <code>{esc(w['key'])}</code> · "
                       f"{esc(w['status'])} · {w['attempts']} attempt(s)</h3>")
            out.append(_pre(w["body"]))
            if w["lms_answer"] is not None:
                out.append("<p class=\"muted\">LMS answer:</p>" + _pre(w["lms_answer"]))
            elif w["last_error"]:
                out.append(f"<p class=\"muted\">Last error: {esc(w['last_error'])}</p>")
        return "\n".join(out)

    def _actions(self, row: dict[str, Any], session: tuple[str, dict[str, Any]] | None) -> str:
        if not self.st.admin_token:
            return ("<p class=\"muted\" id=\"read-only\">Read-only: set <code>status_admin_token</code> to resolve, "
                    "ignore or retry from this page (or use <code>feesync conflicts</code>).</p>")
        if row["status"] != "open" or session is None:
            return ""
        sid, s = session
        csrf = f"<input type=\"hidden\" name=\"csrf\" value=\"{esc(self.st.sessions.csrf(sid))}\">"
        token = "" if s["admin"] else ("<label>admin token <input type=\"password\" name=\"token\" "
                                       "autocomplete=\"current-password\"></label>")
        by = "<label>your name <input name=\"by\" maxlength=\"40\"></label>"
        cid = row["id"]
        forms = [
            f"<form class=\"action\" id=\"resolve-form\" method=\"post\" action=\"/conflicts/{cid}/resolve\">"
            f"<b>Resolve</b><span class=\"muted\">The cause was fixed (e.g. the LMS corrected by hand).</span>"
            f"<label>note (required) <textarea name=\"note\" rows=\"2\" cols=\"34\" required></textarea></label>"
            f"{by}{token}{csrf}<button type=\"submit\" id=\"resolve-button\">resolve</button></form>",
            f"<form class=\"action\" id=\"ignore-form\" method=\"post\" action=\"/conflicts/{cid}/ignore\">"
            f"<b>Ignore</b><span class=\"muted\">Nothing will be written for it.</span>"
            f"<label>note (required) <textarea name=\"note\" rows=\"2\" cols=\"34\" required></textarea></label>"
            f"{by}{token}{csrf}<button type=\"submit\" class=\"secondary\">ignore</button></form>"]
        if row["retryable"]:
            forms.append(
                f"<form class=\"action\" id=\"retry-form\" method=\"post\" action=\"/conflicts/{cid}/retry\">"
                f"<b>Retry</b><span class=\"muted\">Map and send it again now.</span>"
                f"{by}{token}{csrf}<button type=\"submit\">retry</button></form>")
        return "<h2>Actions</h2><div class=\"actions noprint\">" + "".join(forms) + "</div>"

    def _login_form(self, session: tuple[str, dict[str, Any]] | None) -> str:
        if not self.st.admin_token:
            return "<p class=\"muted\">No admin token is configured: the page is read-only.</p>"
        if session is None:
            return ""
        if session[1]["admin"]:
            return "<div class=\"notice ok\">You are logged in as admin.</div>"
        csrf = esc(self.st.sessions.csrf(session[0]))
        nxt = esc(self._safe_next(self._query().get("next")))
        return ("<form class=\"action\" method=\"post\" action=\"/login\" id=\"login-form\">"
                "<b>Admin log in</b><label>admin token <input type=\"password\" name=\"token\" "
                f"autocomplete=\"current-password\" required></label><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">"
                f"<input type=\"hidden\" name=\"next\" value=\"{nxt}\"><button type=\"submit\">log in</button></form>")

    @staticmethod
    def _safe_next(value: str | None) -> str:
        r"""A local path only: no other host (`//x`, `/\x`), and no control character or space, which could
        split the Location header or be dropped by a browser (`/\t/evil` becomes `//evil`)."""
        if (value and value.startswith("/") and not value.startswith("//") and "\\" not in value
                and all(0x20 < ord(ch) < 0x7F for ch in value)):
            return value
        return "/"

    # --- POST ---------------------------------------------------------------------------------------------
    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            self._check_host()
            form = self._form()
            m = _ACTION.match(path)
            if path not in ("/login", "/logout") and not m:
                raise _Refused(404 if not path.startswith("/conflicts/") else 405, "not found")
            if not self.st.admin_token:
                raise _Refused(403, "the status page is read-only: no admin token is configured")
            bearer = self._bearer_ok()
            self._check_origin(bearer)
            session = None if bearer else self._post_session(form)
            if path == "/logout":
                if session:
                    session[1]["admin"] = False
                return self._redirect("/")
            if path == "/login":
                self._unlock(session, form, required=True)
                return self._redirect(self._safe_next(form.get("next")))
            if not bearer:
                self._unlock(session, form, required=True)
            assert m is not None
            self._act(int(m.group(1)), m.group(2), form, session, bearer)
        except _Refused as exc:
            log.warning("status.refused", path=path, status=exc.status, reason=exc.message)
            self._refused(exc)
        except Exception as exc:  # noqa: BLE001
            log.error("status.error", path=path, error=redact(f"{type(exc).__name__}: {exc}"))
            self._send(500, "internal error; see the daemon log", "text/plain; charset=utf-8")

    def _form(self) -> dict[str, str]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _Refused(400, "bad Content-Length") from None
        if length > MAX_BODY:
            raise _Refused(413, "request body too large")
        raw = self.rfile.read(length) if length else b""
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if raw and ctype != "application/x-www-form-urlencoded":
            raise _Refused(415, "send a form (application/x-www-form-urlencoded)")
        q = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[-1] for k, v in q.items()}

    def _bearer_ok(self) -> bool:
        auth = self.headers.get("Authorization") or ""
        if not auth.lower().startswith("bearer "):
            return False
        if not self.st.sessions.login_allowed():   # Bearer guesses count and are throttled like form logins
            raise _Refused(429, "too many wrong tokens; wait a few minutes")
        if not hmac.compare_digest(auth[7:].strip().encode(), (self.st.admin_token or "").encode()):
            self.st.sessions.failed()
            raise _Refused(403, "wrong admin token")
        return True

    def _check_origin(self, bearer: bool) -> None:
        expected = f"http://{self.headers.get('Host')}"
        origin = self.headers.get("Origin")
        if origin is not None:
            if origin != expected:
                raise _Refused(403, f"cross-site request refused (Origin {origin[:80]})")
            return
        referer = self.headers.get("Referer")
        if referer:
            parts = urlsplit(referer)
            if f"{parts.scheme}://{parts.netloc}" != expected:
                raise _Refused(403, "cross-site request refused (Referer)")
            return
        if not bearer:
            raise _Refused(403, "request without Origin or Referer refused")

    def _post_session(self, form: dict[str, str]) -> tuple[str, dict[str, Any]]:
        sid = self._cookie_sid()
        s = self.st.sessions.get(sid)
        if s is None or sid is None:
            raise _Refused(403, "no session (cookies off, or it expired): reload the page and try again")
        if not hmac.compare_digest((form.get("csrf") or "").encode(), self.st.sessions.csrf(sid).encode()):
            raise _Refused(403, "missing or invalid CSRF token: reload the page and try again")
        return sid, s

    def _unlock(self, session: tuple[str, dict[str, Any]] | None, form: dict[str, str], *, required: bool) -> None:
        assert session is not None
        if session[1]["admin"]:
            return
        token = form.get("token") or ""
        if not token:
            raise _Refused(403, "admin token required")
        if not self.st.sessions.login_allowed():
            raise _Refused(429, "too many wrong tokens; wait a few minutes")
        if not hmac.compare_digest(token.encode(), (self.st.admin_token or "").encode()):
            self.st.sessions.failed()
            raise _Refused(403, "wrong admin token")
        session[1]["admin"] = True

    def _act(self, cid: int, action: str, form: dict[str, str], session: tuple[str, dict[str, Any]] | None,
             bearer: bool) -> None:
        app = self.st.app
        by = re.sub(r"[^\w .@-]", "", form.get("by") or "")[:40].strip() or "admin"
        actor = f"web:{by}"
        if action in ("resolve", "ignore"):
            status = "resolved" if action == "resolve" else "ignored"
            try:
                outcome = ops.change_status(app.store, [cid], status, actor=actor, note=form.get("note") or "")[0]
            except ValueError as exc:
                raise _Refused(400, str(exc)) from None
            if outcome["outcome"] == "no such conflict":
                raise _Refused(404, f"no conflict {cid}")
            text, ok = f"conflict {cid}: {outcome['outcome']}", outcome["changed"]
        else:
            res = ops.retry_conflicts(app, [cid], actor=actor)[0]
            text, ok = f"conflict {cid}: retried: {res['outcome']} (now {res['status']})", res["status"] == "resolved"
        log.info("status.action", conflict=cid, action=action, actor=actor, outcome=text)
        if bearer:
            return self._json(200, {"id": cid, "action": action, "outcome": text})
        assert session is not None
        session[1]["flash"] = ("ok" if ok else "", text)
        self._redirect(f"/conflicts/{cid}")

    def _redirect(self, location: str) -> None:
        self._send(303, "", headers={"Location": location})


def _document(doc: dict[str, Any] | None) -> str:
    if not doc:
        return "<p class=\"muted\">The ledger holds no copy of the document.</p>"
    keys = ("doc_id", "customer", "customer_email", "amount", "currency", "posting_date", "method",
            "reference_number", "amended_from", "unallocated")
    items = [(k, ops.money_display(doc[k]) if k in ("amount", "unallocated") else doc[k])
             for k in keys if doc.get(k) not in (None, "")]
    for r in doc.get("references") or []:
        items.append(("reference", f"{r.get('invoice_id') or '-'}: {ops.money_display(r.get('amount'))}"
                                   f"{' · ' + r['installment_term'] if r.get('installment_term') else ''}"
                                   f"{' · LMS plan ' + str(r['lms_plan_id']) if r.get('lms_plan_id') else ''}"))
    return (f"<dl class=\"kv\" id=\"document\">{''.join(f'<dt>{esc(k)}</dt><dd>{esc(v)}</dd>' for k, v in items)}</dl>"
            f"<details class=\"noprint\"><summary>as stored in the ledger (JSON)</summary>{_pre(doc)}</details>")


def _pre(data: Any) -> str:
    if data is None:
        return "<p class=\"muted\">-</p>"
    return f"<pre>{esc(json.dumps(data, indent=2, default=str, ensure_ascii=False))}</pre>"
