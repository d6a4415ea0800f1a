"""Monthly invoices from the usage ledger.

Invariants:
- A ledger row is counted by at most one closed invoice: closing claims the rows it counts
  (`UsageRecord.invoice`) in the same transaction that writes the lines, and only rows
  nobody claimed yet. A row that commits after its month closed stays unclaimed and is
  carried to the next invoice of the organization as a late-usage line: never lost, never
  counted twice.
- An invoice's total is the sum of its lines; each line is its ledger micro-dollars summed
  exactly (integers) and rounded once to the cent, half away from zero. Stripe receives
  exactly these line amounts, so its total is the same.
- One live (non-void) invoice per organization and month; "void and re-issue" writes the
  next version, which takes over the rows of the voided one.
"""

from datetime import date

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import BooleanField, Case, Max, Q, Sum, Value, When
from django.utils import timezone

from billing import stripe_sync
from billing.models import Invoice, InvoiceLine, UsageRecord
from billing.selectors import MICROS_PER_CENT, month_bounds, month_start
from billing.tasks import push_invoice
from portal.models import Organization


def micros_to_cents(micros: int) -> int:
    """Round micro-dollars to cents, half away from zero, in integers (no float ever
    touches an amount): 5,000 µ$ → 1¢, 4,999 µ$ → 0¢, −5,000 µ$ → −1¢."""
    cents, rest = divmod(abs(micros), MICROS_PER_CENT)
    cents += 2 * rest >= MICROS_PER_CENT
    return cents if micros >= 0 else -cents


def _live_invoice(organization: Organization, period_start: date) -> Invoice:
    """The month's live invoice, locked; created (as the next version) when missing."""
    invoice = (
        Invoice.objects.select_for_update()
        .filter(organization=organization, period_start=period_start)
        .exclude(status=Invoice.Status.VOID)
        .first()
    )
    if invoice is None:
        last = Invoice.objects.filter(
            organization=organization, period_start=period_start
        ).aggregate(v=Max("version"))["v"]
        invoice = Invoice.objects.create(
            organization=organization, period_start=period_start, version=(last or 0) + 1
        )
    return invoice


@transaction.atomic
def invoice_close(*, organization: Organization, period_start: date) -> Invoice:
    """The month's invoice, one line per deployment and kind (late usage of earlier months
    on lines of its own). Once the month is over the invoice closes and claims its rows;
    before that it is an open preview, recomputed on every call. Closing again returns
    the closed invoice unchanged."""
    period_start = month_start(period_start)
    start, end = month_bounds(period_start)
    invoice = _live_invoice(organization, period_start)
    if invoice.status == Invoice.Status.CLOSED:
        return invoice
    unclaimed = Q(organization=organization, invoice__isnull=True, window_start__lt=end)
    closing = timezone.now() >= end
    if closing:
        # Rows that commit after this statement stay unclaimed: the next invoice has them.
        UsageRecord.objects.filter(unclaimed).update(invoice=invoice)
        counted = UsageRecord.objects.filter(invoice=invoice)
    else:
        counted = UsageRecord.objects.filter(unclaimed | Q(invoice=invoice))
    sums = (
        counted.annotate(
            late=Case(
                When(window_start__lt=start, then=Value(True)),
                default=Value(False),
                output_field=BooleanField(),
            )
        )
        .values("late", "deployment_name", "kind")
        .annotate(quantity=Sum("quantity"), micros=Sum("amount_micros"))
        .order_by("late", "deployment_name", "kind")
    )
    invoice.lines.all().delete()
    lines = InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            deployment_name=s["deployment_name"],
            kind=s["kind"],
            late=s["late"],
            quantity=s["quantity"],
            amount_cents=micros_to_cents(s["micros"]),
        )
        for s in sums
    )
    invoice.total_cents = sum(line.amount_cents for line in lines)
    if closing:
        invoice.status = Invoice.Status.CLOSED
        invoice.closed_at = timezone.now()
        if stripe_sync.enabled():
            invoice_id = invoice.pk
            transaction.on_commit(lambda: push_invoice.delay(invoice_id))
    invoice.save()
    return invoice


@transaction.atomic
def invoice_reissue(*, invoice_id: int) -> Invoice:
    """Void the invoice and issue its month again from the ledger as the next version. The
    new version takes over the voided one's rows; pushed to Stripe, it voids the old
    Stripe invoice and creates exactly one new one."""
    old = Invoice.objects.select_for_update().get(pk=invoice_id)
    if old.status == Invoice.Status.VOID:
        raise ValidationError({"invoice": f"{old} is void already; re-issue its live version."})
    old.status = Invoice.Status.VOID
    old.save(update_fields=["status"])
    new = Invoice.objects.create(
        organization=old.organization, period_start=old.period_start, version=old.version + 1
    )
    UsageRecord.objects.filter(invoice=old).update(invoice=new)
    return invoice_close(organization=old.organization, period_start=old.period_start)


def invoices_close_month(*, period_start: date) -> int:
    """Close the month's invoice of every organization with unclaimed usage up to the end
    of that month (its own usage, or late usage of earlier months)."""
    _, end = month_bounds(period_start)
    org_ids = (
        UsageRecord.objects.filter(window_start__lt=end, invoice__isnull=True)
        .values_list("organization_id", flat=True)
        .distinct()
    )
    closed = 0
    for org in Organization.objects.filter(pk__in=list(org_ids)):
        invoice_close(organization=org, period_start=period_start)
        closed += 1
    return closed
