"""Chaos run: the real daemon (`feesync once` / `feesync run` child processes) is SIGKILLed at random
moments and restarted while both servers inject faults; afterwards every ERP receipt must be in the
LMS exactly once.

    .venv/bin/python tests/benchmarks/chaos_run.py --receipts 5000 --kills 50 --seed 7
    .venv/bin/python tests/benchmarks/chaos_run.py --json chaos.json     # also write the report as JSON

`tests/test_chaos_ci.py` runs a short variant of the same harness in the default test run.

What happens (all choices come from `random.Random(seed)`: the data, the fault schedule, the kill
modes and targets; the moments a kill lands depend on timing, so two runs with one seed differ in
detail, never in what they must show):

* data: `tests/scenario.build` receipts, with groups of rows sharing one `modified` that straddle
  page boundaries (page size `--page-size`);
* LMS sandbox faults: 5xx, applied-then-dropped answers, 429 bursts with and without `Retry-After`,
  slow answers below and above the client timeout (the latter are applied after the client gave
  up), garbage bodies;
* ERPNext fake faults: answers slower than the client timeout, 5xx (gateway pages and the
  `OperationalError` 500), pages that shift between two list calls (the `on_list` hook inserts rows
  and edits rows on later pages while the daemon pages), `modified` ties across page boundaries, and
  rows that appear late behind the stored cursor (inserted with an older `modified` while no daemon
  runs, and live arrivals stamped a few seconds in the past while `feesync run` is up);
* kills: after the LMS applied a write but before its answer leaves (`on_response`), while the
  daemon waits for a list page (`on_list`), and at a random time after start.

Every fault is counted when it fires (wrappers around the sandboxes' `faults.take`, the hooks, the
stored cursor), never when it is armed. The final check clears the faults, runs `feesync once`
until a pass is clean, and compares the ERP with the LMS and the ledger.
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import proc, scenario  # noqa: E402

PE = "Payment Entry"
ERP_TIMEOUT = 1.0      # the ERP client's timeout in the chaos config (seconds)
LMS_TIMEOUT = 1.5      # the LMS client's timeout in the chaos config (seconds)

# every fault type the run must see fire at least once, in report order
FAULT_TYPES = (
    "lms_5xx", "lms_applied_then_dropped", "lms_429_with_retry_after", "lms_429_without_retry_after",
    "lms_slow_answer", "lms_slow_past_client_timeout", "lms_garbage_body",
    "erp_timeout", "erp_5xx", "erp_page_shift", "erp_modified_tie_across_pages", "erp_row_late_behind_cursor",
)
KILL_MODES = ("after_apply", "mid_page", "random")


def _quiet_handle_error(original: Any) -> Any:
    def handle_error(request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            original(request, client_address)
    return handle_error


class Chaos:
    def __init__(self, receipts: int, kills: int, seed: int, workdir: Path, *, page_size: int = 25,
                 log: Any = None) -> None:
        self.target_receipts, self.target_kills, self.seed = receipts, kills, seed
        self.rng = random.Random(seed)
        self.hook_rng = random.Random(seed + 1)   # used from server threads
        self.work = workdir
        self.page_size = page_size
        self.log = log or (lambda *_: None)
        self.fired: Counter[str] = Counter()
        self.kills: Counter[str] = Counter()
        self.children: Counter[str] = Counter()
        self.exit_codes: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.extra_no = 90000
        self.child: subprocess.Popen | None = None
        self.kill_after_applied: int | None = None
        self.kill_on_page_after_applied: int | None = None
        self.pages_listed = 0
        self.shift_budget = 0
        self.prev_page_last: dict[str, tuple[str, str]] = {}
        self.added: Counter[str] = Counter()            # receipts inserted during the run, by how
        self.add_budget = max(5, receipts // 30)        # per way of inserting (plans hold twice the seed)
        self.kill_points: list[int] = []
        self.kills_during_sync = 0
        self.hook_errors: list[str] = []
        # diagnostics for a lost receipt: how it was added, whether the daemon ever listed or fetched it
        self.extra_log: dict[str, dict[str, Any]] = {}
        self.listed: set[str] = set()
        self.fetched: dict[str, list[int | None]] = {}
        self.child_no = 0

    # --- data -------------------------------------------------------------------------------------
    def build(self) -> None:
        per_student = 10
        students = max(1, -(-self.target_receipts // per_student))
        scn = scenario.build(n_students=students, receipts_per_student=per_student)
        pes = scn["erp_data"]["documents"][PE][: self.target_receipts]
        scn["erp_data"]["documents"][PE] = pes
        scn["receipts"] = [p["name"] for p in pes]
        # groups of equal `modified` longer than a page, spread over the data (ties across boundaries)
        n_groups = max(2, len(pes) // (self.page_size * 20))
        for _ in range(n_groups):
            length = self.rng.randint(self.page_size + 2, self.page_size * 2)
            start = self.rng.randrange(0, max(1, len(pes) - length))
            tie = pes[start]["modified"]
            for pe in pes[start:start + length]:
                pe["modified"] = tie
        self.scn = scn
        self.customers = [c["name"] for c in scn["erp_data"]["documents"]["Customer"]]
        self.invoice_of = {c: f"ACC-SINV-2026-{i + 1:05d}" for i, c in enumerate(self.customers)}
        # the harness's own (modified, name) index of Payment Entries, to find rows ahead of a page
        self.index: list[tuple[str, str]] = sorted((p["modified"], p["name"]) for p in pes)

    # --- servers and hooks --------------------------------------------------------------------------
    def start_servers(self) -> None:
        from sync.sandbox.erpnext import ERPNextFake
        from sync.sandbox.lms import LmsSandbox
        self.lms = LmsSandbox(self.scn["lms_seed"]).start()
        self.erp = ERPNextFake(self.scn["erp_data"]).start()
        lms_take, erp_take = self.lms.faults.take, self.erp.faults.take

        def counting_lms_take(ftype: str, method: str, path: str) -> dict[str, Any] | None:
            item = lms_take(ftype, method, path)
            if item is not None:
                self._count_lms(item)
            return item

        def counting_erp_take(method: str, path: str, target: str) -> tuple[float, Any]:
            sleep, fault = erp_take(method, path, target)
            if sleep:
                self.fire("erp_timeout" if sleep > ERP_TIMEOUT else "erp_slow_answer")
            if fault is not None:
                self.fire("erp_5xx" if fault.kind == "fail" and fault.status >= 500 else f"erp_{fault.kind}")
                if fault.kind == "fail" and fault.status == 500:
                    self.fire("erp_500_operational_error")
            return sleep, fault
        for server in (self.lms._server, self.erp._server):
            # a SIGKILLed client resets its keep-alive connection; socketserver would print a traceback
            server.handle_error = _quiet_handle_error(server.handle_error)
        self.lms.faults.take = counting_lms_take
        self.erp.faults.take = counting_erp_take
        self.erp.on_list(self._on_list)
        self.lms.on_response = self._on_response
        respond = self.erp._respond
        prefix = f"/api/resource/{PE}/"

        def recording_respond(method: str, target: str, headers: Any, body: bytes) -> Any:
            resp = respond(method, target, headers, body)
            path = unquote(target.split("?", 1)[0])
            if method == "GET" and path.startswith(prefix):
                with self.lock:
                    self.fetched.setdefault(path[len(prefix):], []).append(resp.status if resp else None)
            return resp
        self.erp._respond = recording_respond

    def stop_servers(self) -> None:
        self.lms.stop()
        self.erp.stop()

    def fire(self, kind: str, n: int = 1) -> None:
        with self.lock:
            self.fired[kind] += n

    def _count_lms(self, item: dict[str, Any]) -> None:
        t = item["type"]
        if t == "drop_after_apply":
            self.fire("lms_applied_then_dropped")
        elif t == "slow":
            self.fire("lms_slow_past_client_timeout" if item["seconds"] > LMS_TIMEOUT else "lms_slow_answer")
        elif t == "garbage":
            self.fire("lms_garbage_body")
        elif item["status"] == 429:
            self.fire("lms_429_with_retry_after" if item["retry_after"] is not None else "lms_429_without_retry_after")
        elif item["status"] >= 500:
            self.fire("lms_5xx")

    def _on_response(self, method: str, path: str, status: int) -> None:
        try:
            self._on_response_inner(method, path, status)
        except Exception as exc:  # noqa: BLE001
            self.hook_errors.append(f"on_response: {type(exc).__name__}: {exc}")

    def _on_response_inner(self, method: str, path: str, status: int) -> None:
        target = self.kill_after_applied
        if target is None or method != "POST" or status != 201:
            return
        if self.lms.stats()["writes_applied"] >= target:
            self.kill_after_applied = None
            self._kill("after_apply")

    def _on_list(self, doctype: str, rows: list) -> None:
        try:
            self._on_list_inner(doctype, rows)
        except Exception as exc:  # noqa: BLE001 - a harness bug must show, not turn into a fake 500
            self.hook_errors.append(f"on_list: {type(exc).__name__}: {exc}")

    def _on_list_inner(self, doctype: str, rows: list) -> None:
        dicts = [r for r in rows if isinstance(r, dict) and "modified" in r and "name" in r]
        if not dicts:
            return
        first, last = (dicts[0]["modified"], dicts[0]["name"]), (dicts[-1]["modified"], dicts[-1]["name"])
        with self.lock:
            prev = self.prev_page_last.get(doctype)
            self.prev_page_last[doctype] = last
            self.pages_listed += 1
            pages = self.pages_listed
        # A page that does not continue the latest one is a stale answer: a request the client gave up on
        # (a timeout fault sleeps first, then answers) whose reader has moved on. A row inserted on its
        # boundary would appear behind the reader by however far it read meanwhile, further than any
        # lookback: no ERP makes such a row (a row's `modified` is its transaction's start), so only pages
        # that continue the reader's latest one are shifted.
        continues = prev is not None and first >= prev
        if prev is not None and first > prev and first[0] == prev[0]:
            self.fire("erp_modified_tie_across_pages")
        if doctype == PE:
            with self.lock:
                self.listed.update(d["name"] for d in dicts)
        if doctype == PE and len(dicts) == self.page_size and self.shift_budget > 0 and continues:
            self.shift_budget -= 1
            self._shift_pages(last)
        target = self.kill_on_page_after_applied
        if target is not None and self.lms.stats()["writes_applied"] >= target:
            self.kill_on_page_after_applied = None
            self._kill("mid_page")

    def _shift_pages(self, last: tuple[str, str]) -> None:
        """Between two list calls: insert a row on the page boundary and edit a row of a later page."""
        r = self.hook_rng
        if self._insert_extra(last[0], "page_shift"):
            # the same `modified` as the page's last row and a greater name: it belongs on the next
            # page, so every later row moves one place (an offset pager would read one row twice)
            self.fire("erp_page_shift")
        with self.lock:
            i = bisect.bisect_right(self.index, last)
            ahead = self.index[i:i + 5 * self.page_size]
        if ahead:
            _, name = ahead[r.randrange(len(ahead))]
            # an edit that keeps the money: `modified` moves to now, the row leaves its page
            doc = self.erp.update(PE, name, {"remarks": f"edited by chaos {r.random():.6f}"})
            with self.lock:
                self.index = sorted((m, n) if n != name else (doc["modified"], n) for m, n in self.index)
            self.fire("erp_page_shift")

    def _insert_extra(self, modified: Any, how: str) -> str | None:
        with self.lock:
            if self.added[how] >= self.add_budget:
                return None
            self.added[how] += 1
            self.extra_no += 1
            no = self.extra_no
            customer = self.customers[no % len(self.customers)]
        pe = scenario.new_receipt(no, customer, 1000, self.invoice_of[customer], datetime.now(UTC))
        cursor = self.stored_cursor()
        doc = self.erp.insert(PE, pe, modified=modified)
        with self.lock:
            self.extra_log[str(doc["name"])] = {
                "how": how, "modified": doc["modified"], "inserted_at": datetime.now(UTC).isoformat(),
                "stored_cursor": cursor.isoformat() if cursor else None, "child": self.child_no}
            bisect.insort(self.index, (doc["modified"], doc["name"]))
        return str(doc["name"])

    def _kill(self, mode: str) -> None:
        child = self.child
        with self.lock:
            if child is None or child.poll() is not None or getattr(child, "_chaos_killed", False):
                return
            child._chaos_killed = True  # type: ignore[attr-defined]
        child.send_signal(signal.SIGKILL)
        during = self.base_left() > 0
        with self.lock:
            self.kills[mode] += 1
            self.kills_during_sync += during

    # --- the state store, read beside the daemon ----------------------------------------------------------
    def stored_cursor(self) -> datetime | None:
        db = self.work / "state.db"
        if not db.exists():
            return None
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                row = con.execute("SELECT changed_at FROM cursors WHERE source = 'erp'").fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            return None
        return datetime.fromisoformat(row[0]) if row else None

    def insert_late_rows(self, n: int) -> None:
        """While no daemon runs: rows whose `modified` is 0.5-8 minutes behind the stored cursor."""
        cursor = self.stored_cursor()
        if cursor is None:
            return
        for _ in range(n):
            behind = cursor - timedelta(seconds=self.rng.uniform(30, 480))
            if self._insert_extra(behind, "late"):
                self.fire("erp_row_late_behind_cursor")

    def _live_arrivals(self, stop: threading.Event) -> None:
        """While `feesync run` is up: receipts stamped 0-4 s in the past (some land behind the cursor)."""
        r = random.Random(self.rng.random())
        while not stop.wait(r.uniform(0.15, 0.5)):
            stamped = datetime.now(UTC) - timedelta(seconds=r.uniform(0, 4))
            cursor = self.stored_cursor()
            if self._insert_extra(stamped, "live") is None:
                return
            if cursor is not None and stamped < cursor:
                self.fire("erp_row_late_behind_cursor")

    # --- faults -------------------------------------------------------------------------------------
    def pending(self) -> set[str]:
        """The fault types still armed (not yet fired)."""
        out = set()
        for it in self.lms.faults.pending():
            if it["type"] == "fail":
                if it["status"] == 429:
                    out.add("lms_429_with_retry_after" if it["retry_after"] is not None else "lms_429_without_retry_after")
                else:
                    out.add("lms_5xx")
            elif it["type"] == "slow":
                out.add("lms_slow_past_client_timeout" if it["seconds"] > LMS_TIMEOUT else "lms_slow_answer")
            else:
                out.add({"drop_after_apply": "lms_applied_then_dropped", "garbage": "lms_garbage_body"}[it["type"]])
        for it in self.erp.faults.pending():
            out.add("erp_timeout" if it["action"] == "slow" else "erp_5xx")
        return out

    def arm(self) -> None:
        """Arm some fault types at random, and every type that has not fired yet; never one already armed."""
        r = self.rng
        lf, ef = self.lms.faults, self.erp.faults
        armers = {
            "lms_5xx": lambda: lf.fail(r.choice([500, 502, 503]), count=r.randint(1, 2), method="POST"),
            "lms_applied_then_dropped": lambda: lf.drop_after_apply(count=1, method="POST"),
            "lms_429_with_retry_after": lambda: lf.fail(429, count=r.randint(2, 4), retry_after=1),
            "lms_429_without_retry_after": lambda: lf.fail(429, count=r.randint(2, 4)),
            "lms_slow_answer": lambda: lf.slow(0.3, count=r.randint(1, 4), method="POST"),
            "lms_slow_past_client_timeout": lambda: lf.slow(LMS_TIMEOUT + 0.6, count=1, method="POST"),
            "lms_garbage_body": lambda: lf.garbage(count=1, kind=r.choice(
                ["html", "not_json", "truncated", "wrong_content_type", "empty_200", "short_body"]), method="POST"),
            "erp_timeout": lambda: ef.slow(ERP_TIMEOUT + 0.5, count=1, path_regex=r"^/api/resource/Payment"),
            "erp_5xx": lambda: ef.fail(r.choice([500, 502, 503, 504]), count=r.randint(1, 2),
                                       path_regex=r"^/api/resource/"),
        }
        chosen = {k for k in armers if r.random() < 0.25}
        with self.lock:
            chosen |= {k for k in armers if self.fired[k] == 0}
        chosen -= self.pending()
        for k in sorted(chosen):
            armers[k]()
        if r.random() < 0.5 or self.fired["erp_page_shift"] == 0:
            self.shift_budget = r.randint(1, 3)

    # --- children -----------------------------------------------------------------------------------
    def write_config(self) -> Path:
        text = scenario.config_toml(str(self.work / "state.db"), self.lms.base_url, self.erp.url, interval="1s",
                                    page_size=self.page_size, extra_lms=f"timeout_seconds = {LMS_TIMEOUT}")
        # the ERP client gives up after ERP_TIMEOUT, so a slow page is a timeout
        text = text.replace("timeout_seconds = 5\n", f"timeout_seconds = {ERP_TIMEOUT}\n")
        from sync.config import Settings
        if "lease_ttl" in Settings.model_fields:
            # a SIGKILLed `feesync run` keeps its source lease until it expires; a short TTL lets the
            # next daemon start within seconds instead of 30 (the default)
            text = 'lease_ttl = "3s"\n' + text
        cfg = self.work / "feesync.toml"
        cfg.write_text(text)
        return cfg

    def start_child(self, command: str, n: int) -> subprocess.Popen:
        out = open(self.work / f"child-{n:03d}-{command}.log", "wb")  # noqa: SIM115 - closed in round()
        child = subprocess.Popen([sys.executable, "-m", "sync.cli", "--config", str(self.cfg), command],
                                 env=proc.env(), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        child._chaos_log = out  # type: ignore[attr-defined]
        return child

    def base_left(self) -> int:
        """Seeded receipts not yet in the LMS."""
        paid = {p["notes"] for p in self.lms.payments()}
        return sum(1 for n in self.scn["receipts"] if f"erp:erp:{n}" not in paid)

    def base_undecided(self) -> int:
        """Seeded receipts the ledger has not decided yet (pushed, conflict or skipped)."""
        db = self.work / "state.db"
        if not db.exists():
            return len(self.scn["receipts"])
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                decided = {r[0] for r in con.execute(
                    "SELECT doc_id FROM documents WHERE source = 'erp' AND status IN ('pushed', 'conflict', 'skipped')")}
            finally:
                con.close()
        except sqlite3.Error:
            return len(self.scn["receipts"])
        return sum(1 for n in self.scn["receipts"] if n not in decided)

    def base_done(self) -> bool:
        """Every seeded receipt is in the LMS, or decided in the ledger (a receipt the ledger calls pushed
        but the LMS lacks is reported as lost at the end, not waited for)."""
        return self.base_left() == 0 or self.base_undecided() == 0

    def round(self, n: int) -> None:
        r = self.rng
        self.arm()
        if r.random() < 0.5:
            self.insert_late_rows(r.randint(1, 3))
        left = min(self.base_left(), self.base_undecided())
        if sum(self.kills.values()) >= self.target_kills:
            # every kill asked for has landed: the faults go on, the kills stop, so the seeded receipts
            # finish instead of the run spending its rounds on children killed during start-up
            self.finishing_round(n)
            return
        command = "run" if (r.random() < 0.4 or not left) else "once"
        mode = r.choice(KILL_MODES) if left else "random"
        # progress points (LMS writes applied) spread over the seeded receipts, one per hook kill
        applied = self.lms.stats()["writes_applied"]
        while self.kill_points and self.kill_points[0] <= applied:
            self.kill_points.pop(0)
        point = self.kill_points.pop(0) if self.kill_points else applied + r.randint(1, max(1, left))
        if mode == "after_apply":     # between the LMS applying a write and its answer
            self.kill_after_applied = point
        elif mode == "mid_page":      # on the first list page once that many writes were applied
            self.kill_on_page_after_applied = point
        deadline = time.monotonic() + (r.uniform(0.6, 2.5) if mode == "random" else 30)
        self.children[command] += 1
        self.child_no = n
        stop_arrivals = threading.Event()
        arrivals = None
        self.child = child = self.start_child(command, n)
        if command == "run":
            arrivals = threading.Thread(target=self._live_arrivals, args=(stop_arrivals,), daemon=True)
            arrivals.start()
        try:
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if child.poll() is None:
                self._kill("random")
            child.wait(timeout=30)
        finally:
            stop_arrivals.set()
            if arrivals is not None:
                arrivals.join(timeout=5)
            self.kill_after_applied = self.kill_on_page_after_applied = None
            self.child = None
            child._chaos_log.close()  # type: ignore[attr-defined]
        self.exit_codes[str(child.returncode)] += 1

    def finishing_round(self, n: int) -> None:
        """A `feesync once` under the armed faults, not killed (bounded by a generous deadline)."""
        self.children["once"] += 1
        self.child_no = n
        self.child = child = self.start_child("once", n)
        try:
            child.wait(timeout=300)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=30)
        finally:
            self.child = None
            child._chaos_log.close()  # type: ignore[attr-defined]
        self.exit_codes[str(child.returncode)] += 1

    # --- the whole run --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.build()
        base = len(self.scn["receipts"])
        # a few more progress points than kills asked for, so that the kills land while receipts are unsynced
        points = self.target_kills + max(2, self.target_kills // 4)
        self.kill_points = sorted(self.rng.sample(range(1, base), min(base - 1, points)))
        self.start_servers()
        try:
            self.cfg = self.write_config()
            n = 0
            while (sum(self.kills.values()) < self.target_kills or not self.base_done()) and n < 40 + 4 * self.target_kills:
                n += 1
                self.round(n)
                self.log(f"round {n}: kills {sum(self.kills.values())}, LMS writes applied "
                         f"{self.lms.stats()['writes_applied']}/{len(self.scn['receipts'])} (+{sum(self.added.values())} added)")
            chaos_seconds = time.monotonic() - started
            # the final check: no faults, no hooks, passes until one is clean
            self.lms.faults.clear()
            self.erp.faults.clear()
            self.lms.on_response = None
            final = []
            for i in range(6):
                done = proc.run("--config", str(self.cfg), "once", "--json", timeout=600)
                payload = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
                res = (payload.get("results") or [{}])[0]
                final.append({"exit": done.returncode, "status": res.get("status"),
                              "pushed": (res.get("counts") or {}).get("pushed", 0)})
                if done.returncode in (0, 1) and res.get("status") in ("ok", "conflicts") and not final[-1]["pushed"]:
                    break
            report = self.report(final)
            report["seconds"] = round(time.monotonic() - started, 1)
            report["chaos_seconds"] = round(chaos_seconds, 1)
            return report
        finally:
            self.stop_servers()

    def report(self, final: list[dict[str, Any]]) -> dict[str, Any]:
        from sqlalchemy import func, select

        from sync.state import Store, conflicts, documents, writes
        erp_receipts = [d for d in self.erp.all(PE) if d.get("docstatus") == 1 and d.get("payment_type") == "Receive"]
        expected = {d["name"] for d in erp_receipts}
        pays = self.lms.payments()
        by_note = Counter(p["notes"] for p in pays)
        recorded = {n for n in expected if by_note.get(f"erp:erp:{n}", 0) >= 1}
        duplicated = sum(c - 1 for c in by_note.values() if c > 1) + sum(
            c for note, c in by_note.items() if not (note or "").startswith("erp:erp:") or note[8:] not in expected)
        store = Store.open(self.work / "state.db")
        try:
            with store.engine.connect() as c:
                kinds = dict(c.execute(select(conflicts.c.kind, func.count()).group_by(conflicts.c.kind)).all())
                intents = c.execute(select(func.count()).select_from(writes).where(writes.c.status == "intent")).scalar()
                done = c.execute(select(writes.c.idem_key, writes.c.receipt_number)
                                 .where(writes.c.status == "done")).all()
                statuses = dict(c.execute(select(documents.c.status, func.count())
                                          .where(documents.c.event_kind == "PaymentReceived")
                                          .group_by(documents.c.status)).all())
        finally:
            store.close()
        ledger_matches = sorted(r for _, r in done) == sorted(p["receipt_number"] for p in pays)
        stats = self.lms.stats()
        return {
            "seed": self.seed, "page_size": self.page_size,
            "kills": sum(self.kills.values()), "kills_by_mode": dict(self.kills),
            "children": dict(self.children), "child_exit_codes": dict(self.exit_codes),
            "faults_fired": {k: self.fired.get(k, 0) for k in FAULT_TYPES},
            "faults_other": {k: v for k, v in self.fired.items() if k not in FAULT_TYPES},
            "receipts_expected": len(expected), "receipts_base": len(self.scn["receipts"]),
            "receipts_added_during_run": sum(self.added.values()), "receipts_added_by_way": dict(self.added),
            "kills_during_sync": self.kills_during_sync,
            "receipts_recorded": len(recorded), "receipts_duplicated": duplicated,
            "receipts_lost": len(expected - recorded), "lost_ids": sorted(expected - recorded)[:20],
            "lost_details": {n: {**self.extra_log.get(n, {"how": "seeded"}), "listed": n in self.listed,
                                 "fetched": self.fetched.get(n, [])} for n in sorted(expected - recorded)[:20]},
            "lms_payments": len(pays), "amount_ok": sum(p["amount"] for p in pays) == 1000 * len(expected),
            "conflicts_by_kind": kinds, "open_intents": intents, "ledger_matches_lms": ledger_matches,
            "ledger_statuses": statuses,
            "lms_stats": {k: stats[k] for k in ("requests", "writes_received", "writes_applied", "replays", "dropped")},
            "final_passes": final, "hook_errors": self.hook_errors[:10],
        }


def format_report(r: dict[str, Any]) -> str:
    lines = [f"chaos run: seed {r['seed']}, page size {r['page_size']}, {r['seconds']} s "
             f"({r['chaos_seconds']} s under chaos)",
             f"kills: {r['kills']}  (" + ", ".join(f"{k} {v}" for k, v in sorted(r["kills_by_mode"].items()))
             + f"; {r['kills_during_sync']} while seeded receipts were still unsynced)",
             "daemon children: " + ", ".join(f"{k} {v}" for k, v in sorted(r["children"].items()))
             + "; exit codes " + ", ".join(f"{k}: {v}" for k, v in sorted(r["child_exit_codes"].items())),
             "faults injected (counted when they fired):"]
    lines += [f"  {k:<34} {v}" for k, v in r["faults_fired"].items()]
    if r["faults_other"]:
        lines.append("  also: " + ", ".join(f"{k} {v}" for k, v in sorted(r["faults_other"].items())))
    lines += [
        f"receipts expected:   {r['receipts_expected']} ({r['receipts_base']} seeded + "
        f"{r['receipts_added_during_run']} added during the run: "
        + ", ".join(f"{k} {v}" for k, v in sorted(r["receipts_added_by_way"].items())) + ")",
        f"receipts recorded:   {r['receipts_recorded']}",
        f"receipts duplicated: {r['receipts_duplicated']}",
        f"receipts lost:       {r['receipts_lost']}" + (f"  {r['lost_ids']}" if r["lost_ids"] else ""),
        *(f"  lost {n}: {d}" for n, d in r["lost_details"].items()),
        "conflicts by kind:   " + (", ".join(f"{k} {v}" for k, v in sorted(r["conflicts_by_kind"].items())) or "none"),
        f"ledger: open intents {r['open_intents']}, receipt numbers match the LMS: {r['ledger_matches_lms']}, "
        f"amounts match: {r['amount_ok']}",
        f"LMS: {r['lms_stats']['writes_received']} writes received, {r['lms_stats']['writes_applied']} applied, "
        f"{r['lms_stats']['replays']} idempotent replays, {r['lms_stats']['dropped']} answers dropped",
    ]
    return "\n".join(lines)


def run_chaos(receipts: int, kills: int, seed: int, workdir: Path | None = None, *, page_size: int = 25,
              log: Any = None) -> dict[str, Any]:
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="feesync-chaos-") as d:
            return Chaos(receipts, kills, seed, Path(d), page_size=page_size, log=log).run()
    workdir.mkdir(parents=True, exist_ok=True)
    return Chaos(receipts, kills, seed, workdir, page_size=page_size, log=log).run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="feesync chaos run (SIGKILL + faults on both sides)")
    p.add_argument("--receipts", type=int, default=5000)
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--page-size", type=int, default=25)
    p.add_argument("--workdir", default=None, help="keep the state store and child logs here")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run_chaos(args.receipts, args.kills, args.seed, Path(args.workdir) if args.workdir else None,
                       page_size=args.page_size, log=log)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    problems = []
    if report["receipts_lost"] or report["receipts_duplicated"]:
        problems.append(f"{report['receipts_lost']} lost, {report['receipts_duplicated']} duplicated")
    if report["kills"] < args.kills:
        problems.append(f"only {report['kills']} of the {args.kills} kills asked for landed")
    silent = [k for k, v in report["faults_fired"].items() if v == 0]
    if silent:
        problems.append("fault types that never fired: " + ", ".join(silent))
    print("RESULT:", "; ".join(problems) if problems else
          f"0 lost, 0 duplicated ({report['kills']} kills, every fault type fired)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
