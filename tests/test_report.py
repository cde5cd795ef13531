"""`feesync report`: one self-contained HTML file that Chromium opens offline with the same totals as
`conflicts list --json`, a print stylesheet, and CSV files."""

from __future__ import annotations

import csv
import io
import json
import re
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

from click.testing import CliRunner

from sync.cli import cli
from tests.test_ops_scenario import synced
from tests.test_web_browser import artifact, dump_dom, run_chromium


class _Numbers(HTMLParser):
    """Collects what the rendered DOM shows: the open total, money per currency, and the by-kind rows."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[dict[str, str]] = []
        self.total: str = ""
        self.money: dict[str, str] = {}
        self.kinds: dict[str, dict] = {}
        self.conflict_rows: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        a["_tag"] = tag
        self.stack.append(a)
        for name in ("src", "href"):
            if a.get(name) and re.match(r"^(https?:)?//", a[name]):
                self.external.append(a[name])
        if tag == "tr" and "data-id" in a and self._inside("table", "conflicts"):
            self.conflict_rows.append(a["data-id"])

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()["_tag"] == tag:
                break

    def _inside(self, tag, id_):
        return any(x["_tag"] == tag and x.get("id") == id_ for x in self.stack)

    def _row_kind(self):
        return next((x["data-kind"] for x in reversed(self.stack) if x["_tag"] == "tr" and "data-kind" in x), None)

    def handle_data(self, data):
        text = data.strip()
        if not text or not self.stack:
            return
        top = self.stack[-1]
        if top.get("id") == "total-open":
            self.total += text
        elif top["_tag"] == "li" and "money" in top.get("class", "") and self._inside("ul", "money-at-stake"):
            self.money[top["data-currency"]] = text
        elif self._inside("table", "by-kind"):
            kind = self._row_kind()
            if kind and "count" in top.get("class", ""):
                self.kinds.setdefault(kind, {})["count"] = text
            elif kind and "money" in top.get("class", ""):
                self.kinds.setdefault(kind, {}).setdefault("money", {})[top["data-currency"]] = text


def shown_amount(text: str) -> tuple[str, Decimal]:
    """'61,700.5 PKR' -> ('PKR', Decimal('61700.5'))"""
    number, currency = text.rsplit(" ", 1)
    return currency, Decimal(number.replace(",", ""))


def test_the_report_opens_offline_in_chromium_with_the_totals_of_conflicts_list(sandboxes, tmp_path, monkeypatch):
    """Chromium (no network) renders the report; its total, money and by-kind numbers equal `conflicts list --json`."""
    s = synced(sandboxes, tmp_path, monkeypatch)
    try:
        runner = CliRunner()
        listed = json.loads(runner.invoke(cli, ["--config", str(s.config), "conflicts", "list", "--json"],
                                          env=s.env).stdout)
        out_dir = tmp_path / "out"
        r = runner.invoke(cli, ["--config", str(s.config), "report", "--out", str(out_dir), "--json"], env=s.env)
        assert r.exit_code == 0, r.output
        paths = json.loads(r.stdout)
        html_path = Path(paths["html"])
        html = html_path.read_text()
        assert "@media print" in html and "<script" not in html and "<link" not in html and "url(" not in html

        dom = dump_dom(html_path.as_uri(), tmp_path)
        artifact("report.html").write_text(html)
        seen = _Numbers()
        seen.feed(dom)
        assert seen.external == []
        assert int(seen.total) == listed["total"] == 10
        assert dict(shown_amount(t) for t in seen.money.values()) == {
            c: Decimal(v) for c, v in listed["money_at_stake"].items()}
        assert {k: int(v["count"]) for k, v in seen.kinds.items()} == listed["by_kind"]
        assert {k: dict(shown_amount(t) for t in v["money"].values()) for k, v in seen.kinds.items()} == {
            k: {c: Decimal(a) for c, a in v.items()} for k, v in listed["amount_by_kind"].items()}
        assert sorted(int(i) for i in seen.conflict_rows) == sorted(c["id"] for c in listed["conflicts"])
        for c in listed["conflicts"]:
            assert c["doc_id"] in dom

        shot = run_chromium(["--screenshot=" + str(artifact("report.png")), "--window-size=1280,2400",
                             html_path.as_uri()], tmp_path)
        assert shot.returncode == 0 and artifact("report.png").stat().st_size > 10_000
    finally:
        s.app.close()


def test_the_report_prints_to_pdf_and_writes_csv_files_with_every_conflict(sandboxes, tmp_path, monkeypatch):
    """Chromium prints the report to PDF; conflicts.csv lists every open conflict and totals.csv the sums."""
    s = synced(sandboxes, tmp_path, monkeypatch)
    try:
        r = CliRunner().invoke(cli, ["--config", str(s.config), "report", "--json"], env=s.env)
        paths = json.loads(r.stdout)
        assert Path(paths["html"]).parent == tmp_path / "reports"          # report_dir by default
        pdf = artifact("report.pdf")
        done = run_chromium(["--no-pdf-header-footer", f"--print-to-pdf={pdf}", Path(paths["html"]).as_uri()],
                            tmp_path)
        assert done.returncode == 0 and pdf.read_bytes()[:5] == b"%PDF-"
        rows = list(csv.DictReader(io.StringIO(Path(paths["conflicts_csv"]).read_text())))
        assert len(rows) == 10 and all(r["amount"] and r["next_step"] for r in rows)
        totals = list(csv.DictReader(io.StringIO(Path(paths["totals_csv"]).read_text())))
        stake = {t["currency"]: t["amount"] for t in totals if t["group"] == "money_at_stake"}
        assert stake == {"PKR": "61700.5", "USD": "150"}
        assert {t["name"]: int(t["count"]) for t in totals if t["group"] == "kind"}["unknown_student"] == 3
    finally:
        s.app.close()


def test_the_daemon_schedule_setting_accepts_daily_hourly_durations_crontab_and_off():
    """report_schedule: daily (06:00 local), hourly, 6h, a crontab line or off; anything else is refused."""
    import pytest

    from sync.report import parse_schedule
    assert "hour='6'" in str(parse_schedule("daily", "Asia/Karachi"))
    assert "minute='0'" in str(parse_schedule("hourly", "UTC"))
    assert "interval[6:00:00]" in str(parse_schedule("6h", "UTC"))
    assert "hour='7'" in str(parse_schedule("30 7 * * 1-5", "UTC"))
    assert parse_schedule("off", "UTC") is None
    for bad in ("sometimes", "1s", "61 * * * *"):
        with pytest.raises(ValueError):
            parse_schedule(bad, "UTC")
