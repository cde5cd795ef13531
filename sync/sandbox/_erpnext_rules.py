"""ERPNext behaviour the fake imitates: filled fields, statuses, invoice updates, validations.

Only what a payment sync can observe: a Payment Entry filled like `set_missing_values`, the
invoice outstanding / Payment Schedule / `modified` moving on PE submit and cancel, and the
validation errors the real server answered in the captures (unknown party, missing payment
term, fully paid invoice, bank payment without reference). Other doctypes get plain defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _erpnext_errors as errors
from ._erpnext_query import flt, parse_datetime

if TYPE_CHECKING:
    from ._erpnext_store import Store

PE = "Payment Entry"
SI = "Sales Invoice"
PE_STATUS = {0: "Draft", 1: "Submitted", 2: "Cancelled"}


def _setdefault(doc: dict, key: str, value: Any) -> None:
    if doc.get(key) is None and value is not None:
        doc[key] = value


def _money(value: float) -> float:
    return round(float(value), 6)


def set_status(store: Store, doctype: str, doc: dict) -> None:
    if doctype == PE:
        doc["status"] = PE_STATUS.get(int(doc.get("docstatus") or 0), "Draft")
    elif doctype == SI:
        doc["status"] = invoice_status(doc, store.today())


def invoice_status(doc: dict, today: Any) -> str:
    docstatus = int(doc.get("docstatus") or 0)
    if docstatus == 0:
        return "Draft"
    if docstatus == 2:
        return "Cancelled"
    if doc.get("is_return"):
        return "Return"
    outstanding, total = flt(doc.get("outstanding_amount")), flt(doc.get("grand_total"))
    if outstanding <= 0:
        return "Paid"
    due = parse_datetime(doc.get("due_date"))
    if due is not None and due.date() < today:
        return "Overdue"
    return "Partly Paid" if outstanding < total else "Unpaid"


# --- server-filled fields -------------------------------------------------------------------
def fill(store: Store, doctype: str, doc: dict, *, recompute: bool) -> None:
    """Fill what the server fills; `recompute` (HTTP writes) also recomputes totals."""
    if doctype == PE:
        _fill_payment_entry(store, doc, recompute=recompute)
    elif doctype == SI:
        _fill_sales_invoice(store, doc)
    elif doctype == "Customer":
        _setdefault(doc, "customer_name", doc.get("name"))
        for key, value in (
            ("customer_type", "Individual"),
            ("customer_group", "Individual"),
            ("disabled", 0),
            ("is_frozen", 0),
            ("is_internal_customer", 0),
        ):
            _setdefault(doc, key, value)


def _company(store: Store, name: str | None) -> dict:
    companies = store.docs["Company"]
    if name and name in companies:
        return companies[name]
    return next(iter(companies.values()), {})


def _infer(store: Store, doctype: str, key_field: str, key: Any, value_field: str) -> Any:
    """A value other documents pair with `key` (e.g. the account type of an account)."""
    if key is None:
        return None
    for other in store.docs[doctype].values():
        if other.get(key_field) == key and other.get(value_field) is not None:
            return other[value_field]
    return None


def account_type(store: Store, account: str | None) -> str | None:
    """The Account's type, as other documents and the company defaults reveal it."""
    if account is None:
        return None
    for company in store.docs["Company"].values():
        for field, kind in (
            ("default_bank_account", "Bank"),
            ("default_cash_account", "Cash"),
            ("default_receivable_account", "Receivable"),
            ("default_payable_account", "Payable"),
        ):
            if company.get(field) == account:
                return kind
    return _infer(store, PE, "paid_to", account, "paid_to_account_type") or _infer(
        store, PE, "paid_from", account, "paid_from_account_type"
    )


def _fill_payment_entry(store: Store, doc: dict, *, recompute: bool) -> None:
    company = _company(store, doc.get("company"))
    currency = company.get("default_currency") or _infer(
        store, PE, "company", company.get("name"), "paid_to_account_currency"
    )
    for key, value in (
        ("naming_series", "ACC-PAY-.YYYY.-"),
        ("payment_type", "Receive"),
        ("payment_order_status", "Initiated"),
        ("posting_date", store.today().isoformat()),
        ("company", company.get("name")),
        ("party_type", "Customer"),
        ("book_advance_payments_in_separate_party_account", 0),
        ("reconcile_on_advance_payment_date", 0),
        ("apply_tax_withholding_amount", 0),
        ("custom_remarks", 0),
        ("is_opening", "No"),
        ("source_exchange_rate", 1.0),
        ("target_exchange_rate", 1.0),
        ("paid_from_account_balance", 0.0),
        ("paid_to_account_balance", 0.0),
    ):
        _setdefault(doc, key, value)
    if doc.get("party_type") == "Customer":
        _setdefault(doc, "party_balance", party_balance(store, doc.get("party")))
    customer = (
        store.docs["Customer"].get(doc.get("party"))
        if doc.get("party_type") == "Customer"
        else None
    )
    _setdefault(doc, "party_name", (customer or {}).get("customer_name") or doc.get("party"))
    if customer:
        _setdefault(doc, "contact_person", customer.get("customer_primary_contact"))
        _setdefault(doc, "contact_email", customer.get("email_id"))
    receivable = company.get("default_receivable_account") or _infer(
        store, PE, "payment_type", "Receive", "paid_from"
    )
    if doc.get("payment_type") == "Receive":
        _setdefault(doc, "paid_from", receivable)
        _setdefault(
            doc,
            "paid_to",
            _infer(store, PE, "mode_of_payment", doc.get("mode_of_payment"), "paid_to"),
        )
    _setdefault(doc, "paid_from_account_type", account_type(store, doc.get("paid_from")))
    _setdefault(doc, "paid_to_account_type", account_type(store, doc.get("paid_to")))
    _setdefault(doc, "paid_from_account_currency", currency)
    _setdefault(doc, "paid_to_account_currency", currency)

    for row in doc.get("references") or []:
        _fill_reference(store, row)
    paid = flt(doc.get("paid_amount"))
    _setdefault(doc, "received_amount", paid)
    received = flt(doc.get("received_amount"))
    allocated = sum(flt(r.get("allocated_amount")) for r in doc.get("references") or [])
    computed = {
        "paid_amount": paid,
        "received_amount": received,
        "base_paid_amount": _money(paid * flt(doc.get("source_exchange_rate") or 1)),
        "base_received_amount": _money(received * flt(doc.get("target_exchange_rate") or 1)),
        "paid_amount_after_tax": paid,
        "received_amount_after_tax": received,
        "total_allocated_amount": _money(allocated),
        "base_total_allocated_amount": _money(allocated),
        "unallocated_amount": _money(paid - allocated),
        "difference_amount": 0.0,
        "total_taxes_and_charges": 0.0,
        "base_total_taxes_and_charges": 0.0,
    }
    computed["base_paid_amount_after_tax"] = computed["base_paid_amount"]
    computed["base_received_amount_after_tax"] = computed["base_received_amount"]
    for key, value in computed.items():
        if recompute:
            doc[key] = value
        else:
            _setdefault(doc, key, value)
    _setdefault(doc, "title", doc.get("party_name"))
    words = {
        "in_words": money_in_words(received, currency),
        "base_in_words": money_in_words(paid, currency),
    }
    for key, value in words.items():
        if recompute:
            doc[key] = value
        else:
            _setdefault(doc, key, value)
    if (
        doc.get("party")
        and not doc.get("custom_remarks")
        and (recompute or doc.get("remarks") is None)
    ):
        doc["remarks"] = _remarks(doc, currency)


def _remarks(doc: dict, currency: str | None) -> str:
    """ERPNext's `set_remarks` (amounts as the saved floats print)."""
    cur = f"{currency} " if currency else ""
    lines = [f"Amount {cur}{flt(doc.get('paid_amount'))} received from {doc['party']}"]
    if doc.get("reference_no"):
        lines.append(
            f"Transaction reference no {doc['reference_no']} dated {doc.get('reference_date')}"
        )
    lines += [
        f"Amount {cur}{flt(r.get('allocated_amount'))} against {r.get('reference_doctype')} "
        f"{r.get('reference_name')}"
        for r in doc.get("references") or []
    ]
    return "\n".join(lines)


def party_balance(store: Store, party: str | None) -> float:
    return _money(
        sum(
            flt(i.get("outstanding_amount"))
            for i in store.docs[SI].values()
            if i.get("customer") == party and int(i.get("docstatus") or 0) == 1
        )
    )


_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ("", "thousand", "million", "billion", "trillion")


def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    tail = (
        _ONES[rest]
        if rest < 20
        else _TENS[rest // 10] + (f" {_ONES[rest % 10]}" if rest % 10 else "")
    )
    if hundreds:
        return f"{_ONES[hundreds]} hundred" + (f" and {tail}" if rest else "")
    return tail


def in_words(number: int) -> str:
    """English words as num2words writes them (Frappe's `in_words`, hyphens as spaces)."""
    if number == 0:
        return "zero"
    groups, scale = [], 0
    while number:
        number, chunk = divmod(number, 1000)
        if chunk:
            groups.append((chunk, scale))
        scale += 1
    text = ""
    for chunk, scale in reversed(groups):
        piece = _below_thousand(chunk) + (f" {_SCALES[scale]}" if scale else "")
        if not text:
            text = piece
        else:
            text += (" and " if scale == 0 and chunk < 100 else ", ") + piece
    return text


def money_in_words(amount: float, currency: str | None) -> str:
    """`frappe.utils.money_in_words`: 'PKR Thirteen Thousand, Five Hundred only.'"""
    whole = int(abs(amount))
    fraction = round((abs(amount) - whole) * 100)
    text = f"{currency or ''} {in_words(whole).title()}".strip()
    if fraction:
        text += f" and {in_words(fraction).title()} {'Paisa' if currency == 'PKR' else 'Cent'}"
    return text + " only."  # ERPNext words the absolute amount (credit notes too)


def _fill_reference(store: Store, row: dict) -> None:
    _setdefault(row, "reference_doctype", SI)
    for key, value in (
        ("exchange_rate", 1.0),
        ("exchange_gain_loss", 0.0),
        ("payment_request_outstanding", 0.0),
    ):
        _setdefault(row, key, value)
    invoice = (
        store.docs[SI].get(row.get("reference_name"))
        if row.get("reference_doctype") == SI
        else None
    )
    if not invoice:
        return
    _setdefault(row, "due_date", invoice.get("due_date"))
    _setdefault(row, "total_amount", invoice.get("grand_total"))
    _setdefault(row, "outstanding_amount", invoice.get("outstanding_amount"))
    _setdefault(row, "account", invoice.get("debit_to"))
    _setdefault(row, "payment_term_outstanding", 0.0)  # only get_payment_entry fills it


def _schedule_row(invoice: dict, payment_term: str | None) -> dict | None:
    if not payment_term:
        return None
    return next(
        (r for r in invoice.get("payment_schedule") or [] if r.get("payment_term") == payment_term),
        None,
    )


def _fill_sales_invoice(store: Store, doc: dict) -> None:
    company = _company(store, doc.get("company"))
    currency = company.get("default_currency")
    customer = store.docs["Customer"].get(doc.get("customer")) or {}
    today = store.today().isoformat()
    for key, value in (
        ("naming_series", "ACC-SINV-.YYYY.-"),
        ("company", company.get("name")),
        ("posting_date", today),
        ("set_posting_time", 0),
        ("is_pos", 0),
        ("is_return", 0),
        ("currency", currency),
        ("conversion_rate", 1.0),
        ("party_account_currency", currency),
        ("customer_name", customer.get("customer_name") or doc.get("customer")),
        ("debit_to", company.get("default_receivable_account")),
        ("is_opening", "No"),
    ):
        _setdefault(doc, key, value)
    _setdefault(doc, "title", doc.get("customer_name"))
    for item in doc.get("items") or []:
        _setdefault(item, "qty", 1.0)
        _setdefault(item, "amount", _money(flt(item.get("qty")) * flt(item.get("rate"))))
        for key in ("rate", "amount"):
            for twin in (f"base_{key}", f"net_{key}", f"base_net_{key}"):
                _setdefault(item, twin, item.get(key))
    total = _money(sum(flt(i.get("amount")) for i in doc.get("items") or []))
    for key in (
        "total",
        "net_total",
        "base_total",
        "base_net_total",
        "grand_total",
        "base_grand_total",
        "rounded_total",
        "base_rounded_total",
    ):
        _setdefault(doc, key, total)
    grand_total = flt(doc.get("grand_total"))
    _setdefault(doc, "outstanding_amount", grand_total)
    _setdefault(
        doc, "in_words", money_in_words(flt(doc.get("rounded_total") or grand_total), currency)
    )
    _setdefault(doc, "base_in_words", doc.get("in_words"))
    if not doc.get("payment_schedule") and grand_total > 0:
        doc["payment_schedule"] = [
            {
                "due_date": doc.get("due_date") or doc.get("posting_date"),
                "invoice_portion": 100.0,
                "payment_amount": grand_total,
            }
        ]
    for row in doc.get("payment_schedule") or []:
        amount = flt(row.get("payment_amount"))
        for key, value in (
            ("outstanding", amount),
            ("paid_amount", 0.0),
            ("discount_type", "Percentage"),
            ("discount", 0.0),
            ("discounted_amount", 0.0),
        ):
            _setdefault(row, key, value)
        for key in ("payment_amount", "outstanding", "paid_amount"):
            _setdefault(row, f"base_{key}", row.get(key))
    dues = [r["due_date"] for r in doc.get("payment_schedule") or [] if r.get("due_date")]
    _setdefault(doc, "due_date", max(dues) if dues else doc.get("posting_date"))


# --- effects of submit / cancel -------------------------------------------------------------
def on_docstatus(store: Store, doctype: str, doc: dict, *, sign: int, now: str, user: str) -> None:
    """A Payment Entry moves its invoices' outstanding, schedule, status and `modified`."""
    if doctype != PE:
        return
    for row in doc.get("references") or []:
        invoice = (
            store.docs[SI].get(row.get("reference_name"))
            if row.get("reference_doctype") == SI
            else None
        )
        if invoice is None:
            continue
        amount = flt(row.get("allocated_amount")) * sign
        invoice["outstanding_amount"] = _money(flt(invoice.get("outstanding_amount")) - amount)
        term = _schedule_row(invoice, row.get("payment_term"))
        if term is not None:  # only rows that carry a payment_term touch the schedule
            for key, delta in (("paid_amount", amount), ("outstanding", -amount)):
                term[key] = _money(flt(term.get(key)) + delta)
            term["base_paid_amount"] = term["paid_amount"]
            # ERPNext 15 lowers base_outstanding on cancel too (captured: 27000, 0, -27000, -54000)
            term["base_outstanding"] = _money(flt(term.get("base_outstanding")) - abs(amount))
        row["outstanding_amount"] = invoice["outstanding_amount"]
        invoice["status"] = invoice_status(invoice, store.today())
        # a back-dated helper write must not move the invoice's `modified` backwards
        previous = parse_datetime(invoice.get("modified"))
        current = parse_datetime(now)
        if previous is None or current is None or current >= previous:
            invoice["modified"] = now
        invoice["modified_by"] = user


# --- validations (HTTP writes only; the Python helpers trust their caller) -------------------
def validate(store: Store, doctype: str, doc: dict, *, where: str) -> None:
    if doctype != PE:
        return
    if (
        doc.get("party_type") == "Customer"
        and store.docs["Customer"]
        and doc.get("party") not in store.docs["Customer"]
    ):
        raise errors.validation(
            f"Could not find Party: {doc.get('party')}", where=where, exc_type="LinkValidationError"
        )
    invoices = []
    for row in doc.get("references") or []:
        if row.get("reference_doctype") != SI:
            continue
        invoice = store.docs[SI].get(row.get("reference_name"))
        if invoice is None:
            raise errors.validation(
                f"Could not find Row #{row.get('idx')}: Name: {row.get('reference_name')}",
                where=where,
                exc_type="LinkValidationError",
            )
        template = (
            store.docs["Payment Terms Template"].get(invoice.get("payment_terms_template")) or {}
        )
        if template.get("allocate_payment_based_on_payment_terms") and not row.get("payment_term"):
            raise errors.validation(
                f"<strong>{invoice['name']}</strong> has Payment Term based allocation enabled. "
                f"Select a Payment Term for Row #<strong>{row.get('idx')}</strong> in Payment "
                "References section",
                where=where,
                erpnext=True,
            )
        invoices.append((row, invoice))
    for row, invoice in invoices:
        if int(invoice.get("docstatus") or 0) != 1:
            raise errors.validation(
                f"{SI} {invoice['name']} must be submitted", where=where, erpnext=True
            )
        outstanding = flt(invoice.get("outstanding_amount"))
        if not invoice.get("is_return") and outstanding <= 0:
            raise errors.validation(
                f"{SI} {invoice['name']} has already been fully paid.", where=where, erpnext=True
            )
        if flt(row.get("allocated_amount")) > outstanding + 0.005:
            raise errors.validation(
                f"Row #{row.get('idx')}: Allocated Amount cannot be greater than outstanding "
                "amount.",
                where=where,
                erpnext=True,
            )
    bank_side = (
        "paid_to_account_type" if doc.get("payment_type") == "Receive" else "paid_from_account_type"
    )
    if doc.get(bank_side) == "Bank" and not (doc.get("reference_no") and doc.get("reference_date")):
        raise errors.validation(
            "Reference No and Reference Date is mandatory for Bank transaction",
            where=where,
            erpnext=True,
        )


def check_not_linked(store: Store, doctype: str, name: str) -> None:
    if doctype != SI:
        return
    for pe in store.docs[PE].values():
        if int(pe.get("docstatus") or 0) == 2:
            continue
        for row in pe.get("references") or []:
            if row.get("reference_doctype") == SI and row.get("reference_name") == name:
                raise errors.validation(
                    f"Cannot delete or cancel because {SI} {name} is linked with {PE} {pe['name']}",
                    where="delete",
                    exc_type="LinkExistsError",
                )


# --- erpnext...payment_entry.get_payment_entry ------------------------------------------------
def payment_entry_for_invoice(store: Store, dt: str, dn: str) -> dict:
    """The unsaved Payment Entry the desk builds for an invoice (one row per unpaid installment)."""
    invoice = store.docs[SI].get(dn) if dt == SI else None
    if invoice is None:
        raise errors.doc_not_found(dt, dn)
    template = store.docs["Payment Terms Template"].get(invoice.get("payment_terms_template")) or {}
    rows: list[dict] = []
    if template.get("allocate_payment_based_on_payment_terms"):
        for term in invoice.get("payment_schedule") or []:
            if flt(term.get("outstanding")) > 0:
                rows.append(
                    {
                        "payment_term": term.get("payment_term"),
                        "payment_term_outstanding": flt(term.get("outstanding")),
                        "allocated_amount": flt(term.get("outstanding")),
                    }
                )
    elif flt(invoice.get("outstanding_amount")) > 0:
        rows.append({"allocated_amount": flt(invoice.get("outstanding_amount"))})
    company = _company(store, invoice.get("company"))
    refs = [{"reference_doctype": SI, "reference_name": dn, **r} for r in rows]
    amount = _money(sum(r["allocated_amount"] for r in rows))
    doc: dict = {
        "owner": store.admin_user,
        "docstatus": 0,
        "idx": 0,
        "party": invoice.get("customer"),
        "company": invoice.get("company"),
        "paid_amount": amount,
        "received_amount": amount,
        "paid_to": company.get("default_bank_account"),
        "reference_date": store.today().isoformat(),
        "references": refs,
    }
    _fill_payment_entry(store, doc, recompute=True)
    for key in (
        "remarks",
        "title",
        "in_words",
        "base_in_words",
    ):  # set on save, not by get_payment_entry
        doc.pop(key, None)
    for key in (
        "paid_amount_after_tax",
        "base_paid_amount_after_tax",
        "received_amount_after_tax",
        "base_received_amount_after_tax",
    ):
        doc[key] = 0.0
    doc["status"] = "Draft"
    return doc
