"""The connector conformance kit: one reusable pytest class that every connector's tests run against its fake.

A connector's test module subclasses `ConnectorConformance` and provides a function-scoped
`harness` fixture returning a `Harness` (not started) for its fake::

    import pytest
    from sync.testing import ConnectorConformance
    from sync.testing.harnesses import OdooHarness

    class TestOdooConformance(ConnectorConformance):
        @pytest.fixture
        def harness(self):
            return OdooHarness()

Every test then drives the real engine: `build_app` with the connector loaded through the
`feesync.connectors` entry-point group, a real SQLite state file and the LMS sandbox on
loopback. Nothing of feesync's own code paths is mocked; a kill is a `BaseException` raised
from `engine.on_event` (what a SIGKILL leaves behind: nothing after the last commit).

What it checks (one test method each): settings validate and an invalid one is refused naming
the field; secrets stay out of `repr`, logs and error texts; events are normalised (`Decimal`
money, aware UTC positions, ascending when `ordered`, `Unchanged` once decided); a fetch from any
yielded position leaves no gap; runs killed after k documents resume with no gap and no
duplicate push; ties on the change time across page boundaries; a document changing between
two pages; a cancellation after push opens `reversed_in_erp`; broken credentials stop the
source (cursor kept, no per-document conflicts); the source's own server errors and rate limits
defer or retry, never conflict, never lose a receipt; a deletion after push leaves
`Reconcilable.snapshot()`; and an end-to-end story (count and sum equal, idle second run,
cancellation, deletion reported by the reconcile pass of `sync.reconcile`).

A harness raises `pytest.skip("why")` from a capability its source truly lacks (a drop folder
has no pages and no credentials; TallyPrime's AlterIDs never tie); the test is then reported as
skipped with that reason.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pytest
import structlog

from sync import connector as registry
from sync import logs
from sync.app import App, build_app
from sync.config import Settings, SourceSettings, build_connector_settings
from sync.connector import Connector, Reconcilable
from sync.engine import RunResult
from sync.errors import ConfigError, FeesyncError, RetryLater, StopSource
from sync.events import FeeEvent, PaymentReceived, Position, Unchanged
from sync.sandbox.lms import LmsSandbox
from sync.state import Store, conflicts
from sync.testing.helpers import MemoryContext, seed_key

SOURCE = "conf"                        # the source name the kit configures; notes are erp:conf:<doc id>
NOTES_PREFIX = f"erp:{SOURCE}:"
PAGE = 4                               # page size of the ordinary tests (several pages with small data)
TIE_PAGE = 10                          # page size of the tie test (<= 10, the tie is >= 25)
ERROR_KINDS = ("server_error", "rate_limit")
EARLY = datetime(2000, 1, 1, tzinfo=UTC)   # a snapshot window start that holds every test receipt


@runtime_checkable
class Harness(Protocol):
    """What a connector's fake offers the kit. Raise `pytest.skip(reason)` for a capability the source lacks."""

    connector: str   # the entry-point name in `feesync.connectors`

    def start(self, workdir: Path) -> None:
        """Start the fake (server, database or folder) with no receipts; `workdir` is a fresh temp dir."""

    def stop(self) -> None: ...

    def settings(self, *, page_size: int) -> dict[str, Any]:
        """Valid `sources.<name>.settings` for the running fake, with this page size where pages exist."""

    def secrets(self) -> list[str]:
        """The secret values inside `settings()` (skip when the source has no credentials)."""

    def invalid_settings(self) -> tuple[dict[str, Any], str]:
        """Settings the connector must refuse, and the name of the offending field."""

    def lms_seed(self) -> dict[str, Any]:
        """An LMS sandbox seed under which every receipt this harness adds is mappable."""

    def mapping(self) -> dict[str, Any]:
        """`sources.<name>.mapping` for that seed."""

    def add_receipts(self, n: int, *, same_change_time: bool = False) -> list[str]:
        """Add n receipts (all with one change time when asked); their document ids as the connector names them."""

    def receipts(self) -> dict[str, Decimal]:
        """Every live receipt (not cancelled, not deleted) -> its current amount: what the LMS must hold."""

    def change(self, doc_id: str) -> None:
        """Change a receipt's amount (and its change marker) in the source."""

    def cancel(self, doc_id: str) -> None: ...

    def delete(self, doc_id: str) -> None: ...

    def break_auth(self) -> None:
        """Make the source refuse this connector's credentials (or access) from now on."""

    def inject_errors(self, kind: str, count: int) -> None:
        """The source answers its own error shape for `kind` ("server_error" | "rate_limit") `count` times."""

    def clear_errors(self) -> None: ...

    def between_pages(self, callback: Callable[[], None], connector: Any) -> None:
        """Call `callback()` once during the next fetch, after the source answered the first page of
        receipts and before it answers the next. `connector` is the instance the engine will use."""


class Killed(BaseException):
    """Stands for a kill: not an Exception, so nothing in the engine catches it."""


def kill_after(n: int) -> Callable[[str, FeeEvent], None]:
    """An `engine.on_event` hook that kills the run when the (n+1)-th receipt arrives (n were handled)."""
    handled = [0]

    def hook(_source: str, event: FeeEvent) -> None:
        if isinstance(event, PaymentReceived):
            if handled[0] >= n:
                raise Killed(f"killed after {n} receipts")
            handled[0] += 1
    return hook


@contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Everything feesync logs (structlog, JSON, debug level) plus stdlib records: httpx at debug
    (its request lines carry full URLs), everything else at warning."""
    buf = io.StringIO()
    saved = structlog.get_config()
    handler = logging.StreamHandler(buf)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    httpx_logger = logging.getLogger("httpx")
    saved_level = httpx_logger.level
    root.addHandler(handler)
    httpx_logger.setLevel(logging.DEBUG)
    logs.configure("json", "debug", stream=buf)
    try:
        yield buf
    finally:
        structlog.configure(**saved)
        root.removeHandler(handler)
        httpx_logger.setLevel(saved_level)


def _error_texts(exc: BaseException | None) -> list[str]:
    out: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    return out


class Kit:
    """One test's world: the harness's fake, an LMS sandbox, a state file, apps built like a user's."""

    def __init__(self, harness: Harness, tmp_path: Path) -> None:
        self.h = harness
        self.tmp = tmp_path
        self.state_path = tmp_path / "state.db"
        self.lms: LmsSandbox | None = None
        self._apps: list[App] = []
        work = tmp_path / "source"
        work.mkdir()
        harness.start(work)
        try:
            seed = harness.lms_seed()
            self.lms_key = seed_key(seed)
            self.lms = LmsSandbox(seed).start()
        except BaseException:
            harness.stop()
            raise

    def close(self) -> None:
        for app in self._apps:
            try:
                app.close()
            except Exception:  # noqa: BLE001 - teardown goes on
                pass
        if self.lms is not None:
            self.lms.stop()
        self.h.stop()

    # --- configuration and apps ----------------------------------------------------------------
    def settings(self, *, page_size: int = PAGE, lookback: str = "0s",
                 connector_settings: dict[str, Any] | None = None) -> Settings:
        """A user's configuration. `lookback = 0s` makes a restart read from exactly the stored cursor."""
        assert self.lms is not None
        conf = connector_settings if connector_settings is not None else self.h.settings(page_size=page_size)
        return Settings(
            state_path=str(self.state_path), log_format="json", report_dir=str(self.tmp / "reports"),
            lms={"base_url": self.lms.base_url, "api_key": self.lms_key, "rate_limit_per_minute": 100000,
                 "max_attempts": 3, "max_retry_seconds": 5, "limiter_path": str(self.tmp / "pacing.db")},
            sources={SOURCE: {"connector": self.h.connector, "interval": "1m", "lookback": lookback, "lag": "0s",
                              "mapping": self.h.mapping(), "settings": conf}})

    def app(self, **kw: Any) -> App:
        app = build_app(self.settings(**kw), sleep=lambda s: None)
        self._apps.append(app)
        return app

    def run(self, app: App | None = None, *, on_event: Callable[[str, FeeEvent], None] | None = None,
            **kw: Any) -> RunResult:
        """One pass. Without `app`, a fresh app (as `feesync once` builds), closed afterwards, killed or not."""
        fresh = app is None
        app = app or self.app(**kw)
        app.engine.on_event = on_event
        try:
            return app.engine.run_once(SOURCE)
        finally:
            app.engine.on_event = None
            if fresh:
                app.close()
                self._apps.remove(app)

    def settle(self, max_runs: int = 4, **kw: Any) -> list[RunResult]:
        """Run until a pass pushes nothing and opens nothing (late documents may need a second pass)."""
        results = []
        for _ in range(max_runs):
            r = self.run(**kw)
            results.append(r)
            assert r.status in ("ok", "conflicts"), f"run ended {r.status}: {r.error}"
            if not r.counts.get("pushed") and not r.conflicts:
                return results
        raise AssertionError(f"no quiet pass after {max_runs} runs: {[x.as_dict() for x in results]}")

    # --- what the LMS holds, what the state says ------------------------------------------------
    def payments(self) -> list[dict[str, Any]]:
        assert self.lms is not None
        return [p for p in self.lms.payments() if str(p.get("notes") or "").startswith(NOTES_PREFIX)]

    def pushed(self) -> Counter[str]:
        """LMS payments per ERP document id (from the notes the engine writes)."""
        return Counter(str(p["notes"])[len(NOTES_PREFIX):] for p in self.payments())

    def paid(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for p in self.payments():
            doc = str(p["notes"])[len(NOTES_PREFIX):]
            out[doc] = out.get(doc, Decimal(0)) + Decimal(str(p["amount"]))
        return out

    def store(self) -> Store:
        return Store.open(self.state_path, create=False)

    def open_conflicts(self) -> list[tuple[str, str]]:
        if not self.state_path.exists():
            return []
        store = self.store()
        try:
            with store.engine.connect() as c:
                rows = c.execute(conflicts.select().where(conflicts.c.status == "open",
                                                          conflicts.c.source == SOURCE)).mappings().all()
            return sorted((r["doc_id"], r["kind"]) for r in rows)
        finally:
            store.close()

    def conflict_rows(self) -> list[dict[str, Any]]:
        store = self.store()
        try:
            with store.engine.connect() as c:
                return [dict(r) for r in c.execute(conflicts.select().where(conflicts.c.source == SOURCE))
                        .mappings().all()]
        finally:
            store.close()

    def cursor(self) -> Position | None:
        if not self.state_path.exists():
            return None
        store = self.store()
        try:
            return store.get_cursor(SOURCE)
        finally:
            store.close()


def _aware_utc(moment: Any) -> bool:
    return isinstance(moment, datetime) and moment.tzinfo is not None and moment.utcoffset() == timedelta(0)


class ConnectorConformance:
    """The conformance tests. Subclass it in `tests/test_conformance_<name>.py` and provide `harness`."""

    @pytest.fixture
    def harness(self) -> Harness:   # pragma: no cover - every subclass provides its own
        pytest.skip("the subclass provides no harness fixture")

    @pytest.fixture
    def kit(self, harness: Harness, tmp_path: Path) -> Iterator[Kit]:
        assert isinstance(harness, Harness), f"{type(harness).__name__} does not offer the Harness protocol"
        kit = Kit(harness, tmp_path)
        try:
            yield kit
        finally:
            kit.close()

    # --- the contract -------------------------------------------------------------------------------
    def test_settings_validate_and_an_invalid_one_is_refused_naming_the_field(self, kit: Kit) -> None:
        h = kit.h
        cls = registry.load(h.connector)
        assert isinstance(cls.name, str) and cls.name and isinstance(cls.ordered, bool)
        good = SourceSettings(connector=h.connector, settings=h.settings(page_size=PAGE))
        conf = build_connector_settings(SOURCE, good, cls.settings_model)
        assert isinstance(conf, cls.settings_model)
        bad, field = h.invalid_settings()
        with pytest.raises(ConfigError) as err:
            build_connector_settings(SOURCE, SourceSettings(connector=h.connector, settings=bad), cls.settings_model)
        assert any(p.startswith(f"sources.{SOURCE}.settings.{field}") for p in err.value.problems), err.value.problems
        # as start-up reports it: build_app refuses with the same problem, naming the source and field
        with pytest.raises(ConfigError) as err2:
            build_app(kit.settings(connector_settings=bad))
        assert f"sources.{SOURCE}.settings.{field}" in str(err2.value)
        app = kit.app()
        assert isinstance(app.connectors[SOURCE], Connector)

    def test_secrets_stay_out_of_repr_logs_and_errors(self, kit: Kit) -> None:
        h = kit.h
        secrets = h.secrets()
        assert secrets, "a harness without secrets must skip"
        cls = registry.load(h.connector)
        conf = build_connector_settings(SOURCE, SourceSettings(connector=h.connector, settings=h.settings(
            page_size=PAGE)), cls.settings_model)
        shown = [repr(conf), str(conf), conf.model_dump_json()]
        h.add_receipts(3)
        h.break_auth()
        with captured_logs() as buf:
            result = kit.run()
            app = kit.app()
            with pytest.raises(FeesyncError) as err:
                list(app.connectors[SOURCE].fetch(None, MemoryContext()))
        assert result.status == "stopped", result.as_dict()
        texts = {"repr/str/json of settings": "\n".join(shown), "logs": buf.getvalue(),
                 "run error": str(result.error), "raised error": "\n".join(_error_texts(err.value))}
        assert "source.stopped" in texts["logs"]
        for secret in secrets:
            leaks = [where for where, text in texts.items() if secret in text]
            assert not leaks, f"a secret ({secret[:3]}...) appears in: {', '.join(leaks)}"

    def test_the_whole_configuration_hides_connector_secrets(self, kit: Kit) -> None:
        secrets = kit.h.secrets()
        settings = kit.settings()
        shown = "\n".join([repr(settings), str(settings), settings.model_dump_json()])
        assert not [s for s in secrets if s in shown], "a connector secret shows in the loaded configuration"

    def test_events_are_normalised(self, kit: Kit) -> None:
        ids = kit.h.add_receipts(6)
        expected = kit.h.receipts()
        conn = kit.app().connectors[SOURCE]
        events = list(conn.fetch(None, MemoryContext()))
        received = [e for e in events if isinstance(e, PaymentReceived)]
        assert sorted(e.doc_id for e in received) == sorted(ids)
        for e in events:
            assert isinstance(e, FeeEvent)
            assert isinstance(e.doc_id, str) and e.doc_id and isinstance(e.version, str) and e.version
            assert isinstance(e.position, Position) and isinstance(e.position.doc_id, str)
            assert _aware_utc(e.position.changed_at), f"{e.doc_id}: position {e.position.changed_at!r} not aware UTC"
        for e in received:
            assert isinstance(e.amount, Decimal) and e.amount == expected[e.doc_id]
            assert isinstance(e.unallocated, Decimal)
            assert all(isinstance(r.amount, Decimal) for r in e.references)
            assert isinstance(e.posting_date, date) and not isinstance(e.posting_date, datetime)
            assert isinstance(e.currency, str) and len(e.currency) == 3 and e.currency.isupper()
            assert isinstance(e.customer, str) and e.customer
        if conn.ordered:
            positions = [e.position for e in events]
            assert positions == sorted(positions) and len(set(positions)) == len(positions)
        # a document the ledger decided at this version comes back Unchanged
        decided = MemoryContext((e.doc_id, e.version) for e in events)
        again = list(conn.fetch(None, decided))
        assert again and all(isinstance(e, Unchanged) for e in again), [type(e).__name__ for e in again]

    # --- cursor -------------------------------------------------------------------------------------
    def test_fetch_from_any_yielded_position_leaves_no_gap(self, kit: Kit) -> None:
        kit.h.add_receipts(9)
        conn = kit.app().connectors[SOURCE]
        ctx = MemoryContext()
        full = ctx.run(conn.fetch(None, ctx))
        assert len(full) == 9
        for i, e in enumerate(full):
            got = [x.doc_id for x in conn.fetch(e.position, MemoryContext(ctx.decided.items()))]
            assert len(got) == len(set(got)), f"duplicates resuming after {e.position}: {got}"
            missing = {x.doc_id for x in full[i + 1:]} - set(got)
            assert not missing, f"resuming after {e.position} skips {sorted(missing)}"
            # the engine resumes from (changed_at - lookback, ""): inclusive of the whole instant
            inclusive = [x.doc_id for x in conn.fetch(Position(e.position.changed_at, ""),
                                                       MemoryContext(ctx.decided.items()))]
            assert e.doc_id in inclusive and not {x.doc_id for x in full[i + 1:]} - set(inclusive)

    def test_runs_killed_after_k_documents_resume_with_no_gap_and_no_duplicate(self, kit: Kit) -> None:
        ids = kit.h.add_receipts(14)
        ordered = bool(registry.load(kit.h.connector).ordered)
        done, cursors = 0, []
        for k in (1, 3, 5):   # cumulative 1, 4, 9 with pages of 4: mid-page, on a boundary, mid-page
            with pytest.raises(Killed):
                kit.run(on_event=kill_after(k))
            done += k
            counts = kit.pushed()
            assert sum(counts.values()) == done and set(counts.values()) == {1}, counts
            cursors.append(kit.cursor())
        if ordered:   # each restart resumed from a stored cursor, not from the beginning
            assert all(c is not None for c in cursors) and cursors == sorted(set(cursors)), cursors
        final = kit.run()
        assert final.status == "ok", final.as_dict()
        assert final.counts["pushed"] == len(ids) - done
        assert kit.pushed() == Counter({d: 1 for d in ids})
        assert kit.open_conflicts() == []

    def test_ties_on_the_change_time_across_page_boundaries(self, kit: Kit) -> None:
        before = kit.h.add_receipts(2)
        tied = kit.h.add_receipts(27, same_change_time=True)
        after = kit.h.add_receipts(2)
        conn = kit.app(page_size=TIE_PAGE).connectors[SOURCE]
        events = {e.doc_id: e for e in conn.fetch(None, MemoryContext())}
        assert len({events[d].position.changed_at for d in tied}) == 1, "the harness did not make a tie"
        with pytest.raises(Killed):   # killed mid-tie and mid-page: the cursor sits inside the tie
            kit.run(on_event=kill_after(13), page_size=TIE_PAGE)
        result = kit.run(page_size=TIE_PAGE)
        assert result.status == "ok", result.as_dict()
        assert kit.pushed() == Counter({d: 1 for d in before + tied + after})
        assert kit.open_conflicts() == []

    def test_a_document_changing_between_two_pages_is_pushed_once_and_nothing_is_lost(self, kit: Kit) -> None:
        ids = kit.h.add_receipts(12)
        early, late = ids[0], ids[-2]
        originally = kit.h.receipts()
        app = kit.app()
        fired: list[bool] = []

        def change_both() -> None:
            fired.append(True)
            kit.h.change(early)
            kit.h.change(late)
        kit.h.between_pages(change_both, app.connectors[SOURCE])
        first = kit.run(app)
        assert fired, "the harness never called back between pages"
        assert first.status in ("ok", "conflicts"), first.as_dict()
        kit.settle()
        assert kit.pushed() == Counter({d: 1 for d in ids}), "a receipt was lost or pushed twice"
        now = kit.h.receipts()
        paid = kit.paid()
        open_ = kit.open_conflicts()
        assert {k for _, k in open_} <= {"changed_after_sync"}, open_
        for d in ids:
            if d in (early, late) and paid[d] != now[d]:
                # pushed before the change was seen: a person must correct the LMS receipt
                assert paid[d] == originally[d] and (d, "changed_after_sync") in open_, (d, paid[d], open_)
            else:
                assert paid[d] == now[d] and all(doc != d for doc, _ in open_), (d, paid[d], now[d])

    # --- changes after push -------------------------------------------------------------------------
    def test_a_cancellation_after_push_opens_reversed_in_erp(self, kit: Kit) -> None:
        ids = kit.h.add_receipts(5)
        first = kit.run()
        assert first.counts["pushed"] == 5, first.as_dict()
        victim = ids[2]
        receipt = next(p["receipt_number"] for p in kit.payments() if p["notes"] == NOTES_PREFIX + victim)
        kit.h.cancel(victim)
        second = kit.run()
        assert dict(second.conflicts) == {"reversed_in_erp": 1}, second.as_dict()
        assert kit.open_conflicts() == [(victim, "reversed_in_erp")]
        (row,) = [r for r in kit.conflict_rows() if r["status"] == "open"]
        assert row["lms_receipt"] == receipt and receipt in row["detail"]
        assert kit.pushed() == Counter({d: 1 for d in ids})   # nothing reversed or re-sent by itself
        third = kit.run()
        assert not third.conflicts and not third.counts.get("pushed"), third.as_dict()
        assert kit.open_conflicts() == [(victim, "reversed_in_erp")]

    def test_a_deletion_after_push_leaves_the_snapshot(self, kit: Kit) -> None:
        ids = kit.h.add_receipts(5)
        assert kit.run().counts["pushed"] == 5
        conn = kit.app().connectors[SOURCE]
        if not isinstance(conn, Reconcilable):
            pytest.skip(f"{kit.h.connector} implements no snapshot(); the reconcile pass of the end-to-end test "
                        "reports its deletions")
        before = conn.snapshot(EARLY)
        assert set(ids) <= set(before)
        kit.h.delete(ids[1])
        after = conn.snapshot(EARLY)
        assert ids[1] not in after and set(ids) - {ids[1]} <= set(after)
        assert all(after[d] == before[d] for d in set(ids) - {ids[1]})

    # --- errors -------------------------------------------------------------------------------------
    def test_broken_credentials_stop_the_source_keeping_the_cursor(self, kit: Kit) -> None:
        ids = kit.h.add_receipts(4)
        assert kit.run().counts["pushed"] == 4
        cursor = kit.cursor()
        kit.h.add_receipts(3)
        kit.h.break_auth()
        result = kit.run()
        assert result.status == "stopped" and result.error, result.as_dict()
        assert not result.conflicts and kit.open_conflicts() == []
        assert kit.cursor() == cursor
        assert kit.pushed() == Counter({d: 1 for d in ids})
        with pytest.raises(StopSource):
            list(kit.app().connectors[SOURCE].fetch(None, MemoryContext()))

    @pytest.mark.parametrize("kind", ERROR_KINDS)
    def test_source_errors_and_rate_limits_defer_never_conflict_never_lose(self, kit: Kit, kind: str) -> None:
        first_ids = kit.h.add_receipts(6)
        kit.h.inject_errors(kind, 1)          # one failure: retried within the run (or deferred)
        r1 = kit.run()
        assert r1.status in ("ok", "deferred") and not r1.conflicts, r1.as_dict()
        kit.h.add_receipts(4)
        kit.h.inject_errors(kind, 50)         # a lasting failure: the run is deferred
        r2 = kit.run()
        assert r2.status == "deferred" and not r2.conflicts and r2.error, r2.as_dict()
        with pytest.raises(RetryLater):       # the source's own error shape, mapped into our hierarchy
            list(kit.app().connectors[SOURCE].fetch(None, MemoryContext()))
        kit.h.clear_errors()
        kit.settle()
        assert kit.open_conflicts() == []
        assert kit.pushed() == Counter({d: 1 for d in kit.h.receipts()})
        assert set(first_ids) <= set(kit.pushed())

    # --- the whole story ----------------------------------------------------------------------------
    def test_end_to_end_counts_sums_cancellation_and_reconciled_deletion(self, kit: Kit) -> None:
        from sync.reconcile import reconcile

        ids = kit.h.add_receipts(10)
        source_side = kit.h.receipts()
        first = kit.run()
        assert first.status == "ok" and first.counts["pushed"] == 10, first.as_dict()
        pays = kit.payments()
        assert len(pays) == len(source_side) == 10
        assert sum(Decimal(str(p["amount"])) for p in pays) == sum(source_side.values())
        assert sorted(p["notes"] for p in pays) == sorted(NOTES_PREFIX + d for d in ids)
        assert kit.paid() == source_side

        idle = kit.run()
        assert idle.status == "ok" and not idle.counts.get("pushed") and not idle.conflicts, idle.as_dict()

        cancelled, deleted = ids[3], ids[6]
        kit.h.cancel(cancelled)
        third = kit.run()
        assert dict(third.conflicts) == {"reversed_in_erp": 1}
        assert kit.open_conflicts() == [(cancelled, "reversed_in_erp")]

        kit.h.delete(deleted)
        result = reconcile(kit.app(), SOURCE, summaries=False, save=False)
        drifts = {d["doc_id"]: d for d in result["drifts"]}
        assert set(drifts) == {cancelled, deleted}, result["drifts"]
        assert drifts[deleted]["kind"] == "not_in_erp" and not drifts[deleted]["explained_by"]
        assert drifts[cancelled]["kind"] == "not_in_erp"
        assert [c["kind"] for c in drifts[cancelled]["explained_by"]] == ["reversed_in_erp"]
        assert result["unexplained"] == 1
        assert len(kit.payments()) == 10   # reconciling writes nothing to the LMS
