"""The Zenslearn Public API contract (lms-contract.md): every path, field and status rule in one place.

The LMS client, the LMS sandbox and the tests all read these names, so a correction to the
published API is a one-line change here. Nothing else in the code base spells an LMS path or
an LMS body field.
"""

from __future__ import annotations

from typing import Final

API_PREFIX: Final = "/api/v1/public"
DEFAULT_BASE_URL: Final = "https://api.zenslearn.com" + API_PREFIX

# --- auth and headers -------------------------------------------------------------------
HDR_API_KEY: Final = "X-API-Key"
HDR_IDEMPOTENCY_KEY: Final = "Idempotency-Key"
HDR_RETRY_AFTER: Final = "Retry-After"
HDR_REPLAYED: Final = "Idempotent-Replayed"  # set by the sandbox; the client never depends on it

# --- scopes -----------------------------------------------------------------------------
SCOPE_FEES_READ: Final = "fees:read"
SCOPE_FEES_WRITE: Final = "fees:write"
SCOPE_STUDENTS_READ: Final = "students:read"
SCOPE_STUDENTS_WRITE: Final = "students:write"
SCOPE_READ: Final = "read"
SCOPE_WRITE: Final = "write"
BROAD_SCOPES: Final = {SCOPE_READ: ":read", SCOPE_WRITE: ":write"}  # broad scope -> suffix it covers
REQUIRED_SCOPES: Final = (SCOPE_FEES_READ, SCOPE_FEES_WRITE, SCOPE_STUDENTS_READ)

# --- rate limits --------------------------------------------------------------------------
GENERAL_LIMIT_PER_MINUTE: Final = 1000
STUDENT_CREATE_LIMIT_PER_MINUTE: Final = 20

# --- pagination ---------------------------------------------------------------------------
Q_PAGE: Final = "page"
Q_PER_PAGE: Final = "per_page"
PER_PAGE_DEFAULT: Final = 20
PER_PAGE_MAX: Final = 100
PAGE_DATA: Final = "data"
PAGE_TOTAL: Final = "total"
PAGE_TOTAL_PAGES: Final = "total_pages"

# --- paths (relative to the base URL) -----------------------------------------------------
PATH_STUDENTS: Final = "/students"
PATH_STUDENT: Final = "/students/{student_id}"
PATH_STUDENT_FEE_SUMMARY: Final = "/students/{student_id}/fee-summary"
PATH_FEE_PLANS: Final = "/fee-plans"
PATH_FEE_PLAN: Final = "/fee-plans/{plan_id}"
PATH_PLAN_INSTALLMENTS: Final = "/fee-plans/{plan_id}/installments"
PATH_PLAN_PAYMENTS: Final = "/fee-plans/{plan_id}/payments"
PATH_PLAN_CANCEL: Final = "/fee-plans/{plan_id}/cancel"
PATH_INSTALLMENT_WAIVE: Final = "/fee-plans/{plan_id}/installments/{installment_id}/waive"
PATH_PAYMENTS: Final = "/payments"

# scope each operation needs (the sandbox enforces it, `check` verifies the key holds it)
OPERATION_SCOPES: Final = {
    "list_students": SCOPE_STUDENTS_READ,
    "get_student": SCOPE_STUDENTS_READ,
    "list_fee_plans": SCOPE_FEES_READ,
    "get_fee_plan": SCOPE_FEES_READ,
    "list_installments": SCOPE_FEES_READ,
    "list_payments": SCOPE_FEES_READ,
    "fee_summary": SCOPE_FEES_READ,
    "create_plan": SCOPE_FEES_WRITE,
    "record_payment": SCOPE_FEES_WRITE,
    "cancel_plan": SCOPE_FEES_WRITE,
    "waive_installment": SCOPE_FEES_WRITE,
}

# --- query parameters ---------------------------------------------------------------------
Q_SEARCH: Final = "search"
Q_STATUS: Final = "status"
Q_STUDENT_ID: Final = "student_id"
Q_FEE_PLAN_ID: Final = "fee_plan_id"

# --- student fields -----------------------------------------------------------------------
STUDENT_ID: Final = "id"
STUDENT_NAME: Final = "name"
STUDENT_EMAIL: Final = "email"
STUDENT_STATUS: Final = "status"

# --- fee plan fields ----------------------------------------------------------------------
PLAN_ID: Final = "id"
PLAN_STUDENT_ID: Final = "student_id"
PLAN_BATCH_ID: Final = "batch_id"
PLAN_TYPE: Final = "plan_type"
PLAN_TOTAL_AMOUNT: Final = "total_amount"
PLAN_DISCOUNT_TYPE: Final = "discount_type"
PLAN_DISCOUNT_VALUE: Final = "discount_value"
PLAN_FINAL_AMOUNT: Final = "final_amount"
PLAN_CURRENCY: Final = "currency"
PLAN_STATUS: Final = "status"
PLAN_NOTES: Final = "notes"
PLAN_CREATED_AT: Final = "created_at"
PLAN_INSTALLMENTS: Final = "installments"
PLAN_AMOUNT_PAID: Final = "amount_paid"
PLAN_BALANCE_DUE: Final = "balance_due"
PLAN_CANCEL_REASON: Final = "reason"

PLAN_TYPES: Final = ("one_time", "monthly", "installment")
DISCOUNT_TYPES: Final = ("percent", "flat")
PLAN_ACTIVE: Final = "active"
PLAN_COMPLETED: Final = "completed"
PLAN_CANCELLED: Final = "cancelled"
DEFAULT_CURRENCY: Final = "PKR"

# --- installment fields -------------------------------------------------------------------
INST_ID: Final = "id"
INST_SEQUENCE: Final = "sequence"
INST_AMOUNT_DUE: Final = "amount_due"
INST_AMOUNT_PAID: Final = "amount_paid"
INST_DUE_DATE: Final = "due_date"
INST_STATUS: Final = "status"
INST_LABEL: Final = "label"
INST_PENDING: Final = "pending"
INST_PARTIALLY_PAID: Final = "partially_paid"
INST_PAID: Final = "paid"
INST_OVERDUE: Final = "overdue"
INST_WAIVED: Final = "waived"
INST_WAIVE_REASON: Final = "reason"

# --- payment fields -----------------------------------------------------------------------
PAY_ID: Final = "id"
# every write (create plan, record payment, cancel, waive) answers with the object it wrote: no id, no success
WRITE_RESULT_ID: Final = "id"
PAY_FEE_PLAN_ID: Final = "fee_plan_id"
PAY_STUDENT_ID: Final = "student_id"
PAY_AMOUNT: Final = "amount"
PAY_DATE: Final = "payment_date"
PAY_METHOD: Final = "payment_method"
PAY_REFERENCE: Final = "reference_number"
PAY_INSTALLMENT_ID: Final = "fee_installment_id"
PAY_NOTES: Final = "notes"
PAY_RECEIPT_NUMBER: Final = "receipt_number"
PAY_STATUS: Final = "status"
PAY_RECEIVED: Final = "received"
PAY_REVERSED: Final = "reversed"
PAYMENT_METHODS: Final = ("bank_transfer", "jazzcash", "easypaisa", "cheque", "cash", "online")

# --- fee summary fields -------------------------------------------------------------------
SUMMARY_TOTAL_DUE: Final = "total_due"
SUMMARY_TOTAL_PAID: Final = "total_paid"
SUMMARY_BALANCE_DUE: Final = "balance_due"
SUMMARY_OVERDUE: Final = "overdue_amount"
SUMMARY_PLANS: Final = "plans"

# --- error bodies -------------------------------------------------------------------------
ERR_DETAIL: Final = "detail"
ERR_REMAINING_BALANCE: Final = "remaining_balance"

# The 409 answers are told apart by their `detail` text. The sandbox answers with exactly
# these phrases; the classifier looks for them (case-insensitive). Kinds are conflict kinds.
CONFLICT_409_PHRASES: Final = (
    ("idempotency", "idempotency_key_reused"),
    ("already cancelled", "plan_cancelled"),
    ("plan is cancelled", "plan_cancelled"),
    ("already completed", "plan_completed"),
    ("plan is completed", "plan_completed"),
    ("already paid", "installment_closed"),
    ("already waived", "installment_closed"),
    ("installment is waived", "installment_closed"),
)
DETAIL_KEY_REUSED: Final = "Idempotency-Key reused with a different request body"
DETAIL_PLAN_CANCELLED: Final = "Fee plan is cancelled"
DETAIL_PLAN_COMPLETED: Final = "Fee plan is completed"
DETAIL_PLAN_ALREADY_CANCELLED: Final = "Fee plan is already cancelled"
DETAIL_INSTALLMENT_PAID: Final = "Installment is already paid"
DETAIL_INSTALLMENT_WAIVED: Final = "Installment is already waived"
DETAIL_OVERPAYMENT: Final = "Payment exceeds remaining balance"
DETAIL_MISSING_IDEMPOTENCY_KEY: Final = "Idempotency-Key header is required"


# LMS resource ids are integers (a UUID is accepted too, should the service switch); an id that is
# neither never reaches a URL: the request would be malformed.
LMS_ID_PATTERN: Final = r"^(?:[1-9][0-9]{0,17}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"


def path(template: str, **ids: object) -> str:
    """Fill a path template with ids (each converted with str)."""
    return template.format(**{k: str(v) for k, v in ids.items()})


def scope_covers(held: set[str] | frozenset[str], needed: str) -> bool:
    """True when the scopes a key holds cover `needed` (directly or through read/write)."""
    if needed in held:
        return True
    return any(broad in held and needed.endswith(suffix) for broad, suffix in BROAD_SCOPES.items())
