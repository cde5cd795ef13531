"""`feesync check --liveness`: a cheap probe that the daemon on this host is alive and healthy.

For container health checks (deploy/Dockerfile `HEALTHCHECK`) and any other supervisor. Two ways,
chosen by the configuration:

* `status_listen` set (and not port 0): GET the daemon's own `/healthz` on that loopback address
  (sync/web.py: the scheduler runs and every enabled source succeeded within `max_stale`). 200 is
  alive; 503 gives the daemon's reasons; no answer means no daemon (or a wedged one).
* otherwise: open the state store (never creating it) and require, for every enabled source, a
  successful live run within its `max_stale` (default 3 x interval, at least 10 min; 25 h for a cron
  source). A source that never succeeded passes while its first live run started within that limit
  (a daemon that has just started on a new store). That proves a daemon ran recently, wherever it
  runs (with replicas on PostgreSQL: some replica).

Nothing here reaches the LMS or an ERP (that is `feesync check`), so it costs one local request or
one small query.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from sync.times import parse_iso, utcnow


def _age(seconds: float) -> str:
    """12s, 14m, 3h, 2d (seconds under two minutes: a liveness limit can be that short)."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    return f"{s // 3600}h" if s < 86400 else f"{s // 86400}d"


def liveness(settings: Any, *, timeout: float = 5.0, now: datetime | None = None) -> dict[str, Any]:
    """{"ok": bool, "via": "healthz" | "state", "problems": [...], ...} for this host's daemon."""
    if settings.status_listen:
        from sync._web_util import parse_listen
        host, port = parse_listen(settings.status_listen)
        if port:
            return _via_healthz(host, port, timeout)
    return _via_state(settings, now or utcnow())


def _via_healthz(host: str, port: int, timeout: float) -> dict[str, Any]:
    name = "127.0.0.1" if host == "localhost" else host
    url = f"http://{'[' + name + ']' if ':' in name else name}:{port}/healthz"
    result: dict[str, Any] = {"via": "healthz", "url": url}
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # never via an HTTP(S)_PROXY
        with opener.open(url, timeout=timeout) as resp:
            body = json.loads(resp.read() or b"{}")
            return {**result, "ok": True, "problems": [], "sources": body.get("sources", {})}
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        reasons = body.get("reasons") or [f"HTTP {exc.code}"]
        return {**result, "ok": False, "problems": [f"{url} answered {exc.code}: {r}" for r in reasons],
                "sources": body.get("sources", {})}
    except (OSError, ValueError) as exc:   # refused, timed out, garbage
        reason = getattr(exc, "reason", exc)
        return {**result, "ok": False,
                "problems": [f"no daemon answering on {url} ({reason}); is `feesync run` running?"]}


def _via_state(settings: Any, now: datetime) -> dict[str, Any]:
    from sqlalchemy import func, select

    from sync.state import Store, runs
    from sync.web import stale_limit
    result: dict[str, Any] = {"via": "state"}
    try:
        store = Store.open(settings.state_target(), create=False)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the answer
        return {**result, "ok": False, "problems": [f"state: {exc}"]}
    try:
        with store.engine.connect() as c:
            last_ok = dict(c.execute(select(runs.c.source, func.max(runs.c.finished_at)).where(
                runs.c.status.in_(("ok", "conflicts")), runs.c.mode == "live").group_by(runs.c.source)).all())
            first = dict(c.execute(select(runs.c.source, func.min(runs.c.started_at)).where(
                runs.c.mode == "live").group_by(runs.c.source)).all())
    except Exception as exc:  # noqa: BLE001
        return {**result, "ok": False, "problems": [f"state: {exc}"]}
    finally:
        store.close()
    problems: list[str] = []
    sources: dict[str, Any] = {}
    if not any(src.enabled for src in settings.sources.values()):
        # nothing a daemon would run: "healthy" would be vacuous, and a probe must not pass on a wrong config
        problems.append("the configuration has no enabled source, so no daemon syncs anything; "
                        "check the config file the probe reads (--config or FEESYNC_CONFIG)")
    for name, src in sorted(settings.sources.items()):
        if not src.enabled:
            continue
        limit = stale_limit(src)
        ok_at = parse_iso(last_ok[name]) if last_ok.get(name) else None
        if ok_at is not None:
            age = now - ok_at
            fresh = age <= limit
            why = (f"source {name}: last successful run {_age(age.total_seconds())} ago, "
                   f"older than its limit {_age(limit.total_seconds())}")
        else:
            started = parse_iso(first[name]) if first.get(name) else None
            fresh = started is not None and now - started <= limit
            why = (f"source {name}: no successful run" + ("" if started is None else
                   f" since its first run {_age((now - started).total_seconds())} ago")
                   + f" (limit {_age(limit.total_seconds())})")
        sources[name] = {"last_success": ok_at.isoformat() if ok_at else None,
                         "max_stale_seconds": int(limit.total_seconds()), "ok": fresh}
        if not fresh:
            problems.append(why)
    return {**result, "ok": not problems, "problems": problems, "sources": sources}
