"""feesync benchmark: backfill against a rate-limited LMS, local pipeline cost, idle poll cost.

Run from the repository root (not part of the default pytest run):

    ./scripts/bench.sh                                                 # everything, ~10 minutes on 2 cores
    .venv/bin/python tests/benchmarks/bench_feesync.py --only backfill,idle --backfill-receipts 2000
    .venv/bin/python tests/benchmarks/bench_feesync.py --json bench.json

It prints a table and writes JSON (default `feesync-bench.json`). Three parts:

1. backfill: N receipts (default 20,000) in the ERPNext fake, synced by the engine in backfill mode
   (`app.engine.run_once(source, mode="backfill", since, until, cursor_name)`, what `feesync backfill`
   calls) into the LMS sandbox limited to `--limit` requests/minute per key (default 6,000), with
   `lms.rate_limit_per_minute` set to the same value (the client paces at `rate_safety` 0.97 of it).
   The two servers run in a separate process (they stand for remote machines), the engine here.
   The ERPNext list page size is 1,000 (`--page-size`): the fake evaluates each list call by scanning
   all its rows (~0.4 s per call at 20,000 rows on this machine), where a real site answers from an index;
   the time the fake spent on list calls is printed beside the wall time.
   Reported: wall time, LMS requests/s divided by the limit, LMS requests per receipt, 429 answers.
2. pipeline: N receipts (default 100,000; and 10,000) as CSV files (5,000 rows each, `invoice =
   plan:<id>`) through the file connector, mapping and the ledger, the LMS answered in-process by an
   `httpx.MockTransport` (201 per payment). Each size runs in a fresh child process that reports
   receipts/s and its peak RSS (`getrusage(RUSAGE_SELF).ru_maxrss`). Client pacing is off (no limit
   applies to a local transport); logs are written as JSON lines to a file, as in production.
3. idle: after the backfill, live passes with nothing new: ERP requests by kind and LMS requests per tick.

The requests/s ratio is taken over the whole backfill's wall time (and, in the JSON, over the span from
the first to the last LMS request); it means something only for runs of several minutes, because the
client's limiter is a sliding one-minute window that lets a short run burst above the steady rate.
Run it on a quiet machine: the load average at start and end is printed with the figures.

Targets (printed beside each figure, never enforced by a test): ratio >= 0.95, <= 1.02 requests per
receipt, 0 x 429, >= 10,000 receipts/s, RSS < 200 MB and 10k vs 100k within 20 %, idle = list calls only.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import scenario  # noqa: E402

CSV_ROWS_PER_FILE = 5_000
PLANS = 500


# --- the servers, in their own process ----------------------------------------------------------------
def _serve_sandboxes(scn: dict[str, Any], rate_limit: int, conn: Any) -> None:
    """Child process: run the LMS sandbox and the ERPNext fake; answer 'stats' / 'stop' over the pipe."""
    from sync.sandbox.erpnext import ERPNextFake
    from sync.sandbox.lms import LmsSandbox
    lms = LmsSandbox(scn["lms_seed"], rate_limit_per_minute=rate_limit).start()
    erp = ERPNextFake(scn["erp_data"]).start()
    span = {"first": None, "last": None, "n": 0}

    def on_response(method: str, path: str, status: int) -> None:
        now = time.monotonic()
        span["first"] = span["first"] or now
        span["last"] = now
        span["n"] += 1
    lms.on_response = on_response
    # time the fake spends answering, by kind: its list query scans every row (O(n)), where a real
    # ERPNext answers from the (modified, name) index, so list time is reported apart
    erp_time: dict[str, float] = {}
    respond = erp._respond

    def timed_respond(method: str, target: str, headers: Any, body: bytes) -> Any:
        t0 = time.perf_counter()
        try:
            return respond(method, target, headers, body)
        finally:
            kind = "list" if method == "GET" and target.split("?", 1)[0].count("/") == 3 else "other"
            erp_time[kind] = erp_time.get(kind, 0.0) + time.perf_counter() - t0
    erp._respond = timed_respond
    conn.send({"lms": lms.base_url, "erp": erp.url})
    try:
        while True:
            cmd = conn.recv()
            if cmd == "stop":
                break
            if cmd == "reset_span":
                span.update(first=None, last=None, n=0)
                conn.send(True)
            elif cmd == "stats":
                pays = lms.payments()
                conn.send({"lms": lms.stats(), "erp": erp.stats(), "payments": len(pays),
                           "distinct_notes": len({p["notes"] for p in pays}),
                           "amount": sum(p["amount"] for p in pays),
                           "span": (span["last"] - span["first"]) if span["first"] else 0.0,
                           "span_requests": span["n"], "erp_seconds": dict(erp_time)})
    finally:
        lms.stop()
        erp.stop()


class Servers:
    def __init__(self, scn: dict[str, Any], rate_limit: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_sandboxes, args=(scn, rate_limit, child), daemon=True)
        self.proc.start()
        urls = self.conn.recv()
        self.lms_url, self.erp_url = urls["lms"], urls["erp"]

    def stats(self) -> dict[str, Any]:
        self.conn.send("stats")
        return self.conn.recv()

    def reset_span(self) -> None:
        self.conn.send("reset_span")
        self.conn.recv()

    def stop(self) -> None:
        self.conn.send("stop")
        self.proc.join(timeout=30)


def _erp_settings(erp_url: str, page_size: int) -> dict[str, Any]:
    return {"url": erp_url, "api_key": scenario.ERP_KEY, "api_secret": scenario.ERP_SECRET,
            "site_time_zone": "Asia/Karachi", "page_size": page_size}


def _configure_logs(path: Path) -> Any:
    from sync import logs
    fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    logs.configure("json", "info", fh)
    return fh


# --- 1 + 3: backfill, then idle ticks ------------------------------------------------------------------
def bench_backfill_and_idle(n: int, limit: int, tmp: Path, idle_ticks: int = 3, page_size: int = 1000) -> dict[str, Any]:
    from sync.app import build_app
    from sync.config import Settings
    per_student = 100
    students = max(1, n // per_student)
    scn = scenario.build(n_students=students, receipts_per_student=n // students)
    receipts = len(scn["receipts"])
    scn["lms_seed"]["rate_limit_per_minute"] = limit
    servers = Servers(scn, limit)
    try:
        settings = Settings(
            state_path=str(tmp / "backfill-state.db"), log_format="json",
            lms={"base_url": servers.lms_url, "api_key": scenario.LMS_KEY, "rate_limit_per_minute": limit,
                 "limiter_path": str(tmp / "backfill-pacing.db")},
            sources={"erp": {"connector": "erpnext", "settings": _erp_settings(servers.erp_url, page_size)}})
        app = build_app(settings)
        since = datetime(2026, 10, 1, tzinfo=scenario.KHI).astimezone(UTC)
        until = datetime.now(UTC)
        before = servers.stats()
        servers.reset_span()
        t0 = time.perf_counter()
        result = app.engine.run_once("erp", datetime.now(UTC), mode="backfill", since=since, until=until,
                                     cursor_name="backfill:erp:bench")
        wall = time.perf_counter() - t0
        after = servers.stats()
        lms_requests = after["lms"]["requests"] - before["lms"]["requests"]
        erp_requests = after["erp"]["requests"] - before["erp"]["requests"]
        per_second = lms_requests / wall
        backfill = {
            "receipts": receipts, "status": result.status, "pushed": result.counts.get("pushed", 0),
            "wall_seconds": round(wall, 2), "limit_per_minute": limit, "rate_safety": settings.lms.rate_safety,
            "lms_requests": lms_requests, "lms_requests_per_second": round(per_second, 2),
            "ratio_to_limit": round(per_second / (limit / 60), 4),
            "ratio_to_limit_active_span": round(after["span_requests"] / after["span"] / (limit / 60), 4)
            if after["span"] else None,
            "lms_requests_per_receipt": round(lms_requests / max(1, receipts), 4),
            "lms_429": int(after["lms"]["by_status"].get("429", 0)) - int(before["lms"]["by_status"].get("429", 0)),
            "lms_by_status": after["lms"]["by_status"],
            "client_requests_by_status": dict(app.lms.requests),
            "erp_requests": erp_requests, "erp_by_kind": after["erp"]["by_path_kind"], "erp_page_size": page_size,
            "erp_fake_seconds": {k: round(v - before["erp_seconds"].get(k, 0.0), 1)
                                 for k, v in after["erp_seconds"].items()},
            "lms_payments": after["payments"], "lms_distinct_receipts": after["distinct_notes"],
            "amount_ok": after["amount"] == scn["amount_total"],
        }
        # 3. idle: the first live pass reads the whole history once (no live cursor yet; every row is
        # already decided, so it costs list calls only); the passes after it are the daemon's idle ticks.
        ticks = []
        for i in range(idle_ticks + 1):
            b = servers.stats()
            r = app.engine.run_once("erp", datetime.now(UTC))
            a = servers.stats()
            kinds = {k: a["erp"]["by_path_kind"].get(k, 0) - b["erp"]["by_path_kind"].get(k, 0)
                     for k in a["erp"]["by_path_kind"]}
            ticks.append({"tick": i, "first_live_pass": i == 0, "status": r.status,
                          "unchanged": r.counts.get("unchanged", 0),
                          "erp_requests": a["erp"]["requests"] - b["erp"]["requests"],
                          "erp_by_kind": {k: v for k, v in kinds.items() if v},
                          "lms_requests": a["lms"]["requests"] - b["lms"]["requests"]})
        app.close()
    finally:
        servers.stop()
    return {"backfill": backfill, "idle": {"ticks": ticks, "lookback": "10m", "page_size": page_size}}


# --- 2: local pipeline (child processes) --------------------------------------------------------------
def write_csv_folder(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, n, CSV_ROWS_PER_FILE):
        with open(folder / f"receipts-{start // CSV_ROWS_PER_FILE:05d}.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["document_id", "date", "student", "amount", "currency", "method", "reference_number",
                        "invoice"])
            for i in range(start, min(n, start + CSV_ROWS_PER_FILE)):
                w.writerow([f"RCPT-{i:07d}", "2026-11-02", f"S{i % PLANS:04d}", "1000", "PKR", "Cash", "",
                            f"plan:{5000 + i % PLANS}"])


def pipeline_child(folder: str, state_dir: str) -> dict[str, Any]:
    """Runs in a fresh process: one live pass over the folder; returns figures and peak RSS."""
    import httpx

    from sync.app import build_app
    from sync.config import Settings
    tmp = Path(state_dir)
    _configure_logs(tmp / "pipeline.log.jsonl")
    counts = {"GET": 0, "POST": 0}
    next_id = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        counts[request.method] = counts.get(request.method, 0) + 1
        if request.method == "GET":   # the plan's currency, read once per plan then learned
            plan_id = int(request.url.path.rstrip("/").rsplit("/", 1)[-1])
            return httpx.Response(200, json={"id": plan_id, "student_id": plan_id, "currency": "PKR",
                                             "status": "active", "installments": []})
        next_id[0] += 1
        body = json.loads(request.content)
        return httpx.Response(201, json={"id": next_id[0], "fee_plan_id": 1, "amount": body["amount"],
                                         "receipt_number": f"RCP-{next_id[0]:07d}", "status": "received",
                                         "payment_method": body["payment_method"]})
    settings = Settings(
        state_path=str(tmp / "state.db"), log_format="json",
        lms={"base_url": "http://lms.invalid/api/v1/public", "api_key": "zl_bench_key_0123456789",
             "rate_limit_per_minute": 6000},
        sources={"csv": {"connector": "files", "settings": {"folder": folder}}})
    app = build_app(settings, lms_transport=httpx.MockTransport(handler), pacing=False)
    t0 = time.perf_counter()
    result = app.engine.run_once("csv", datetime.now(UTC))
    seconds = time.perf_counter() - t0
    app.close()
    pushed = result.counts.get("pushed", 0)
    return {"status": result.status, "pushed": pushed, "seconds": round(seconds, 2),
            "receipts_per_second": round(pushed / seconds, 1), "lms_gets": counts["GET"], "lms_posts": counts["POST"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def bench_pipeline(sizes: list[int], tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"csv_rows_per_file": CSV_ROWS_PER_FILE, "plans": PLANS, "runs": []}
    for n in sizes:
        folder = tmp / f"drop-{n}"
        write_csv_folder(folder, n)
        state_dir = tmp / f"pipeline-{n}"
        state_dir.mkdir()
        proc = subprocess.run([sys.executable, __file__, "--pipeline-child", str(folder), str(state_dir)],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"pipeline child for {n} failed:\n{proc.stderr[-3000:]}")
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        run["receipts"] = n
        out["runs"].append(run)
        print(f"  pipeline {n:>7,}: {run['receipts_per_second']:,} receipts/s, peak RSS {run['peak_rss_mb']} MB",
              file=sys.stderr, flush=True)
    return out


# --- report ----------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def table(res: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str]] = []

    def add(name: str, value: Any, target: str, ok: bool | None) -> None:
        rows.append((name, str(value), target, "-" if ok is None else ("met" if ok else "MISSED")))
    if "backfill" in res:
        b = res["backfill"]
        add(f"backfill {b['receipts']:,} receipts: wall time", f"{b['wall_seconds']} s (ERP fake answering lists: "
            f"{b['erp_fake_seconds'].get('list', 0)} s, page size {b['erp_page_size']})", "", None)
        add("  LMS requests/s / limit", f"{b['lms_requests_per_second']} / {b['limit_per_minute'] / 60:g} = "
            f"{b['ratio_to_limit']}", ">= 0.95", b["ratio_to_limit"] >= 0.95)
        add("  LMS requests per receipt", f"{b['lms_requests_per_receipt']} ({b['lms_requests']:,})", "<= 1.02",
            b["lms_requests_per_receipt"] <= 1.02)
        add("  429 answers", b["lms_429"], "0", b["lms_429"] == 0)
        add("  LMS payments / distinct", f"{b['lms_payments']:,} / {b['lms_distinct_receipts']:,}",
            f"{b['receipts']:,}", b["lms_payments"] == b["lms_distinct_receipts"] == b["receipts"])
    if "pipeline" in res:
        runs = {r["receipts"]: r for r in res["pipeline"]["runs"]}
        for n, r in sorted(runs.items()):
            add(f"pipeline {n:,} receipts: receipts/s", f"{r['receipts_per_second']:,}", ">= 10,000",
                r["receipts_per_second"] >= 10_000)
            add(f"  peak RSS at {n:,}", f"{r['peak_rss_mb']} MB", "< 200 MB", r["peak_rss_mb"] < 200)
        if len(runs) >= 2:
            small, big = runs[min(runs)], runs[max(runs)]
            growth = big["peak_rss_mb"] / small["peak_rss_mb"] - 1
            res["pipeline"]["rss_growth"] = round(growth, 4)
            add(f"  RSS {max(runs):,} vs {min(runs):,}", f"{growth:+.1%}", "<= +20%", growth <= 0.20)
    if "idle" in res:
        for t in res["idle"]["ticks"]:
            label = "first live pass after backfill" if t["first_live_pass"] else f"idle tick {t['tick']}"
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(t["erp_by_kind"].items())) or "none"
            ok = None if t["first_live_pass"] else (t["lms_requests"] == 0 and set(t["erp_by_kind"]) <= {"list"})
            add(f"idle: {label}", f"ERP {kinds}; LMS {t['lms_requests']}", "ERP list only, LMS 0", ok)
    w = [max(len(r[i]) for r in rows + [("figure", "measured", "target", "")]) for i in range(4)]
    line = "  ".join(h.ljust(w[i]) for i, h in enumerate(("figure", "measured", "target", "")))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    m = res["machine"]
    out.append(f"machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}, {m['platform']}; load average "
               f"{m['load_average_at_start']} at start, {m.get('load_average_at_end')} at end")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="backfill,pipeline,idle", help="comma list of backfill,pipeline,idle")
    p.add_argument("--backfill-receipts", type=int, default=20_000)
    p.add_argument("--limit", type=int, default=6_000, help="LMS requests per minute per key")
    p.add_argument("--pipeline-sizes", default="10000,100000")
    p.add_argument("--idle-ticks", type=int, default=3)
    p.add_argument("--page-size", type=int, default=1000, help="ERPNext list page size for the backfill (max 1000)")
    p.add_argument("--json", default="feesync-bench.json", help="where to write the results")
    p.add_argument("--pipeline-child", nargs=2, metavar=("FOLDER", "STATE_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.pipeline_child:
        print(json.dumps(pipeline_child(*args.pipeline_child)))
        return 0
    parts = {x.strip() for x in args.only.split(",") if x.strip()}
    res: dict[str, Any] = {"machine": machine(), "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    # ignore_cleanup_errors: a pacing-bucket thread may still be closing its file when the folder goes
    with tempfile.TemporaryDirectory(prefix="feesync-bench-", ignore_cleanup_errors=True) as d:
        tmp = Path(d)
        log_fh = _configure_logs(tmp / "bench.log.jsonl")
        if parts & {"backfill", "idle"}:
            print(f"backfill of {args.backfill_receipts:,} receipts at {args.limit:,}/min ...", file=sys.stderr,
                  flush=True)
            out = bench_backfill_and_idle(args.backfill_receipts, args.limit, tmp, args.idle_ticks, args.page_size)
            if "backfill" in parts:
                res["backfill"] = out["backfill"]
            if "idle" in parts:
                res["idle"] = out["idle"]
        if "pipeline" in parts:
            print("local pipeline ...", file=sys.stderr, flush=True)
            res["pipeline"] = bench_pipeline([int(x) for x in args.pipeline_sizes.split(",")], tmp)
        log_fh.close()
    res["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    text = table(res)
    print(text)
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
