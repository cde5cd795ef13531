"""Several institutes in one daemon: one key each, own rate budget, failures stay inside their institute."""

from __future__ import annotations

import copy
import io
import json

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from sync import logs
from sync.app import build_app
from sync.config import Settings
from sync.metrics import app_collector, render
from sync.sandbox.erpnext import ERPNextFake
from sync.sandbox.lms import LmsSandbox
from sync.state import documents, runs
from tests import scenario

KEY_B = "zl_test_key_institute_b_77"


def _two_institutes():
    a = scenario.build(n_students=2, receipts_per_student=3)
    b_erp = copy.deepcopy(a["erp_data"])
    for inv in b_erp["documents"]["Sales Invoice"]:
        inv["custom_zensbot_fee_plan_id"] = str(int(inv["custom_zensbot_fee_plan_id"]) + 1000)
    inst_b = copy.deepcopy(a["lms_seed"]["institutes"][0])
    inst_b.update(id="inst-b", name="Institute B", api_keys=[{"key": KEY_B, "name": "feesync-b",
                                                              "scopes": ["fees:read", "fees:write", "students:read"]}])
    inst_b["batches"] = [{"id": 1001, "name": "Python Bootcamp (B)"}]
    for st in inst_b["students"]:
        st["id"] += 1000
    for plan in inst_b["fee_plans"]:
        plan["id"] += 1000
        plan["student_id"] += 1000
        plan["batch_id"] = 1001
        for inst in plan["installments"]:
            inst["id"] += 1000
    seed = {"rate_limit_per_minute": 100000, "institutes": [a["lms_seed"]["institutes"][0], inst_b]}
    return seed, a["erp_data"], b_erp


def test_revoking_one_institutes_key_stops_only_its_sources(tmp_path):
    """Institute A's key is revoked: its source stops with a clear error; institute B keeps syncing."""
    seed, erp_a_data, erp_b_data = _two_institutes()
    stream = io.StringIO()
    logs.configure("json", "info", stream=stream)
    with LmsSandbox(seed) as lms, ERPNextFake(erp_a_data) as erp_a, ERPNextFake(erp_b_data) as erp_b:
        def src(url):
            return {"connector": "erpnext", "lag": "0s",
                    "settings": {"url": url, "api_key": scenario.ERP_KEY, "api_secret": scenario.ERP_SECRET}}
        settings = Settings(
            state_path=str(tmp_path / "state.db"),
            institutes={
                "a": {"lms": {"base_url": lms.base_url, "api_key": scenario.LMS_KEY,
                              "limiter_path": str(tmp_path / "pace-a.db")}, "sources": {"erp-a": src(erp_a.url)}},
                "b": {"lms": {"base_url": lms.base_url, "api_key": KEY_B,
                              "limiter_path": str(tmp_path / "pace-b.db")}, "sources": {"erp-b": src(erp_b.url)}}})
        app = build_app(settings, sleep=lambda s: None)
        try:
            assert app.engine.run_once("erp-a").counts["pushed"] == 6
            assert app.engine.run_once("erp-b").counts["pushed"] == 6
            lms.revoke_key(scenario.LMS_KEY)
            moment = scenario.datetime(2026, 11, 5, tzinfo=scenario.KHI)
            erp_a.insert("Payment Entry", scenario.new_receipt(50, "Student 0", 1000, "ACC-SINV-2026-00001", moment))
            erp_b.insert("Payment Entry", scenario.new_receipt(50, "Student 0", 1000, "ACC-SINV-2026-00001", moment))
            stopped = app.engine.run_once("erp-a")
            going = app.engine.run_once("erp-b")
            with app.store.engine.connect() as c:
                insts = dict(c.execute(select(documents.c.source, documents.c.institute).distinct()).all())
                run_insts = set(c.execute(select(runs.c.institute)).scalars())
            metrics_text = render(app_collector(app)).decode()
        finally:
            app.close()
            logs.configure("json", "warning")
        by_inst = {}
        for p in lms.payments():
            by_inst.setdefault(p["fee_plan_id"] >= 6000, []).append(p)
    assert stopped.status == "stopped" and "LMS refused the API key (401)" in stopped.error
    assert going.status == "ok" and going.counts["pushed"] == 1
    assert len(by_inst[True]) == 7 and len(by_inst[False]) == 6      # B got its new receipt, A did not
    assert insts == {"erp-a": "a", "erp-b": "b"} and run_insts == {"a", "b"}
    # /metrics carries the institute: A's refused key is visible as A's, not as a process-wide total
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics_text) for s in f.samples}
    assert samples[("feesync_receipts_pushed_total", (("institute", "a"), ("source", "erp-a")))] == 6
    assert samples[("feesync_receipts_pushed_total", (("institute", "b"), ("source", "erp-b")))] == 7
    assert samples[("feesync_runs_total", (("institute", "a"), ("source", "erp-a"), ("status", "stopped")))] == 1
    assert samples[("feesync_lms_requests_total", (("institute", "a"), ("status", "401")))] >= 1
    assert ("feesync_lms_requests_total", (("institute", "b"), ("status", "401"))) not in samples
    assert samples[("feesync_lms_requests_total", (("institute", "b"), ("status", "201")))] == 7
    events = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    stop_events = [e for e in events if e.get("event") == "source.stopped"]
    assert stop_events and stop_events[0]["institute"] == "a" and stop_events[0]["source"] == "erp-a"
    for secret in (scenario.LMS_KEY, KEY_B, scenario.ERP_SECRET):
        assert secret not in stream.getvalue()


def test_each_institute_paces_under_its_own_key(tmp_path):
    """Every institute gets its own LMS client and its own pacing bucket (keyed by its API key)."""
    seed, erp_a_data, erp_b_data = _two_institutes()
    with LmsSandbox(seed) as lms, ERPNextFake(erp_a_data) as erp_a, ERPNextFake(erp_b_data) as erp_b:
        settings = Settings(
            state_path=str(tmp_path / "state.db"),
            institutes={
                "a": {"lms": {"base_url": lms.base_url, "api_key": scenario.LMS_KEY, "rate_limit_per_minute": 600},
                      "sources": {"erp-a": {"connector": "erpnext", "settings": {
                          "url": erp_a.url, "api_key": scenario.ERP_KEY, "api_secret": scenario.ERP_SECRET}}}},
                "b": {"lms": {"base_url": lms.base_url, "api_key": KEY_B, "rate_limit_per_minute": 1200},
                      "sources": {"erp-b": {"connector": "erpnext", "settings": {
                          "url": erp_b.url, "api_key": scenario.ERP_KEY, "api_secret": scenario.ERP_SECRET}}}}})
        app = build_app(settings)
        try:
            a, b = app.lms_clients["a"], app.lms_clients["b"]
            assert a is not b and a.limiter is not b.limiter
            assert a._bucket_name != b._bucket_name
            assert app.engine.lms_for("erp-a") is a and app.engine.lms_for("erp-b") is b
            assert a.settings.rate_limit_per_minute == 600 and b.settings.rate_limit_per_minute == 1200
        finally:
            app.close()


def _csv(folder, doc_id, plan_id):
    folder.mkdir(exist_ok=True)
    (folder / f"{doc_id}.csv").write_text(
        "document_id,date,student,amount,currency,method,reference_number,invoice\n"
        f"{doc_id},2026-11-02,Student 0,1000,PKR,Cash,,plan:{plan_id}\n", encoding="utf-8")


def test_two_institutes_in_one_config_file_a_revoked_key_stops_only_its_two_sources(tmp_path):
    """One TOML file, two institutes with two sources each (ERPNext + CSV), keys from the environment:
    after institute A's key is revoked, `feesync once` stops both of A's sources naming the refused key,
    while both of B's sources push their new receipts; exit 2 says a source failed."""
    from tests import proc
    seed, erp_a_data, erp_b_data = _two_institutes()
    (tmp_path / "erp_key").write_text(scenario.ERP_KEY)
    (tmp_path / "erp_secret").write_text(scenario.ERP_SECRET)
    with LmsSandbox(seed) as lms, ERPNextFake(erp_a_data) as erp_a, ERPNextFake(erp_b_data) as erp_b:
        lines = [f'state_path = "{tmp_path / "state.db"}"', 'log_format = "json"']
        for inst, erp in (("a", erp_a), ("b", erp_b)):
            lines += [f"[institutes.{inst}.lms]", f'base_url = "{lms.base_url}"',
                      f'limiter_path = "{tmp_path / f"pace-{inst}.db"}"', "max_attempts = 2",
                      f"[institutes.{inst}.sources.erp_{inst}]", 'connector = "erpnext"', 'lag = "0s"',
                      f"[institutes.{inst}.sources.erp_{inst}.settings]", f'url = "{erp.url}"',
                      f'api_key_file = "{tmp_path / "erp_key"}"', f'api_secret_file = "{tmp_path / "erp_secret"}"',
                      f"[institutes.{inst}.sources.csv_{inst}]", 'connector = "files"',
                      f"[institutes.{inst}.sources.csv_{inst}.settings]", f'folder = "{tmp_path / f"drop-{inst}"}"']
        cfg = tmp_path / "feesync.toml"
        cfg.write_text("\n".join(lines) + "\n")
        keys = {"FEESYNC_INSTITUTES__A__LMS__API_KEY": scenario.LMS_KEY, "FEESYNC_INSTITUTES__B__LMS__API_KEY": KEY_B}
        _csv(tmp_path / "drop-a", "CSV-A-1", 5000)
        _csv(tmp_path / "drop-b", "CSV-B-1", 6000)
        first = proc.run("--config", str(cfg), "once", "--json", secrets=False, extra_env=keys)
        assert first.returncode == 0, first.stderr[-2000:]
        pushed = {r["source"]: r["counts"].get("pushed", 0) for r in json.loads(first.stdout)["results"]}
        assert pushed == {"erp_a": 6, "csv_a": 1, "erp_b": 6, "csv_b": 1}

        lms.revoke_key(scenario.LMS_KEY)
        moment = scenario.datetime(2026, 11, 5, tzinfo=scenario.KHI)
        for erp in (erp_a, erp_b):
            erp.insert("Payment Entry", scenario.new_receipt(50, "Student 0", 1000, "ACC-SINV-2026-00001", moment))
        _csv(tmp_path / "drop-a", "CSV-A-2", 5000)
        _csv(tmp_path / "drop-b", "CSV-B-2", 6000)
        second = proc.run("--config", str(cfg), "once", "--json", secrets=False, extra_env=keys)
        results = {r["source"]: r for r in json.loads(second.stdout)["results"]}
        notes = [p["notes"] for p in lms.payments()]
    assert second.returncode == 2
    for name in ("erp_a", "csv_a"):
        assert results[name]["status"] == "stopped", results[name]
        assert "LMS refused the API key (401)" in results[name]["error"]
    assert {n: (results[n]["status"], results[n]["counts"].get("pushed", 0)) for n in ("erp_b", "csv_b")} == {
        "erp_b": ("ok", 1), "csv_b": ("ok", 1)}
    assert "erp:csv_b:CSV-B-2" in notes and "erp:csv_a:CSV-A-2" not in notes
    assert len(notes) == 16       # 7 + 7 from the first pass, B's two new receipts from the second
    stopped = [json.loads(line) for line in second.stderr.splitlines() if '"source.stopped"' in line]
    assert {(e["institute"], e["source"]) for e in stopped} == {("a", "erp_a"), ("a", "csv_a")}
