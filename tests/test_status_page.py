"""The status page: Chromium clicks through list -> filter -> detail -> resolve (refused without the admin
token, done with it); cross-site and token-less posts are refused; /healthz and /metrics from the daemon."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from sync import ops
from sync.daemon import Daemon
from sync.state import conflicts, runs
from sync.times import utcnow
from sync.web import StatusServer
from tests.test_ops_scenario import ADMIN_TOKEN, synced
from tests.test_web_browser import Browser


def http(method, url, *, data=None, headers=None):
    """(status, headers, body) without following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if body is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def status_of(app, cid):
    with app.store.engine.connect() as c:
        return c.execute(select(conflicts.c.status, conflicts.c.resolved_by, conflicts.c.note)
                         .where(conflicts.c.id == cid)).one()


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path)
    yield b
    b.close()


@pytest.fixture
def env(sandboxes, tmp_path, monkeypatch):
    s = synced(sandboxes, tmp_path, monkeypatch)
    yield s
    s.app.close()


@pytest.fixture
def web(env):
    with StatusServer(env.app, listen="127.0.0.1:0", admin_token=ADMIN_TOKEN) as server:
        yield server


def session(web, path="/conflicts/1"):
    """A visitor's session cookie and the CSRF token of the page's forms."""
    status, headers, body = http("GET", web.url + path)
    cookie = headers["Set-Cookie"].split(";")[0]
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', body).group(1)
    return cookie, csrf


def test_a_person_filters_opens_and_resolves_a_conflict_in_chromium_only_with_the_admin_token(env, web, browser):
    """list -> filter by kind -> open -> resolve: refused without the token, done with it; state store agrees."""
    browser.goto(web.url + "/conflicts")
    assert browser.js("document.querySelectorAll('#conflicts tbody tr').length") == 10
    browser.screenshot("status-01-list.png")

    browser.js("document.querySelector('#f-kind').value = 'unknown_student'")
    browser.click_and_wait("#apply-filters")
    assert "kind=unknown_student" in browser.url
    assert browser.js("[...document.querySelectorAll('#conflicts tbody tr')].map(r => r.dataset.kind)") == [
        "unknown_student"] * 3
    assert browser.js("document.querySelector('#list-summary').dataset.count") == "3"
    browser.screenshot("status-02-filtered.png")

    browser.click_and_wait("#conflicts tbody tr:nth-child(3) a.open-conflict")
    cid = int(re.search(r"/conflicts/(\d+)$", browser.url).group(1))
    assert "Phantom Payer" in browser.text("#conflict")
    # the commands carry the daemon's config file, absolute, so they paste into any shell
    assert f"feesync --config {env.config} conflicts map" in browser.text("#next-step")
    browser.screenshot("status-03-detail.png")

    browser.fill("#resolve-form textarea[name=note]", "paid back in cash; nothing to record")
    browser.click_and_wait("#resolve-button")                            # no admin token given
    assert browser.js("document.querySelector('#refused').dataset.status") == "403"
    assert "admin token required" in browser.text("#refused")
    browser.screenshot("status-04-refused-without-token.png")
    assert status_of(env.app, cid).status == "open"

    browser.goto(f"{web.url}/conflicts/{cid}")
    browser.fill("#resolve-form textarea[name=note]", "paid back in cash; nothing to record")
    browser.fill("#resolve-form input[name=by]", "Amna")
    browser.fill("#resolve-form input[name=token]", ADMIN_TOKEN)
    browser.click_and_wait("#resolve-button")
    assert browser.url == f"{web.url}/conflicts/{cid}"
    assert "resolved" in browser.text("#flash")
    assert browser.js("document.querySelector('#conflict').dataset.status") == "resolved"
    browser.screenshot("status-05-resolved.png")
    row = status_of(env.app, cid)
    assert tuple(row) == ("resolved", "web:Amna", "paid back in cash; nothing to record")

    browser.goto(web.url + "/conflicts?kind=unknown_student")           # the session stays unlocked
    assert browser.js("document.querySelectorAll('#conflicts tbody tr').length") == 2


def test_actions_are_refused_cross_site_without_csrf_or_token_and_on_get(env, web):
    """Evil Origin, a missing CSRF token, a wrong or missing token, a GET and a foreign Host change nothing."""
    cookie, csrf = session(web)
    url = web.url + "/conflicts/1/resolve"
    same = {"Cookie": cookie, "Origin": web.url}
    good = {"note": "fixed", "csrf": csrf, "token": ADMIN_TOKEN}
    cases = [
        ({"Cookie": cookie, "Origin": "http://evil.example"}, good, 403, "cross-site"),
        ({"Cookie": cookie, "Referer": "http://evil.example/page"}, good, 403, "cross-site"),
        ({"Cookie": cookie}, good, 403, "without Origin or Referer"),
        (same, {**good, "csrf": "0" * 64}, 403, "CSRF"),
        (same, {"note": "fixed", "token": ADMIN_TOKEN}, 403, "CSRF"),
        (same, {**good, "token": "wrong-token"}, 403, "wrong admin token"),
        (same, {"note": "fixed", "csrf": csrf}, 403, "admin token required"),
        ({"Origin": web.url}, good, 403, "no session"),
        ({**same, "Host": "attacker.example:80", "Origin": "http://attacker.example:80"}, good, 421, "Host"),
    ]
    for headers, form, code, why in cases:
        status, _, body = http("POST", url, data=form, headers={**headers, "Accept": "application/json"})
        assert (status, why in body) == (code, True), (headers, form, body)
    assert http("GET", url)[0] == 405
    assert status_of(env.app, 1).status == "open"

    status, headers, _ = http("POST", url, data=good, headers=same)    # everything right: done
    assert status == 303 and headers["Location"] == "/conflicts/1"
    assert status_of(env.app, 1).status == "resolved"


def test_a_script_may_act_with_the_bearer_token_and_retry_from_the_page_resolves_a_healed_conflict(env, web):
    """`Authorization: Bearer <token>` acts without a cookie; a retry after the LMS gained the student resolves."""
    env.lms.add_student("inst-test", id=310, name="Phantom Payer", email="phantom@erp.example.pk")
    env.lms.add_plan("inst-test", {"id": 7010, "student_id": 310, "batch_id": 1, "plan_type": "one_time",
                                   "total_amount": 5000, "currency": "PKR"})
    cid = next(r["id"] for r in ops.list_conflicts(env.app.store) if r["customer"] == "Phantom Payer")
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "application/json"}
    status, _, body = http("POST", f"{web.url}/conflicts/{cid}/retry", data={}, headers=auth)
    assert status == 200 and "pushed (now resolved)" in json.loads(body)["outcome"]
    assert status_of(env.app, cid).status == "resolved"
    bad = http("POST", f"{web.url}/conflicts/2/ignore", data={"note": "x"},
               headers={"Authorization": "Bearer nope", "Accept": "application/json"})
    assert bad[0] == 403 and status_of(env.app, 2).status == "open"


def test_bearer_guesses_are_throttled_and_absurd_ids_are_404(env, web):
    """Wrong Bearer tokens count like wrong form tokens: after 20 in the window, 429 (before any compare)."""
    bad = {"Authorization": "Bearer nope", "Accept": "application/json"}
    codes = [http("POST", f"{web.url}/conflicts/2/ignore", data={"note": "x"}, headers=bad)[0] for _ in range(21)]
    assert codes[:20] == [403] * 20 and codes[20] == 429
    good = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "application/json"}
    assert http("POST", f"{web.url}/conflicts/2/ignore", data={"note": "x"}, headers=good)[0] == 429
    assert status_of(env.app, 2).status == "open"
    for path in ("/conflicts/99999999999999999999999", "/api/conflicts/" + "9" * 5000):
        assert http("GET", web.url + path)[0] == 404, path


def test_without_an_admin_token_the_page_is_read_only(env):
    """No token configured: no action forms, and every POST is refused."""
    with StatusServer(env.app, listen="127.0.0.1:0") as web:
        status, headers, body = http("GET", web.url + "/conflicts/1")
        assert status == 200 and 'id="read-only"' in body and "<form" not in body.split("</header>")[1]
        assert "Set-Cookie" not in headers
        status, _, body = http("POST", web.url + "/conflicts/1/resolve", data={"note": "x"},
                               headers={"Origin": web.url, "Accept": "application/json"})
        assert status == 403 and "read-only" in body
        assert status_of(env.app, 1).status == "open"
        for path in ("/", "/conflicts?kind=overpayment&sort=amount", "/reconciliation", "/api/conflicts",
                     "/api/status", "/api/conflicts/9"):
            assert http("GET", web.url + path)[0] == 200, path
        assert http("GET", web.url + "/conflicts/999")[0] == 404
        assert http("GET", web.url + "/", headers={"Host": "localhost:9000"})[0] == 200      # an SSH tunnel
        assert http("GET", web.url + "/", headers={"Host": "127.0.0.1.nip.io:80"})[0] == 421  # DNS rebinding
        api = json.loads(http("GET", web.url + "/api/conflicts?kind=unknown_student")[2])
        assert api["total"] == 3 and api["money_at_stake"] == {"PKR": "4700"}


def _wait_for_a_finished_run(app, deadline_s=30):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with app.store.engine.connect() as c:
            if c.execute(select(runs.c.id).where(runs.c.finished_at.is_not(None), runs.c.mode == "live")
                         .order_by(runs.c.id.desc())).first():
                return
        time.sleep(0.05)
    raise AssertionError("the daemon never finished a run")


@pytest.fixture
def daemon(sandboxes, tmp_path, monkeypatch):
    """A real daemon (scheduler, status page on a free loopback port) over the ops scenario; first run done."""
    from sync.app import build_app
    from sync.config import load_settings
    from tests import scenario
    from tests.test_ops_scenario import config_text, ops_scenario
    lms, erp = sandboxes(ops_scenario())
    cfg = tmp_path / "feesync.toml"
    extra = 'status_listen = "127.0.0.1:0"\nreport_schedule = "off"\n'
    cfg.write_text(config_text(tmp_path, lms, erp, extra=extra).replace(
        'lag = "0s"', 'lag = "0s"\nmax_stale = "1h"'))
    for k, v in scenario.secret_env().items():
        monkeypatch.setenv(k, v)
    app = build_app(load_settings(cfg), sleep=lambda s: None)
    d = Daemon(app)
    d.start()
    try:
        _wait_for_a_finished_run(app)
        yield d, lms
    finally:
        d.stop()
        app.close()


def test_the_daemon_writes_the_report_and_retries_self_healing_conflicts(daemon):
    """The scheduled jobs: report_job writes report_dir; heal_job resolves Phantom once the LMS knows them."""
    d, lms = daemon
    out = d.report_job()
    assert out["totals"]["total"] == 10 and "feesync-report.html" in out["html"]
    lms.add_student("inst-test", id=310, name="Phantom Payer", email="phantom@erp.example.pk")
    lms.add_plan("inst-test", {"id": 7010, "student_id": 310, "batch_id": 1, "plan_type": "one_time",
                               "total_amount": 5000, "currency": "PKR"})
    healed = {r["doc_id"]: r["status"] for r in d.heal_job()}
    assert healed == {"ACC-PAY-2026-00101": "open", "ACC-PAY-2026-00102": "open",
                      "ACC-PAY-2026-00103": "resolved", "ACC-PAY-2026-00104": "open"}


def test_healthz_turns_503_when_a_source_last_succeeded_longer_ago_than_max_stale(daemon):
    """The daemon's /healthz is 200 after a fresh run and 503 naming the source once that run is 2 h old."""
    d, _lms = daemon
    app = d.app
    url = d.status_server.url
    status, _, body = http("GET", url + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok", body
    two_hours_ago = (utcnow() - timedelta(hours=2)).isoformat()
    with app.store.tx() as c:
        c.execute(update(runs).values(started_at=two_hours_ago, finished_at=two_hours_ago))
    status, _, body = http("GET", url + "/healthz")
    health = json.loads(body)
    assert status == 503 and health["status"] == "unhealthy"
    assert health["reasons"] == ["source erp: last successful run 2h ago, older than its limit 1h"]

    text = http("GET", url + "/metrics")[2]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("feesync_receipts_pushed_total", (("institute", "default"), ("source", "erp")))] == 12
    assert sum(v for (n, _), v in samples.items() if n == "feesync_conflicts_open") == 10
    assert samples[("feesync_conflicts_open",
                    (("institute", "default"), ("kind", "unknown_student"), ("source", "erp")))] == 3
    assert samples[("feesync_money_at_stake", (("currency", "PKR"), ("institute", "default")))] == 61700.5
    assert samples[("feesync_lms_requests_total", (("institute", "default"), ("status", "201")))] == 12
    assert samples[("feesync_run_duration_seconds_count", (("institute", "default"), ("source", "erp")))] >= 1
    assert samples[("feesync_cursor_lag_seconds", (("institute", "default"), ("source", "erp")))] > 0
    assert samples[("feesync_scheduler_running", ())] == 1
    assert ("feesync_last_success_timestamp_seconds", (("institute", "default"), ("source", "erp"))) in samples


def test_status_settings_read_the_token_file_redact_it_and_listen_on_loopback_only(tmp_path, monkeypatch):
    """status_admin_token_file is read and registered with the log redactor; a non-loopback address is refused."""
    from sync.config import load_settings
    from sync.errors import ConfigError
    from sync.logs import redact
    from tests import scenario
    monkeypatch.setenv("FEESYNC_LMS__API_KEY", scenario.LMS_KEY)
    token_file = tmp_path / "admin_token"
    token_file.write_text("tok_from_file_5e6f7a8b9c\n")
    cfg = tmp_path / "feesync.toml"
    cfg.write_text(f'status_listen = "127.0.0.1:8787"\nstatus_admin_token_file = "{token_file}"\n')
    settings = load_settings(cfg)
    assert settings.status_admin_token.get_secret_value() == "tok_from_file_5e6f7a8b9c"
    assert "tok_from_file_5e6f7a8b9c" not in repr(settings)
    assert redact("token tok_from_file_5e6f7a8b9c leaked") == "token *** leaked"
    monkeypatch.setenv("FEESYNC_STATUS_ADMIN_TOKEN", "tok_from_env_1a2b3c4d")
    cfg.write_text('status_listen = "[::1]:8787"\n')
    assert load_settings(cfg).status_admin_token.get_secret_value() == "tok_from_env_1a2b3c4d"
    for bad in ("0.0.0.0:8787", "192.168.1.5:8787", "example.com:80", "127.0.0.1", "127.0.0.1:99999"):
        cfg.write_text(f'status_listen = "{bad}"\n')
        with pytest.raises(ConfigError, match="status_listen"):
            load_settings(cfg)


@pytest.mark.parametrize("next_value", ["/x\r\nSet-Cookie: pwn=1", "/\t/evil.example", "//evil.example",
                                        "/\\evil.example", "https://evil.example/", "/ok page"])
def test_login_sends_a_person_back_only_to_a_plain_local_path(env, web, next_value):
    """A crafted `next` (a link sent to an admin) split the Location header or led off-site."""
    cookie, csrf = session(web, "/login")
    status, headers, _ = http("POST", web.url + "/login", data={"token": ADMIN_TOKEN, "csrf": csrf, "next": next_value},
                              headers={"Cookie": cookie, "Origin": web.url})
    assert status == 303 and headers["Location"] == "/" and headers.get("Set-Cookie", "").find("pwn") == -1
    status, headers, _ = http("POST", web.url + "/login", data={"token": ADMIN_TOKEN, "csrf": csrf,
                                                               "next": "/conflicts?kind=overpayment"},
                              headers={"Cookie": cookie, "Origin": web.url})
    assert status == 303 and headers["Location"] == "/conflicts?kind=overpayment"
