"""The LMS key and the ERP secret never appear in logs, reports, exceptions or the state store."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

from tests import proc, scenario

SECRETS = (scenario.LMS_KEY, scenario.ERP_SECRET, scenario.ERP_KEY)


def _assert_clean(text: str, where: str) -> None:
    for s in SECRETS:
        assert s not in text, f"a secret leaked into {where}"


def test_full_run_with_errors_prints_no_secret(sandboxes, tmp_path):
    """Conflicts, ERP auth failure, LMS key revoked, check, status, conflicts, report, a backfill and the daemon
    at debug level: no secret in any output, any file written (report, logs, state store)."""
    scn = scenario.build(n_students=3, receipts_per_student=2)
    # an unmappable receipt (unknown student) and a fractional one, so conflicts are printed too
    pes = scn["erp_data"]["documents"]["Payment Entry"]
    pes.append(scenario.new_receipt(700, "Nobody Known", 1000, None, scenario.datetime(2026, 11, 2, tzinfo=scenario.KHI)))
    scn["erp_data"]["documents"]["Customer"].append({"name": "Nobody Known", "customer_name": "Nobody Known",
                                                     "email_id": "nobody@example.pk"})
    frac = scenario.new_receipt(701, "Student 1", 1000, "ACC-SINV-2026-00002",
                                scenario.datetime(2026, 11, 2, 1, tzinfo=scenario.KHI))
    frac["paid_amount"] = 1000.5
    frac["references"][0]["allocated_amount"] = 1000.5
    pes.append(frac)
    lms, erp = sandboxes(scn)
    cfg = proc.write_config(tmp_path, lms, erp)
    outputs = []

    ok = proc.run("--config", str(cfg), "once")
    outputs.append(("once", ok))
    assert ok.returncode == 1                      # new conflicts
    listing = proc.run("--config", str(cfg), "conflicts", "list", "--json")
    outputs.append(("conflicts list", listing))
    kinds = {c["kind"] for c in json.loads(listing.stdout)["conflicts"]}
    assert {"unknown_student", "fractional_amount"} <= kinds
    outputs.append(("conflicts show", proc.run("--config", str(cfg), "conflicts", "show", "1", "--json")))
    outputs.append(("status", proc.run("--config", str(cfg), "status", "--json")))
    outputs.append(("check ok", proc.run("--config", str(cfg), "check")))
    report = proc.run("--config", str(cfg), "report", "--out", str(tmp_path / "report"), "--json")
    outputs.append(("report", report))
    assert report.returncode == 0 and list((tmp_path / "report").glob("*.html")), report.stderr[-1000:]
    debug = proc.run("--config", str(cfg), "backfill", "--source", "erp", "--since", "2026-10-01",
                     extra_env={"FEESYNC_LOG_LEVEL": "debug"})
    outputs.append(("backfill at debug level", debug))
    assert debug.returncode in (0, 1), debug.stderr[-1000:]
    daemon = proc.feesync("--config", str(cfg), "run", extra_env={"FEESYNC_LOG_LEVEL": "debug"}, text=True)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(daemon.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and daemon.poll() is None and not any(
                "run.finished" in line for line in err_lines):
            time.sleep(0.1)   # start-up and the first pass of the source
    finally:
        daemon.send_signal(signal.SIGTERM)
        d_out = daemon.stdout.read()
        daemon.wait(timeout=20)
        reader.join(timeout=5)
    d_err = "".join(err_lines)
    outputs.append(("run (daemon) at debug level", subprocess.CompletedProcess(daemon.args, daemon.returncode,
                                                                               d_out, d_err)))
    assert daemon.returncode == 0 and "run.finished" in d_out + d_err, (d_out + d_err)[-1500:]

    bad_erp = proc.run("--config", str(cfg), "once",
                       extra_env={"FEESYNC_SOURCES__ERP__SETTINGS__API_SECRET": "wrong-" + scenario.ERP_SECRET})
    outputs.append(("once bad erp secret", bad_erp))
    assert bad_erp.returncode == 2
    assert "ERP refused the credentials (401)" in bad_erp.stdout + bad_erp.stderr
    outputs.append(("check bad erp", proc.run("--config", str(cfg), "check", extra_env={
        "FEESYNC_SOURCES__ERP__SETTINGS__API_SECRET": "wrong-" + scenario.ERP_SECRET})))

    lms.revoke_key(scenario.LMS_KEY)
    erp.insert("Payment Entry", scenario.new_receipt(702, "Student 2", 1000, "ACC-SINV-2026-00003",
                                                     scenario.datetime(2026, 11, 3, tzinfo=scenario.KHI)))
    revoked = proc.run("--config", str(cfg), "once")
    outputs.append(("once revoked key", revoked))
    assert revoked.returncode == 2
    assert "LMS refused the API key (401)" in revoked.stdout + revoked.stderr
    check = proc.run("--config", str(cfg), "check", "--json")
    outputs.append(("check revoked", check))
    assert check.returncode == 1 and json.loads(check.stdout)["ok"] is False

    for name, out in outputs:
        _assert_clean(out.stdout, f"{name} stdout")
        _assert_clean(out.stderr, f"{name} stderr")
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.name != "feesync.toml":
            data = f.read_bytes().decode("latin-1")
            _assert_clean(data, str(f.relative_to(tmp_path)))


def test_a_secret_is_redacted_also_in_the_escaped_forms_error_texts_quote_it_in():
    from sync import logs
    logs.register_secret("zl_Esc\nKey\u00e9")
    for text in ("Illegal header value b'zl_Esc\\nKey\\xc3\\xa9'", "'zl_Esc\\nKey\u00e9'", '"zl_Esc\\nKey\\u00e9"'):
        assert "zl_Esc" not in logs.redact(text), text
