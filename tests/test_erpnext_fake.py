"""The ERPNext fake's behaviours over real HTTP: paging, order, serialisation, lifecycle, errors."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from sync.sandbox.erpnext import ERPNextFake, FrappeError, load_data

ADMIN = {"Authorization": "token adminkey:adminsecret"}
LIMITED = {"Authorization": "token salesKey:salesSecret"}
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{6})?$")


class Clock:
    """A hand-moved UTC clock."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def dataset(**extra: Any) -> dict:
    data = {
        "site_time_zone": "Asia/Karachi",
        "site_host": "erp.localhost",
        "users": [
            {
                "user": "Administrator",
                "api_key": "adminkey",
                "api_secret": "adminsecret",
                "roles": ["System Manager"],
            },
            {
                "user": "sales.viewer@example.pk",
                "api_key": "salesKey",
                "api_secret": "salesSecret",
                "roles": ["Sales User"],
            },
        ],
        "custom_fields": {"Payment Entry": ["custom_zensbot_payment_id"]},
        "documents": {
            "Company": [
                {
                    "name": "Zensbot Academy",
                    "company_name": "Zensbot Academy",
                    "abbr": "ZA",
                    "default_currency": "PKR",
                    "default_receivable_account": "Debtors - ZA",
                    "default_cash_account": "Cash - ZA",
                    "default_bank_account": "Meezan Bank - ZA",
                }
            ],
            "Customer": [
                {"name": n, "customer_name": n, "email_id": f"{n.split()[0].lower()}@example.pk"}
                for n in ("Ayesha Khan", "Bilal Ahmed")
            ],
            "Sales Invoice": [
                {
                    "name": "ACC-SINV-2026-00001",
                    "customer": "Ayesha Khan",
                    "docstatus": 1,
                    "posting_date": "2026-09-01",
                    "due_date": "2026-12-31",
                    "grand_total": 45000,
                    "outstanding_amount": 45000,
                    "status": "Unpaid",
                    "modified": "2026-12-01 10:00:00.000001",
                    "items": [
                        {"item_code": "PY-BOOTCAMP", "qty": 1, "rate": 45000, "amount": 45000}
                    ],
                    "payment_schedule": [
                        {
                            "payment_term": "Installment 1",
                            "due_date": "2026-09-01",
                            "payment_amount": 18000,
                            "outstanding": 18000,
                            "paid_amount": 0,
                        },
                        {
                            "payment_term": "Installment 2",
                            "due_date": "2026-12-31",
                            "payment_amount": 27000,
                            "outstanding": 27000,
                            "paid_amount": 0,
                        },
                    ],
                }
            ],
        },
    }
    data.update(extra)
    return data


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 12, 3, 18, 30, 0, 123456, tzinfo=UTC))


@pytest.fixture
def fake(clock: Clock) -> Iterator[ERPNextFake]:
    with ERPNextFake(dataset(), clock=clock) as running:
        yield running


@pytest.fixture
def http(fake: ERPNextFake) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, headers=ADMIN, timeout=5) as client:
        yield client


def pe(party: str = "Ayesha Khan", amount: float = 1000.0, **fields: Any) -> dict:
    return {
        "party": party,
        "paid_amount": amount,
        "mode_of_payment": "Cash",
        "paid_to": "Cash - ZA",
        **fields,
    }


def add_payments(fake: ERPNextFake, count: int, **kwargs: Any) -> list[str]:
    return [
        fake.insert("Payment Entry", pe(amount=100.0 + i), **kwargs)["name"] for i in range(count)
    ]


def list_pe(http: httpx.Client, **params: Any) -> list:
    params = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in params.items()}
    response = http.get("/api/resource/Payment Entry", params=params)
    assert response.status_code == 200, response.text
    assert list(response.json()) == ["data"]
    return response.json()["data"]


def messages(body: dict) -> list[dict]:
    outer = json.loads(body["_server_messages"])
    assert isinstance(outer, list) and all(isinstance(m, str) for m in outer)
    return [json.loads(m) for m in outer]


# --- lists ----------------------------------------------------------------------------------
def test_list_default_page_is_20_names_without_a_total(
    fake: ERPNextFake, http: httpx.Client
) -> None:
    """Without limit parameters a list returns 20 rows of names only; nothing says more exist."""
    add_payments(fake, 24)
    rows = list_pe(http)
    assert len(rows) == 20
    assert all(list(r) == ["name"] for r in rows)


def test_list_limit_zero_returns_everything_and_limit_is_an_alias(
    fake: ERPNextFake, http: httpx.Client
) -> None:
    """`limit_page_length=0` means all rows; `limit` works when `limit_page_length` is absent."""
    add_payments(fake, 24)
    assert len(list_pe(http, limit_page_length=0)) == 24
    assert len(list_pe(http, limit=5)) == 5
    assert len(list_pe(http, limit=5, limit_page_length=7)) == 7
    assert len(list_pe(http, limit_page_length=5, limit_start=22)) == 2


def test_list_without_order_by_is_not_in_modified_order(
    fake: ERPNextFake, http: httpx.Client, clock: Clock
) -> None:
    """Without `order_by` the order is arbitrary: stable, but not by modified or by name."""
    names = []
    for _ in range(12):
        clock.advance(seconds=1)
        names += add_payments(fake, 1)
    first = [r["name"] for r in list_pe(http, limit_page_length=0)]
    assert first == [r["name"] for r in list_pe(http, limit_page_length=0)]
    assert sorted(first) == sorted(names)
    assert first != names and first != names[::-1]


def test_keyset_paging_walks_rows_sharing_one_modified(
    fake: ERPNextFake, http: httpx.Client
) -> None:
    """A (modified, name) cursor with `or_filters` pages 45 tied rows with no gap or repeat."""
    names = add_payments(fake, 45)  # the clock does not move: one shared `modified`
    modified = fake.get("Payment Entry", names[0])["modified"]
    assert {fake.get("Payment Entry", n)["modified"] for n in names} == {modified}
    cursor, seen, pages = (modified, ""), [], []
    while True:
        rows = list_pe(
            http,
            fields=["name", "modified"],
            filters=[["modified", ">=", cursor[0]]],
            or_filters=[["modified", ">", cursor[0]], ["name", ">", cursor[1]]],
            order_by="modified asc,name asc",
            limit_page_length=20,
        )
        pages.append(len(rows))
        seen += [r["name"] for r in rows]
        if len(rows) < 20:
            break
        cursor = (rows[-1]["modified"], rows[-1]["name"])
    assert pages == [20, 20, 5]
    assert seen == sorted(names)


def test_modified_filters_compare_as_datetimes(fake: ERPNextFake, http: httpx.Client) -> None:
    """A bare date means midnight, and values with and without a fraction compare correctly."""
    fake.insert("Payment Entry", pe(), modified="2026-12-03 10:00:00")
    fake.insert("Payment Entry", pe(), modified="2026-12-03 10:00:00.5")
    fake.insert("Payment Entry", pe(), modified="2026-12-02 23:59:59.999999")

    def since(op: str, value: Any) -> list[str]:
        rows = list_pe(
            http, fields=["modified"], filters=[["modified", op, value]], order_by="modified asc"
        )
        return [r["modified"] for r in rows]

    assert since(">=", "2026-12-03") == ["2026-12-03 10:00:00", "2026-12-03 10:00:00.500000"]
    assert since(">", "2026-12-03 10:00:00") == ["2026-12-03 10:00:00.500000"]
    assert since(">", "2026-12-03 10:00:00.000000") == ["2026-12-03 10:00:00.500000"]
    assert since("<", "2026-12-03 00:00") == ["2026-12-02 23:59:59.999999"]
    assert len(since("between", ["2026-12-02", "2026-12-02"])) == 1


def test_modified_is_site_local_and_drops_a_zero_fraction(
    fake: ERPNextFake, http: httpx.Client, clock: Clock
) -> None:
    """`modified` is naive Asia/Karachi time; `.000000` is dropped, as Frappe's JSON does."""
    stamped = fake.insert("Payment Entry", pe())
    assert stamped["modified"] == "2026-12-03 23:30:00.123456"  # 18:30 UTC + 5 h
    clock.now = datetime(2026, 12, 3, 19, 0, 0, tzinfo=UTC)
    whole = fake.insert("Payment Entry", pe())
    doc = http.get(f"/api/resource/Payment Entry/{whole['name']}").json()["data"]
    assert doc["modified"] == doc["creation"] == "2026-12-04 00:00:00"
    assert TS_RE.match(doc["modified"])


def test_date_header_is_the_fakes_clock_in_utc(http: httpx.Client, clock: Clock) -> None:
    """The `Date` header (the ERP's clock for the daemon) follows the injected clock, in GMT."""
    response = http.get("/api/method/ping")
    assert response.headers["date"] == "Thu, 03 Dec 2026 18:30:00 GMT"
    assert response.headers["server"] == "gunicorn"
    assert response.headers["content-type"] == "application/json"


def test_single_get_omits_nulls_that_a_star_list_shows(
    fake: ERPNextFake, http: httpx.Client
) -> None:
    """Single GET drops null keys (also in child rows); `fields=["*"]` lists every parent column."""
    name = fake.insert(
        "Payment Entry",
        pe(
            references=[
                {
                    "reference_name": "ACC-SINV-2026-00001",
                    "payment_term": "Installment 1",
                    "allocated_amount": 1000,
                }
            ]
        ),
    )["name"]
    doc = http.get(f"/api/resource/Payment Entry/{name}").json()["data"]
    assert (
        "amended_from" not in doc
        and "custom_zensbot_payment_id" not in doc
        and "project" not in doc
    )
    assert None not in doc.values()
    row = doc["references"][0]
    assert None not in row.values() and "bill_no" not in row
    assert (row["parent"], row["parentfield"], row["parenttype"], row["idx"]) == (
        name,
        "references",
        "Payment Entry",
        1,
    )
    assert row["doctype"] == "Payment Entry Reference" and re.fullmatch(
        r"[0-9a-z]{10}", row["name"]
    )
    assert doc["paid_amount"] == 1000.0 and isinstance(doc["paid_amount"], float)
    assert isinstance(doc["docstatus"], int) and doc["doctype"] == "Payment Entry"
    star = list_pe(http, fields=["*"])[0]
    assert star["amended_from"] is None and star["custom_zensbot_payment_id"] is None
    assert "references" not in star and "doctype" not in star


def test_child_columns_join_one_row_per_child(fake: ERPNextFake, http: httpx.Client) -> None:
    """Dotted and backtick child fields repeat the parent per child; none gives one null row."""
    two = fake.insert(
        "Payment Entry",
        pe(
            amount=2000,
            references=[
                {
                    "reference_name": "ACC-SINV-2026-00001",
                    "payment_term": t,
                    "allocated_amount": 1000,
                }
                for t in ("Installment 1", "Installment 2")
            ],
        ),
    )["name"]
    advance = fake.insert("Payment Entry", pe(amount=500))["name"]
    rows = list_pe(
        http,
        fields=["name", "references.payment_term", "`tabPayment Entry Reference`.allocated_amount"],
        order_by="name asc",
    )
    assert rows == [
        {"name": two, "payment_term": "Installment 1", "allocated_amount": 1000.0},
        {"name": two, "payment_term": "Installment 2", "allocated_amount": 1000.0},
        {"name": advance, "payment_term": None, "allocated_amount": None},
    ]
    by_child = list_pe(
        http,
        fields=["name"],
        filters=[["Payment Entry Reference", "payment_term", "=", "Installment 2"]],
    )
    assert by_child == [{"name": two}]


def test_filter_shapes_and_operators(fake: ERPNextFake, http: httpx.Client) -> None:
    """Dict filters, `in`, `like`, `is set` and `or_filters` AND-ed with `filters` act as Frappe."""
    a = fake.insert("Payment Entry", pe("Ayesha Khan", 100, custom_zensbot_payment_id="ZB-1"))[
        "name"
    ]
    b = fake.insert("Payment Entry", pe("Bilal Ahmed", 200))["name"]
    c = fake.insert("Payment Entry", pe("Bilal Ahmed", 300), submit=False)["name"]
    names = lambda **p: sorted(r["name"] for r in list_pe(http, **p))  # noqa: E731
    assert names(filters={"docstatus": 0}) == [c]
    assert names(filters={"paid_amount": [">=", 200]}) == [b, c]
    assert names(filters=[["party", "like", "bilal%"]]) == [b, c]  # case-insensitive like MariaDB
    assert names(filters=[["name", "in", [a, c, "nope"]]]) == [a, c]
    assert names(filters=[["custom_zensbot_payment_id", "is", "set"]]) == [a]
    assert names(filters=[["custom_zensbot_payment_id", "is", "not set"]]) == [b, c]
    assert names(
        filters=[["docstatus", "=", 1]],
        or_filters=[["party", "=", "Ayesha Khan"], ["paid_amount", ">", 250]],
    ) == [a]
    assert list_pe(http, fields=["name", "paid_amount"], filters={"name": a}, as_dict=0) == [
        [a, 100.0]
    ]


def test_get_count_and_get_list_methods(fake: ERPNextFake, http: httpx.Client) -> None:
    """`frappe.client.get_count` and `get_list` answer under `message`."""
    add_payments(fake, 3)
    fake.insert("Payment Entry", pe(), submit=False)
    count = http.get(
        "/api/method/frappe.client.get_count",
        params={"doctype": "Payment Entry", "filters": '[["docstatus","=",1]]'},
    )
    assert count.json() == {"message": 3}
    listed = http.get(
        "/api/method/frappe.client.get_list",
        params={"doctype": "Payment Entry", "fields": "name,docstatus", "order_by": "name desc"},
    )
    assert [r["docstatus"] for r in listed.json()["message"]] == [0, 1, 1, 1]
    assert http.get("/api/method/frappe.auth.get_logged_user").json() == {
        "message": "Administrator"
    }


# --- lifecycle --------------------------------------------------------------------------------
def test_cancel_bumps_modified_and_reopens_the_invoice(
    fake: ERPNextFake, http: httpx.Client, clock: Clock
) -> None:
    """Submit pays the installment; cancel sets docstatus 2 and bumps PE and invoice modified."""
    name = fake.insert(
        "Payment Entry",
        pe(
            amount=18000,
            references=[
                {
                    "reference_name": "ACC-SINV-2026-00001",
                    "payment_term": "Installment 1",
                    "allocated_amount": 18000,
                }
            ],
        ),
    )["name"]
    invoice = fake.get("Sales Invoice", "ACC-SINV-2026-00001")
    assert invoice["outstanding_amount"] == 27000.0 and invoice["status"] == "Partly Paid"
    assert invoice["payment_schedule"][0]["outstanding"] == 0.0
    clock.advance(minutes=5)
    response = http.post(
        "/api/method/frappe.client.cancel", json={"doctype": "Payment Entry", "name": name}
    )
    assert response.status_code == 200
    cancelled = response.json()["message"]
    assert cancelled["docstatus"] == 2 and cancelled["status"] == "Cancelled"
    assert cancelled["modified"] == "2026-12-03 23:35:00.123456"
    assert cancelled["amended_from"] is None  # frappe.client answers with nulls
    invoice = fake.get("Sales Invoice", "ACC-SINV-2026-00001")
    assert invoice["modified"] == cancelled["modified"] and invoice["outstanding_amount"] == 45000.0
    again = http.post(
        "/api/method/frappe.client.cancel", json={"doctype": "Payment Entry", "name": name}
    )
    assert again.status_code == 417 and again.json()["exc_type"] == "ValidationError"


def test_amend_counter_names_and_default_naming(clock: Clock) -> None:
    """Amending gives `<name>-1`, amending that `<name>-2`; Default Naming takes the series."""
    with ERPNextFake(dataset(), clock=clock) as fake:
        first = fake.insert("Payment Entry", pe())["name"]
        fake.cancel("Payment Entry", first)
        one = fake.amend("Payment Entry", first, {"paid_amount": 900.0})
        assert (one["name"], one["amended_from"], one["docstatus"]) == (f"{first}-1", first, 1)
        fake.cancel("Payment Entry", one["name"])
        assert fake.amend("Payment Entry", one["name"], submit=False)["name"] == f"{first}-2"
        with pytest.raises(FrappeError):
            fake.amend("Payment Entry", f"{first}-2")  # a draft cannot be amended
    with ERPNextFake(dataset(amend_naming="Default Naming"), clock=clock) as fake:
        first = fake.insert("Payment Entry", pe())["name"]
        fake.cancel("Payment Entry", first)
        assert fake.amend("Payment Entry", first)["name"] == "ACC-PAY-2026-00002"


def test_http_write_path_like_the_real_site(fake: ERPNextFake, http: httpx.Client) -> None:
    """POST inserts (docstatus 1 also submits), PUT docstatus 1 submits, later PUTs are refused."""
    body = {
        "payment_type": "Receive",
        "party_type": "Customer",
        "party": "Ayesha Khan",
        "paid_amount": 500,
        "received_amount": 500,
        "mode_of_payment": "Cash",
        "paid_to": "Cash - ZA",
        "custom_zensbot_payment_id": "ZB-9",
        "no_such_field": "dropped",
    }
    created = http.post("/api/resource/Payment Entry", json=body)
    assert created.status_code == 200
    draft = created.json()["data"]
    assert (draft["name"], draft["docstatus"], draft["status"]) == (
        "ACC-PAY-2026-00001",
        0,
        "Draft",
    )
    assert draft["paid_from"] == "Debtors - ZA" and draft["party_name"] == "Ayesha Khan"
    assert "no_such_field" not in draft
    submitted = http.put(
        f"/api/resource/Payment Entry/{draft['name']}", json={"docstatus": 1}
    ).json()["data"]
    assert submitted["docstatus"] == 1
    refused = http.put(
        f"/api/resource/Payment Entry/{draft['name']}", json={"custom_zensbot_payment_id": "ZB-X"}
    )
    assert refused.status_code == 417
    assert refused.json()["exc_type"] == "UpdateAfterSubmitError"
    assert "Not allowed to change" in messages(refused.json())[0]["message"]
    one_post = http.post("/api/resource/Payment Entry", json={**body, "docstatus": 1}).json()[
        "data"
    ]
    assert (one_post["name"], one_post["docstatus"]) == ("ACC-PAY-2026-00002", 1)
    unknown_party = http.post("/api/resource/Payment Entry", json={**body, "party": "Nobody"})
    assert (
        unknown_party.status_code == 417
        and unknown_party.json()["exc_type"] == "LinkValidationError"
    )


def test_delete_leaves_a_tombstone_and_reuses_the_newest_name(
    fake: ERPNextFake, http: httpx.Client
) -> None:
    """Deleting the newest draft rolls the series back (name reused); submitted docs refuse."""
    kept = fake.insert("Payment Entry", pe())["name"]
    refused = http.delete(f"/api/resource/Payment Entry/{kept}")
    assert refused.status_code == 417 and "Cancel" in messages(refused.json())[0]["message"]
    middle = fake.insert("Payment Entry", pe(), submit=False)["name"]
    newest = fake.insert("Payment Entry", pe("Bilal Ahmed"), submit=False)["name"]
    deleted = http.delete(f"/api/resource/Payment Entry/{newest}")
    assert (deleted.status_code, deleted.json()) == (202, {"data": "ok"})
    assert http.get(f"/api/resource/Payment Entry/{newest}").status_code == 404
    reused = fake.insert("Payment Entry", pe("Ayesha Khan", 777.0))
    assert reused["name"] == newest and reused["party"] == "Ayesha Khan"
    fake.delete("Payment Entry", middle)  # not the newest: its name stays free
    assert fake.insert("Payment Entry", pe())["name"] == "ACC-PAY-2026-00004"
    tombstones = http.get(
        "/api/resource/Deleted Document",
        params={
            "fields": '["deleted_name","deleted_doctype","restored","data"]',
            "order_by": "creation asc",
        },
    ).json()["data"]
    assert [t["deleted_name"] for t in tombstones] == [newest, middle]
    assert json.loads(tombstones[0]["data"])["party"] == "Bilal Ahmed"


def test_update_can_skip_bumping_modified(fake: ERPNextFake) -> None:
    """`update(..., bump_modified=False)` models ERPNext writes that leave modified alone."""
    doc = fake.insert("Payment Entry", pe())
    quiet = fake.update(
        "Payment Entry", doc["name"], {"clearance_date": "2026-12-05"}, bump_modified=False
    )
    assert quiet["modified"] == doc["modified"] and quiet["clearance_date"] == "2026-12-05"
    loud = fake.update(
        "Payment Entry", doc["name"], {"remarks": "x"}, modified="2026-12-06 09:00:00"
    )
    assert loud["modified"] == "2026-12-06 09:00:00"


# --- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "status", "exc_type"),
    [
        ({"Authorization": "token adminkey:wrong"}, 401, "AuthenticationError"),
        ({"Authorization": "token nobody:secret"}, 401, "AuthenticationError"),
        ({"Authorization": "token justonepart"}, 401, "AuthenticationError"),
        ({}, 403, "PermissionError"),
        (LIMITED, 403, "PermissionError"),
    ],
)
def test_auth_failures_have_frappe_bodies(
    fake: ERPNextFake, headers: dict, status: int, exc_type: str
) -> None:
    """Bad credentials give 401 without messages; no credentials or no role give 403 with them."""
    response = httpx.get(f"{fake.url}/api/resource/Payment Entry", headers=headers)
    body = response.json()
    assert (response.status_code, body["exc_type"]) == (status, exc_type)
    assert json.loads(body["exc"])[0].startswith("Traceback (most recent call last)")
    if status == 401:
        assert "_server_messages" not in body
    else:
        assert "does not have doctype access" in messages(body)[0]["message"]
        assert body["_error_message"] == "No permission for Payment Entry"


def test_basic_auth_and_limited_roles(fake: ERPNextFake) -> None:
    """`Basic base64(key:secret)` works; a Sales User reads invoices but not payments."""
    with httpx.Client(base_url=fake.url, auth=("salesKey", "salesSecret")) as client:
        assert client.get("/api/method/frappe.auth.get_logged_user").json() == {
            "message": "sales.viewer@example.pk"
        }
        assert client.get("/api/resource/Sales Invoice").status_code == 200
        assert client.get("/api/resource/Payment Entry").status_code == 403


@pytest.mark.parametrize(
    ("path", "params", "status", "exc_type", "message"),
    [
        (
            "/api/resource/Payment Entry/ACC-PAY-2099-99999",
            {},
            404,
            "DoesNotExistError",
            "Payment Entry ACC-PAY-2099-99999 not found",
        ),
        (
            "/api/resource/Payment Entryx",
            {},
            404,
            "DoesNotExistError",
            "DocType Payment Entryx not found",
        ),
        (
            "/api/resource/Payment Entry",
            {"filters": '[["no_such_field","=","x"]]'},
            417,
            "DataError",
            "Field not permitted in query: no_such_field",
        ),
        (
            "/api/resource/Payment Entry",
            {"fields": '["name","nope"]'},
            417,
            "DataError",
            "Field not permitted in query: nope",
        ),
        (
            "/api/resource/Payment Entry",
            {"filters": '[["modified","~~","2026"]]'},
            417,
            "ValidationError",
            None,
        ),
        (
            "/api/resource/Payment Entry",
            {"order_by": "modified asc; select sleep(1)"},
            417,
            "ValidationError",
            "Illegal SQL Query",
        ),
        (
            "/api/resource/Payment Entry",
            {"order_by": "no_such_col asc"},
            500,
            "OperationalError",
            None,
        ),
        (
            "/api/resource/Payment Entry",
            {"filters": '[["modified",">"'},
            500,
            "JSONDecodeError",
            None,
        ),
        (
            "/api/method/frappe.no_such_method",
            {},
            417,
            "ValidationError",
            "Failed to get method for command frappe.no_such_method with module 'frappe' "
            "has no attribute 'no_such_method'",
        ),
    ],
)
def test_error_bodies_match_frappe(
    http: httpx.Client, path: str, params: dict, status: int, exc_type: str, message: str | None
) -> None:
    """Each error has Frappe's status, `exc_type` and, where Frappe has them, messages."""
    response = http.get(path, params=params)
    body = response.json()
    assert (response.status_code, body["exc_type"]) == (status, exc_type)
    if status == 404:
        assert list(body) == ["exc_type", "_server_messages"]
    if message is not None:
        msg = messages(body)[0]
        assert msg["message"] == message
        assert list(msg) == ["message", "title", "indicator", "raise_exception", "__frappe_exc_id"]
    elif status == 500:
        assert "_server_messages" not in body and "exc" in body


def test_tracebacks_off_gives_production_bodies(clock: Clock) -> None:
    """With `allow_error_traceback: false` bodies hold only exc_type and the messages."""
    with ERPNextFake(dataset(allow_error_traceback=False), clock=clock) as fake:
        bad = httpx.get(
            f"{fake.url}/api/resource/Payment Entry", headers={"Authorization": "token x:y"}
        )
        assert bad.json() == {"exc_type": "AuthenticationError"}
        denied = httpx.get(f"{fake.url}/api/resource/Payment Entry", headers=LIMITED).json()
        assert list(denied) == ["exc_type", "_server_messages", "_error_message"]


def test_unknown_site_host_gets_the_html_404(fake: ERPNextFake) -> None:
    """A Host naming no site is answered in HTML, like the real bench; loopback names still work."""
    response = httpx.get(f"{fake.url}/api/method/ping", headers={"Host": "nosuchsite.localhost"})
    assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")
    assert "nosuchsite.localhost does not exist" in response.text
    assert httpx.get(
        f"{fake.url}/api/method/ping", headers={"Host": "erp.localhost:8000"}
    ).json() == {"message": "pong"}


def test_rate_limit_answers_429_in_plain_text(clock: Clock) -> None:
    """Over the limit the fake answers 429 text with Retry-After; a new window lets requests in."""
    with ERPNextFake(dataset(rate_limit={"limit": 2, "window": 60}), clock=clock) as fake:
        url = f"{fake.url}/api/method/ping"
        assert [httpx.get(url).status_code for _ in range(2)] == [200, 200]
        limited = httpx.get(url)
        assert limited.status_code == 429 and limited.text == "Too Many Requests"
        assert limited.headers["content-type"].startswith("text/plain")
        assert (
            int(limited.headers["retry-after"]) >= 1
            and limited.headers["x-ratelimit-remaining"] == "0"
        )
        clock.advance(seconds=60)
        assert httpx.get(url).status_code == 200


# --- faults and server robustness --------------------------------------------------------------
def test_fail_fault_fires_count_times_on_matching_paths(
    fake: ERPNextFake, http: httpx.Client
) -> None:
    """`fail` answers matching requests with a Frappe-like error, then is used up."""
    fake.faults.fail(500, count=2, path_regex=r"/api/resource/Payment")
    assert http.get("/api/method/ping").status_code == 200
    statuses = [http.get("/api/resource/Payment Entry").status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    fake.faults.fail(503)
    gateway = http.get("/api/method/ping")
    assert gateway.status_code == 503 and "nginx" in gateway.text
    assert fake.faults.pending() == []


def test_slow_fault_provokes_a_client_timeout(fake: ERPNextFake) -> None:
    """`slow` delays the answer beyond the client's read timeout."""
    fake.faults.slow(0.5, path_regex="ping")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{fake.url}/api/method/ping", timeout=0.1)
    assert httpx.get(f"{fake.url}/api/method/ping", timeout=2).status_code == 200


def test_drop_fault_closes_without_an_answer(fake: ERPNextFake, http: httpx.Client) -> None:
    """`drop` closes the connection; the next request is served."""
    fake.faults.drop()
    with pytest.raises(httpx.RemoteProtocolError):
        http.get("/api/method/ping")
    assert http.get("/api/method/ping").json() == {"message": "pong"}


def test_faults_over_http_and_state_are_not_counted(fake: ERPNextFake) -> None:
    """`POST /_fake/faults` arms faults without auth; `GET /_fake/state` reports; neither counts."""
    armed = httpx.post(
        f"{fake.url}/_fake/faults", json=[{"action": "fail", "status": 429, "path_regex": "ping"}]
    )
    assert armed.status_code == 200 and armed.json()["faults"][0]["status"] == 429
    limited = httpx.get(f"{fake.url}/api/method/ping")
    assert limited.status_code == 429 and limited.text == "Too Many Requests"
    state = httpx.get(f"{fake.url}/_fake/state").json()
    assert state["stats"]["requests"] == 1 and state["faults"] == []
    assert httpx.post(f"{fake.url}/_fake/faults", json={"action": "bogus"}).status_code == 400
    assert fake.stats() == {"requests": 1, "by_path_kind": {"method": 1}, "by_status": {429: 1}}


def test_on_list_hook_changes_rows_between_pages(
    fake: ERPNextFake, http: httpx.Client, clock: Clock
) -> None:
    """A list hook runs after a page is computed, so a write in it shows on the next page only."""
    names = add_payments(fake, 3)
    seen: list[tuple[str, int]] = []

    def touch_first(doctype: str, rows: list) -> None:
        seen.append((doctype, len(rows)))
        if len(seen) == 1:
            clock.advance(seconds=1)
            fake.update("Payment Entry", names[0], {"remarks": "edited between pages"})

    fake.on_list(touch_first)
    page1 = list_pe(http, fields=["name"], order_by="modified asc,name asc", limit_page_length=2)
    page2 = list_pe(
        http, fields=["name"], order_by="modified asc,name asc", limit_page_length=2, limit_start=2
    )
    assert [r["name"] for r in page1] == names[:2]
    assert [r["name"] for r in page2] == [names[0]]  # moved to the end: names[2] is never seen
    assert seen == [("Payment Entry", 2), ("Payment Entry", 1)]


def test_a_handler_bug_answers_500_and_the_server_lives_on(
    fake: ERPNextFake, http: httpx.Client
) -> None:
    """An exception inside the fake becomes a Frappe-like 500; later requests are fine."""

    def broken(doctype: str, rows: list) -> None:
        raise RuntimeError("hook exploded")

    fake.on_list(broken)
    response = http.get("/api/resource/Payment Entry")
    assert response.status_code == 500 and response.json()["exc_type"] == "RuntimeError"
    fake.faults.clear()
    assert http.get("/api/resource/Payment Entry").status_code == 200


def test_keep_alive_connection_is_reused_and_closed_by_stop(clock: Clock) -> None:
    """Answers carry Content-Length on a kept-alive connection; `stop()` ends idle ones too."""
    fake = ERPNextFake(dataset(), clock=clock).start()
    with socket.create_connection(("127.0.0.1", fake.port), timeout=2) as sock:
        for _ in range(2):
            sock.sendall(b"GET /api/method/ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            header, _, rest = head.partition(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", header).group(1))
            while len(rest) < length:
                rest += sock.recv(4096)
            assert rest == b'{"message":"pong"}'
        fake.stop()
        sock.settimeout(2)
        assert sock.recv(10) == b""


def test_stats_count_requests_by_kind_and_status(fake: ERPNextFake, http: httpx.Client) -> None:
    """`stats()` counts every API request by path kind and status."""
    name = fake.insert("Payment Entry", pe())["name"]
    http.get("/api/resource/Payment Entry")
    http.get(f"/api/resource/Payment Entry/{name}")
    http.get("/api/method/ping")
    http.get("/api/resource/Payment Entry/nope")
    assert fake.stats() == {
        "requests": 4,
        "by_path_kind": {"list": 1, "get": 2, "method": 1},
        "by_status": {200: 3, 404: 1},
    }


def test_concurrent_requests_are_served(fake: ERPNextFake) -> None:
    """Several clients at once all get answers (threads, no shared-state corruption)."""
    add_payments(fake, 5)
    results: list[int] = []

    def worker() -> None:
        with httpx.Client(base_url=fake.url, headers=ADMIN) as client:
            results.extend(client.get("/api/resource/Payment Entry").status_code for _ in range(5))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 30


def test_load_data_reads_a_file(tmp_path: Any, clock: Clock) -> None:
    """A data file on disk serves the same site; unknown doctypes are refused."""
    path = tmp_path / "erp.json"
    path.write_text(json.dumps(dataset()))
    with ERPNextFake(load_data(path), clock=clock) as fake:
        assert fake.get("Sales Invoice", "ACC-SINV-2026-00001")["grand_total"] == 45000.0
        assert fake.site_tz.key == "Asia/Karachi"
    with pytest.raises(FrappeError):
        ERPNextFake({"documents": {"Nope": []}})


def test_serve_forever_stops_on_sigterm(tmp_path: Any) -> None:
    """The standalone server prints its URL (no secret) and exits cleanly on SIGTERM."""
    path = tmp_path / "erp.json"
    path.write_text(json.dumps(dataset()))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sync.sandbox.erpnext", str(path), "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()
        assert f"http://127.0.0.1:{port}" in line and "adminsecret" not in line
        assert httpx.get(f"http://127.0.0.1:{port}/api/method/ping").json() == {"message": "pong"}
        proc.terminate()
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
