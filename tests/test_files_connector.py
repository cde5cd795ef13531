"""The CSV drop-folder connector end to end: rows become payments once, bad rows become named conflicts."""

from __future__ import annotations

from sqlalchemy import select

from sync.app import build_app
from sync.config import Settings
from sync.sandbox.lms import LmsSandbox
from sync.state import conflicts
from tests import scenario

HEADER = "document_id,date,student,amount,currency,method,reference_number,invoice\n"


def _app(tmp_path, lms, folder):
    settings = Settings(state_path=str(tmp_path / "state.db"),
                        lms={"base_url": lms.base_url, "api_key": scenario.LMS_KEY,
                             "limiter_path": str(tmp_path / "p.db")},
                        sources={"bank": {"connector": "files", "settings": {"folder": str(folder)},
                                          "mapping": {"customers": {"S-0": "100", "S-1": "101"}}}})
    return build_app(settings, sleep=lambda s: None)


def test_csv_rows_are_pushed_once_and_a_file_is_read_once(tmp_path):
    """Three good rows -> three payments; a second run and a re-dropped copy push nothing more."""
    scn = scenario.build(n_students=2, receipts_per_student=2)
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "nov.csv").write_text(HEADER + "BR-1,2026-11-02,S-0,1000,PKR,Cash,,plan:5000\n"
                                    "BR-2,2026-11-03,student1@example.pk,1500,PKR,Cheque,CHQ-77,\n"
                                    'BR-3,2026-11-04,S-1,"2,000.00",PKR,Wire Transfer,TRX-9,plan:5001\n')
    with LmsSandbox(scn["lms_seed"]) as lms:
        app = _app(tmp_path, lms, folder)
        try:
            first = app.engine.run_once("bank")
            pays = sorted(lms.payments(), key=lambda p: p["reference_number"])
            assert first.counts["pushed"] == 3
            assert [(p["reference_number"], p["amount"], p["payment_method"], p["fee_plan_id"]) for p in pays] == [
                ("BR-1", 1000, "cash", 5000), ("CHQ-77", 1500, "cheque", 5001), ("TRX-9", 2000, "bank_transfer", 5001)]
            assert app.engine.run_once("bank").counts.get("pushed", 0) == 0
            (folder / "nov-copy.csv").write_text((folder / "nov.csv").read_text() + "\n")
            again = app.engine.run_once("bank")
            assert again.counts.get("pushed", 0) == 0 and again.counts["unchanged"] == 3
            assert len(lms.payments()) == 3
        finally:
            app.close()


def test_malformed_rows_become_conflicts_naming_file_and_row(tmp_path):
    """Bad date, bad amount, fraction and a missing student each open a conflict naming file and row."""
    scn = scenario.build(n_students=2, receipts_per_student=2)
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "bad.csv").write_text(HEADER + "BR-1,2026-13-45,S-0,1000,PKR,Cash,,plan:5000\n"
                                    "BR-2,2026-11-03,S-0,abc,PKR,Cash,,plan:5000\n"
                                    "BR-3,2026-11-03,S-0,10.5,PKR,Cash,,plan:5000\n"
                                    "BR-4,2026-11-03,,1000,PKR,Cash,,plan:5000\n"
                                    "BR-5,2026-11-03,S-0,1000,PKR,Cash,,plan:5000\n")
    with LmsSandbox(scn["lms_seed"]) as lms:
        app = _app(tmp_path, lms, folder)
        try:
            result = app.engine.run_once("bank")
            with app.store.engine.connect() as c:
                rows = {r.doc_id: (r.kind, r.detail) for r in c.execute(select(conflicts))}
        finally:
            app.close()
        assert result.counts["pushed"] == 1 and [p["reference_number"] for p in lms.payments()] == ["BR-5"]
    assert rows["BR-1"][0] == "malformed_document" and "bad.csv row 2" in rows["BR-1"][1] and "date" in rows["BR-1"][1]
    assert rows["BR-2"][0] == "malformed_document" and "bad.csv row 3" in rows["BR-2"][1]
    assert rows["BR-3"][0] == "fractional_amount"
    assert rows["BR-4"][0] == "malformed_document" and "bad.csv row 5" in rows["BR-4"][1] and "student" in rows["BR-4"][1]


def _open_conflicts(app):
    with app.store.engine.connect() as c:
        return {r.doc_id: (r.kind, r.detail) for r in c.execute(select(conflicts).where(conflicts.c.status == "open"))}


def test_files_that_cannot_be_read_whole_are_never_read_in_part_or_skipped_in_silence(tmp_path):
    """A file still being written waits; an unclosed quote, a repeated header column and a file over
    max_file_bytes each open a conflict naming the file, and none of their rows is pushed by guess."""
    import os
    import time
    scn = scenario.build(n_students=2, receipts_per_student=2)
    folder = tmp_path / "drop"
    folder.mkdir()
    partial = folder / "a-partial.csv"
    partial.write_text(HEADER + "P-1,2026-11-02,S-0,1000,PKR,Cash,,plan:5000\nP-2,2026-11-02,S-0,15")  # no line end yet
    (folder / "b-quote.csv").write_text(HEADER + 'Q-1,2026-11-02,S-0,1000,PKR,Cash,,plan:5000\n'
                                        'Q-2,2026-11-02,S-0,"600,PKR,Cash,,plan:5000\n'
                                        'Q-3,2026-11-02,S-0,700,PKR,Cash,,plan:5000\n')
    (folder / "c-repeat.csv").write_text("document_id,document_id,date,student,amount,currency\n"
                                         "R-1,R-2,2026-11-02,S-0,1000,PKR\n")
    (folder / "d-big.csv").write_text(HEADER + "".join(f"B-{i},2026-11-02,S-0,1000,PKR,Cash,,plan:5000\n"
                                                       for i in range(200)))
    with LmsSandbox(scn["lms_seed"]) as lms:
        settings = Settings(state_path=str(tmp_path / "state.db"),
                            lms={"base_url": lms.base_url, "api_key": scenario.LMS_KEY,
                                 "limiter_path": str(tmp_path / "p.db")},
                            sources={"bank": {"connector": "files",
                                              "settings": {"folder": str(folder), "max_file_bytes": 4000},
                                              "mapping": {"customers": {"S-0": "100"}}}})
        app = build_app(settings, sleep=lambda s: None)
        try:
            app.engine.run_once("bank")
            found = _open_conflicts(app)
            notes = sorted(p["notes"] for p in lms.payments())
            assert notes == ["erp:bank:Q-1"], notes    # only the row before the unclosed quote
            assert "cannot be read as CSV from line 3" in found["b-quote.csv"][1]
            assert "header repeats document_id" in found["c-repeat.csv"][1]
            assert "above max_file_bytes 4,000; it was not read" in found["d-big.csv"][1]
            assert not any(k.startswith(("P-", "a-partial")) for k in found)   # waiting, not a conflict

            app.engine.run_once("bank")            # nothing changed: no second conflict for the big file
            assert len([k for k in _open_conflicts(app) if k == "d-big.csv"]) == 1

            with partial.open("a") as fh:          # the writer finishes the row
                fh.write("00,PKR,Cash,,plan:5000\n")
            app.engine.run_once("bank")
            paid = {p["notes"]: p["amount"] for p in lms.payments()}
            assert paid["erp:bank:P-1"] == 1000 and paid["erp:bank:P-2"] == 1500

            stale = folder / "e-stale.csv"          # no final line end, but quiet for longer than settle_seconds
            stale.write_text(HEADER + "S-9,2026-11-02,S-0,400,PKR,Cash,,plan:5000")
            old = time.time() - 120
            os.utime(stale, (old, old))
            app.engine.run_once("bank")
            assert {p["notes"]: p["amount"] for p in lms.payments()}["erp:bank:S-9"] == 400
        finally:
            app.close()


def test_impossible_settings_are_refused_by_check_and_once_with_every_problem_named(tmp_path):
    """Not a traceback at the first read: `check` and `once` exit 2 naming each bad value."""
    from tests import proc
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_path = "{tmp_path / "s.db"}"\n[lms]\nbase_url = "http://127.0.0.1:9/api/v1/public"\n'
                   f'timeout_seconds = 1e400\n[sources.bank]\nconnector = "files"\ninterval = "-5m"\n'
                   f'lag = "1000000000d"\n[sources.bank.settings]\nfolder = "{tmp_path}"\nencoding = "nope"\n'
                   'delimiter = ";;"\n')
    for cmd in (["check"], ["once"]):
        out = proc.run("--config", str(cfg), *cmd, secrets=False,
                       extra_env={"FEESYNC_LMS__API_KEY": scenario.LMS_KEY})
        text = " ".join((out.stdout + out.stderr).split())
        assert out.returncode in (1, 2) and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert "lms.timeout_seconds: Input should be less than or equal to 3600" in text, text
        assert "sources.bank.interval" in text and "between 0s and" in text, text
        assert "sources.bank.lag" in text, text
    settings_cfg = tmp_path / "d.toml"
    settings_cfg.write_text(cfg.read_text().replace("timeout_seconds = 1e400\n", "")
                            .replace('interval = "-5m"', 'interval = "5m"').replace('lag = "1000000000d"\n', ""))
    out = proc.run("--config", str(settings_cfg), "once", secrets=False,
                   extra_env={"FEESYNC_LMS__API_KEY": scenario.LMS_KEY})
    text = " ".join(out.stderr.split())
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "unknown encoding 'nope'" in text and "delimiter ';;' must be one character" in text, text


def test_plain_words_for_a_row_without_method_and_for_retrying_a_malformed_row(tmp_path):
    from sync import ops
    scn = scenario.build(n_students=2, receipts_per_student=2)
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "m.csv").write_text("document_id,date,student,amount,currency,invoice\n"
                                  "M-1,2026-11-02,S-0,1000,PKR,plan:5000\nM-2,2026-11-02,S-0,abc,PKR,plan:5000\n")
    with LmsSandbox(scn["lms_seed"]) as lms:
        app = _app(tmp_path, lms, folder)
        try:
            app.engine.run_once("bank")
            found = _open_conflicts(app)
            assert found["M-1"] == ("unknown_payment_method", "the document names no mode of payment (an empty "
                                    "or missing method); set mapping.default_payment_method, or fill it in the ERP")
            cid = next(r["id"] for r in ops.list_conflicts(app.store) if r["doc_id"] == "M-2")
            [out] = ops.retry_conflicts(app, [cid])
            assert out["outcome"].startswith("cannot be retried: the ERP document itself is malformed; correct it")
            assert out["status"] == "open"
        finally:
            app.close()
