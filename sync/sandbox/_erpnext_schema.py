"""Doctype metadata for the ERPNext fake: columns in table order, child tables, field types, naming.

Column lists were read off the real ERPNext 15 captures (`fields=["*"]` rows, single GETs and
write answers that carry nulls); child tables that were always empty there get a short,
plausible column list. Custom fields from the data file are inserted where the real site
put them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STANDARD = ("name", "owner", "creation", "modified", "modified_by", "docstatus", "idx")
CHILD_TAIL = ("parent", "parentfield", "parenttype")
ACCOUNTS = frozenset({"Accounts User", "Accounts Manager", "System Manager"})
EVERYONE = frozenset({"All"})


def _cols(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# --- field types (by fieldname; the same name means the same type across these doctypes) ------
FLOAT_FIELDS = frozenset(
    _cols("""
    actual_batch_qty actual_qty additional_discount_percentage allocated_amount amount
    amount_eligible_for_commission advance_amount allocated_percentage base_amount
    base_change_amount base_discount_amount base_grand_total base_net_amount base_net_rate
    base_net_total base_outstanding base_paid_amount base_paid_amount_after_tax
    base_payment_amount base_price_list_rate base_rate base_rate_with_margin base_received_amount
    base_received_amount_after_tax base_rounded_total base_rounding_adjustment base_tax_amount
    base_tax_amount_after_discount_amount base_total base_total_allocated_amount
    base_total_taxes_and_charges base_write_off_amount billing_amount billing_hours change_amount
    commission_rate company_total_stock conversion_factor conversion_rate credit_limit
    default_commission_rate delivered_qty difference_amount discount discount_amount
    discount_percentage discounted_amount distributed_discount_amount exchange_gain_loss
    exchange_rate grand_total incentives incoming_rate invoice_portion loyalty_amount
    margin_rate_or_amount monthly_sales_target net_amount net_rate net_total outstanding
    outstanding_amount paid_amount paid_amount_after_tax paid_from_account_balance
    paid_to_account_balance party_balance payment_amount payment_request_outstanding
    payment_term_outstanding plc_conversion_rate price_list_rate qty rate rate_with_margin
    received_amount received_amount_after_tax ref_exchange_rate rounded_total rounding_adjustment
    source_exchange_rate stock_qty stock_uom_rate target_exchange_rate tax_amount
    tax_amount_after_discount_amount total total_advance total_allocated_amount total_amount
    total_billing_amount total_billing_hours total_commission total_monthly_sales total_net_weight
    total_qty total_taxes_and_charges total_weight unallocated_amount weight_per_unit
    write_off_amount
""")
)
INT_FIELDS = frozenset(
    _cols("""
    docstatus idx allocate_advances_automatically allocate_payment_based_on_payment_terms
    allow_account_creation_against_child_company allow_on_submit allow_zero_valuation_rate
    apply_tax_withholding_amount auto_exchange_rate_revaluation
    book_advance_payments_in_separate_party_account bypass_credit_limit_check credit_days
    credit_months custom_remarks default delivered_by_supplier disable_rounded_total disabled
    discount_validity dn_required dont_recompute_tax enable_deferred_revenue
    enable_perpetual_inventory enable_provisional_accounting_for_non_stock_items grant_commission
    group_same_items has_item_scanned ignore_default_payment_terms_template ignore_pricing_rule
    in_standard_filter included_in_paid_amount included_in_print_rate is_cash_or_non_trade_discount
    is_consolidated is_debit_note is_discounted is_exchange_gain_loss is_fixed_asset is_free_item
    is_frozen is_group is_internal_customer is_pos is_return is_system_generated lft loyalty_points
    no_copy only_include_allocated_payments page_break reconcile_on_advance_payment_date
    redeem_loyalty_points reqd restored rgt set_posting_time so_required submit_err_jv
    update_billed_amount_in_delivery_note update_billed_amount_in_sales_order
    update_outstanding_for_self update_stock use_company_roundoff_cost_center
    use_serial_batch_fields write_off_outstanding_amount_automatically allow_error_traceback
""")
)
DATETIME_FIELDS = frozenset({"creation", "modified", "from_time", "to_time"})
DATE_FIELDS = frozenset(
    _cols("""
    posting_date due_date reference_date clearance_date discount_date po_date from_date to_date
    difference_posting_date
""")
)
TIME_FIELDS = frozenset({"posting_time"})


def field_type(column: str) -> str:
    """One of float, int, datetime, date, time, text."""
    if column in FLOAT_FIELDS:
        return "float"
    if column in INT_FIELDS:
        return "int"
    if column in DATETIME_FIELDS:
        return "datetime"
    if column in DATE_FIELDS:
        return "date"
    if column in TIME_FIELDS:
        return "time"
    return "text"


# --- parent doctypes ------------------------------------------------------------------------
PAYMENT_ENTRY = _cols("""
    naming_series payment_type payment_order_status posting_date company mode_of_payment
    party_type party party_name book_advance_payments_in_separate_party_account
    reconcile_on_advance_payment_date bank_account party_bank_account contact_person
    contact_email party_balance paid_from paid_from_account_type paid_from_account_currency
    paid_from_account_balance paid_to paid_to_account_type paid_to_account_currency
    paid_to_account_balance paid_amount paid_amount_after_tax source_exchange_rate
    base_paid_amount base_paid_amount_after_tax received_amount received_amount_after_tax
    target_exchange_rate base_received_amount base_received_amount_after_tax
    total_allocated_amount base_total_allocated_amount unallocated_amount difference_amount
    purchase_taxes_and_charges_template sales_taxes_and_charges_template
    apply_tax_withholding_amount tax_withholding_category base_total_taxes_and_charges
    total_taxes_and_charges reference_no reference_date clearance_date project cost_center
    status custom_remarks remarks base_in_words is_opening letter_head print_heading bank
    bank_account_no payment_order in_words auto_repeat amended_from title
""")
SALES_INVOICE = _cols("""
    title naming_series customer customer_name company posting_date posting_time
    set_posting_time due_date is_pos is_consolidated is_return return_against
    update_outstanding_for_self update_billed_amount_in_sales_order
    update_billed_amount_in_delivery_note is_debit_note currency conversion_rate
    selling_price_list price_list_currency plc_conversion_rate ignore_pricing_rule update_stock
    set_warehouse total_qty total_net_weight base_total base_net_total total net_total
    tax_category base_total_taxes_and_charges total_taxes_and_charges base_grand_total
    base_rounding_adjustment base_rounded_total base_in_words grand_total rounding_adjustment
    use_company_roundoff_cost_center rounded_total in_words total_advance outstanding_amount
    disable_rounded_total apply_discount_on base_discount_amount is_cash_or_non_trade_discount
    additional_discount_percentage discount_amount total_billing_hours total_billing_amount
    base_paid_amount paid_amount base_change_amount change_amount allocate_advances_automatically
    only_include_allocated_payments write_off_amount base_write_off_amount
    write_off_outstanding_amount_automatically redeem_loyalty_points loyalty_points
    loyalty_amount contact_person contact_display contact_mobile contact_email territory
    ignore_default_payment_terms_template payment_terms_template po_no po_date debit_to
    party_account_currency is_opening against_income_account amount_eligible_for_commission
    commission_rate total_commission group_same_items select_print_heading language status
    customer_group is_internal_customer is_discounted remarks project cost_center
    customer_address address_display company_address tax_id letter_head sales_partner
    campaign source auto_repeat from_date to_date inter_company_invoice_reference
    taxes_and_charges amended_from
""")
CUSTOMER = _cols("""
    naming_series customer_name customer_type customer_group territory default_currency
    is_internal_customer language customer_primary_contact mobile_no email_id
    default_commission_rate so_required dn_required is_frozen disabled tax_id
    default_price_list payment_terms image
""")
COMPANY = _cols("""
    company_name abbr default_currency country is_group lft rgt old_parent
    create_chart_of_accounts_based_on chart_of_accounts default_bank_account default_cash_account
    default_receivable_account default_payable_account write_off_account
    allow_account_creation_against_child_company default_expense_account default_income_account
    cost_center exchange_gain_loss_account round_off_account round_off_cost_center
    book_advance_payments_in_separate_party_account reconcile_on_advance_payment_date
    reconciliation_takes_effect_on auto_exchange_rate_revaluation auto_err_frequency submit_err_jv
    accumulated_depreciation_account depreciation_expense_account
    expenses_included_in_asset_valuation disposal_account depreciation_cost_center
    capital_work_in_progress_account asset_received_but_not_billed monthly_sales_target
    total_monthly_sales credit_limit enable_perpetual_inventory
    enable_provisional_accounting_for_non_stock_items default_inventory_account
    stock_adjustment_account stock_received_but_not_billed expenses_included_in_valuation
    default_letter_head tax_id domain date_of_establishment parent_company
""")
PAYMENT_TERMS_TEMPLATE = _cols("template_name allocate_payment_based_on_payment_terms")
PAYMENT_TERM = _cols("""
    payment_term_name invoice_portion mode_of_payment due_date_based_on credit_days
    credit_months discount_type discount discount_validity_based_on discount_validity description
""")
DELETED_DOCUMENT = _cols("deleted_name deleted_doctype restored new_name data")
CUSTOM_FIELD = _cols("""
    is_system_generated dt label fieldname insert_after length fieldtype precision options
    hide_seconds hide_days sort_options fetch_if_empty collapsible non_negative reqd unique
    is_virtual read_only ignore_user_permissions hidden print_hide print_hide_if_no_value
    no_copy allow_on_submit in_list_view in_standard_filter in_global_search in_preview bold
    report_hide search_index allow_in_quick_entry ignore_xss_filter translatable hide_border
    show_dashboard permlevel columns
""")
SYSTEM_SETTINGS = _cols("""
    app_name country language time_zone currency date_format time_format number_format
    first_day_of_the_week float_precision currency_precision rounding_method session_expiry
    allow_error_traceback enable_scheduler
""")

# --- child doctypes -------------------------------------------------------------------------
CHILDREN: dict[str, tuple[str, ...]] = {
    "Payment Entry Reference": _cols("""
        reference_doctype reference_name due_date bill_no payment_term payment_term_outstanding
        account_type payment_type reconcile_effect_on total_amount outstanding_amount
        allocated_amount exchange_rate exchange_gain_loss account payment_request
        payment_request_outstanding
    """),
    "Payment Entry Deduction": _cols(
        "account cost_center amount is_exchange_gain_loss description"
    ),
    "Advance Taxes and Charges": _cols("""
        add_deduct_tax charge_type row_id account_head description included_in_paid_amount
        cost_center rate currency tax_amount total allocated_amount base_tax_amount base_total
    """),
    "Sales Invoice Item": _cols("""
        has_item_scanned item_code item_name description item_group image qty stock_uom uom
        conversion_factor stock_qty price_list_rate base_price_list_rate margin_type
        margin_rate_or_amount rate_with_margin discount_percentage discount_amount
        distributed_discount_amount base_rate_with_margin rate amount base_rate base_amount
        stock_uom_rate is_free_item grant_commission net_rate net_amount base_net_rate
        base_net_amount delivered_by_supplier income_account is_fixed_asset expense_account
        enable_deferred_revenue weight_per_unit total_weight warehouse use_serial_batch_fields
        allow_zero_valuation_rate incoming_rate item_tax_rate actual_batch_qty actual_qty
        company_total_stock sales_invoice_item delivered_qty cost_center page_break
    """),
    "Payment Schedule": _cols("""
        payment_term description due_date mode_of_payment invoice_portion discount_type
        discount_date discount payment_amount outstanding paid_amount discounted_amount
        base_payment_amount base_outstanding base_paid_amount
    """),
    "Sales Taxes and Charges": _cols("""
        charge_type row_id account_head description included_in_print_rate
        included_in_paid_amount cost_center rate account_currency tax_amount total
        tax_amount_after_discount_amount base_tax_amount base_total
        base_tax_amount_after_discount_amount item_wise_tax_detail dont_recompute_tax
    """),
    "Sales Invoice Payment": _cols(
        "default mode_of_payment amount reference_no account type base_amount clearance_date"
    ),
    "Sales Invoice Advance": _cols("""
        reference_type reference_name remarks reference_row advance_amount allocated_amount
        exchange_gain_loss ref_exchange_rate difference_posting_date
    """),
    "Sales Invoice Timesheet": _cols(
        "activity_type description time_sheet timesheet_detail billing_hours billing_amount "
        "from_time to_time project_name"
    ),
    "Sales Team": _cols(
        "sales_person contact_no allocated_percentage allocated_amount commission_rate incentives"
    ),
    "Pricing Rule Detail": _cols(
        "pricing_rule item_code margin_type rate_or_discount child_docname rule_applied"
    ),
    "Packed Item": _cols(
        "parent_item item_code item_name description warehouse qty uom conversion_factor rate"
    ),
    "Party Account": _cols("company account advance_account"),
    "Customer Credit Limit": _cols("company credit_limit bypass_credit_limit_check"),
    "Portal User": _cols("user"),
    "Allowed To Transact With": _cols("company"),
    "Payment Terms Template Detail": _cols("""
        payment_term description invoice_portion mode_of_payment due_date_based_on credit_days
        credit_months discount_type discount discount_validity_based_on discount_validity
    """),
}


@dataclass
class DocTypeMeta:
    """What the fake knows about one doctype; per fake instance, because custom fields differ."""

    name: str
    columns: list[str]
    tables: dict[str, str] = field(default_factory=dict)  # table fieldname -> child doctype
    istable: bool = False
    submittable: bool = False
    # "series:<naming series>" | "field:<fieldname>" | "hash" | "custom_field" | "single"
    autoname: str = "hash"
    read_roles: frozenset[str] = ACCOUNTS
    write_roles: frozenset[str] = ACCOUNTS
    allow_on_submit: frozenset[str] = frozenset()
    custom_anchor: str | None = None  # custom fields go after this column, as on the real site
    extra_types: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._column_set = frozenset(self.columns)
        self._types: dict[str, str] = {}

    def has_column(self, column: str) -> bool:
        return column in self._column_set

    def type_of(self, column: str) -> str:
        kind = self._types.get(column)
        if kind is None:
            kind = self._types[column] = self.extra_types.get(column) or field_type(column)
        return kind

    def table_for_child(self, child_doctype: str) -> str | None:
        for fieldname, child in self.tables.items():
            if child == child_doctype:
                return fieldname
        return None

    def add_column(
        self, column: str, *, after: str | None = None, type_hint: str | None = None
    ) -> None:
        if column in self._column_set:
            return
        tail = [c for c in CHILD_TAIL if self.istable and c in self.columns]
        body = [c for c in self.columns if c not in tail]
        if after and after in body:
            body.insert(body.index(after) + 1, column)
        else:
            body.append(column)
        self.columns = body + tail
        self._column_set = frozenset(self.columns)
        if type_hint and field_type(column) == "text":
            self.extra_types[column] = type_hint
            self._types.pop(column, None)


def build_registry() -> dict[str, DocTypeMeta]:
    """A fresh set of metas (custom fields are added to it by the store)."""
    pe_tables = {
        "deductions": "Payment Entry Deduction",
        "references": "Payment Entry Reference",
        "taxes": "Advance Taxes and Charges",
    }
    si_tables = {
        "sales_team": "Sales Team",
        "pricing_rules": "Pricing Rule Detail",
        "packed_items": "Packed Item",
        "items": "Sales Invoice Item",
        "payments": "Sales Invoice Payment",
        "advances": "Sales Invoice Advance",
        "timesheets": "Sales Invoice Timesheet",
        "payment_schedule": "Payment Schedule",
        "taxes": "Sales Taxes and Charges",
    }
    customer_tables = {
        "sales_team": "Sales Team",
        "accounts": "Party Account",
        "credit_limits": "Customer Credit Limit",
        "portal_users": "Portal User",
        "companies": "Allowed To Transact With",
    }
    sales = frozenset({"Sales User", "Sales Manager", "Sales Master Manager"})
    metas = [
        DocTypeMeta(
            "Payment Entry",
            [*STANDARD, *PAYMENT_ENTRY],
            pe_tables,
            submittable=True,
            autoname="series:ACC-PAY-.YYYY.-",
            custom_anchor="reference_date",
            allow_on_submit=frozenset({"letter_head", "print_heading"}),
        ),
        DocTypeMeta(
            "Sales Invoice",
            [*STANDARD, *SALES_INVOICE],
            si_tables,
            submittable=True,
            autoname="series:ACC-SINV-.YYYY.-",
            custom_anchor="customer",
            read_roles=ACCOUNTS | {"Sales User"},
            allow_on_submit=frozenset(
                {
                    "letter_head",
                    "select_print_heading",
                    "po_no",
                    "po_date",
                    "remarks",
                    "is_discounted",
                }
            ),
        ),
        DocTypeMeta(
            "Customer",
            [*STANDARD, *CUSTOMER],
            customer_tables,
            autoname="field:customer_name",
            read_roles=ACCOUNTS | sales,
            write_roles=ACCOUNTS | sales,
        ),
        DocTypeMeta(
            "Company",
            [*STANDARD, *COMPANY],
            autoname="field:company_name",
            read_roles=EVERYONE,
            write_roles=frozenset({"System Manager"}),
        ),
        DocTypeMeta(
            "Payment Terms Template",
            [*STANDARD, *PAYMENT_TERMS_TEMPLATE],
            {"terms": "Payment Terms Template Detail"},
            autoname="field:template_name",
            read_roles=ACCOUNTS | sales,
        ),
        DocTypeMeta(
            "Payment Term",
            [*STANDARD, *PAYMENT_TERM],
            autoname="field:payment_term_name",
            read_roles=ACCOUNTS | sales,
        ),
        DocTypeMeta(
            "Deleted Document",
            [*STANDARD, *DELETED_DOCUMENT],
            autoname="hash",
            read_roles=frozenset({"System Manager"}),
            write_roles=frozenset(),
        ),
        DocTypeMeta(
            "Custom Field",
            [*STANDARD, *CUSTOM_FIELD],
            autoname="custom_field",
            read_roles=frozenset({"System Manager"}),
            write_roles=frozenset({"System Manager"}),
        ),
        DocTypeMeta(
            "System Settings",
            [c for c in (*STANDARD, *SYSTEM_SETTINGS) if c != "creation"],
            autoname="single",
            extra_types={"idx": "text"},  # a Single: no creation, idx "0"
            read_roles=frozenset({"System Manager"}),
            write_roles=frozenset({"System Manager"}),
        ),
    ]
    registry = {m.name: m for m in metas}
    for child, cols in CHILDREN.items():
        registry[child] = DocTypeMeta(child, [*STANDARD, *cols, *CHILD_TAIL], istable=True)
    return registry
