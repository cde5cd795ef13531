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
