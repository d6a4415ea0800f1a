"""Quotas, rates, the usage ledger and invoices.

Callers above (deployments, the gateway) describe usage as data — organization id,
deployment id and name, region and GPU-type codes — and call these functions; billing
never imports them.
"""

from collections import defaultdict
from datetime import date, datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import (
    BillingAccount,
    Credit,
    GpuQuota,
    Invoice,
    InvoiceLine,
    Quota,
    TokenRate,
    UsageKind,
    UsageRecord,
)
from billing.selectors import (
    MICROS_PER_CENT,
    gpu_hour_cents,
    month_bounds,
    month_spend_cents,
    month_start,
)
from billing.selectors import next_month as next_month  # re-exported for older callers
from portal.models import Organization

WINDOW = timedelta(minutes=1)


# --- Quotas ---------------------------------------------------------------------------


def quota_lock(organization: Organization) -> Quota:
    """The organization's quota row, locked until the caller's transaction ends. Every
    capacity decision of the organization takes it first, so they happen one at a time."""
    Quota.objects.get_or_create(organization=organization)
    return Quota.objects.select_for_update().get(organization=organization)


def account_for(organization: Organization) -> BillingAccount:
    account, _ = BillingAccount.objects.get_or_create(organization=organization)
    return account


def capacity_allowed(organization: Organization, quota: Quota) -> None:
    """New capacity is refused, with the reason, when the account is past due or suspended
    or this month's spend has reached the hard limit."""
    account = account_for(organization)
    if account.status == BillingAccount.Status.PAST_DUE:
        raise ValidationError(
            {
                "billing": (
                    "This organization's account is past due: new capacity is refused until the "
                    "open invoice is paid."
                )
            }
        )
    if account.status == BillingAccount.Status.SUSPENDED:
        raise ValidationError({"billing": "This organization's account is suspended."})
    limit = quota.monthly_spend_limit_cents
    if limit is not None and month_spend_cents(organization) >= limit:
        raise ValidationError(
            {
                "billing": (
                    f"Monthly spend limit reached (${limit / 100:,.2f}): new capacity is refused."
                )
            }
        )


def spend_status(organization: Organization) -> dict:
    quota, _ = Quota.objects.get_or_create(organization=organization)
    spent = month_spend_cents(organization)
    limit = quota.monthly_spend_limit_cents
    percent = round(100 * spent / limit) if limit else None
    return {
        "spent_cents": spent,
        "limit_cents": limit,
        "percent": percent,
        "soft": bool(limit and percent >= quota.soft_alert_percent),
        "hard": bool(limit and spent >= limit),
    }


def quota_check_deployments(quota: Quota, *, current: int) -> None:
    if quota.max_deployments is not None and current + 1 > quota.max_deployments:
        raise ValidationError(
            {
                "quota": (
                    f"Deployment quota reached: {current} of {quota.max_deployments} deployments."
                )
            }
        )


def gpu_limits(quota: Quota, gpu_type: str) -> list[GpuQuota]:
    return list(quota.gpu_limits.filter(gpu_type=gpu_type))


def quota_check_gpus(
    quota: Quota, *, gpu_type: str, gpu_label: str, committed: int, extra: int
) -> None:
    """Refuse `extra` GPUs when the organization-wide limit of that type would be passed.
    `committed` is what the organization already holds or asked for."""
    for limit in gpu_limits(quota, gpu_type):
        if limit.region == "" and committed + extra > limit.max_gpus:
            raise ValidationError(
                {
                    "quota": (
                        f"GPU quota: {gpu_label} is limited to {limit.max_gpus} for this "
                        f"organization; {committed} in use or requested, this needs {extra} more."
                    )
                }
            )


def regions_within_quota(
    quota: Quota, *, gpu_type: str, regions: list[str], gpus: int, used_by_region: dict[str, int]
) -> list[str]:
    """The regions where `gpus` more fit the organization's per-region limits."""
    per_region = {q.region: q.max_gpus for q in gpu_limits(quota, gpu_type) if q.region}
    return [
        r
        for r in regions
        if r not in per_region or used_by_region.get(r, 0) + gpus <= per_region[r]
    ]


# --- Rates ----------------------------------------------------------------------------


def gpu_rate_cents(gpu_type: str, at: datetime) -> int:
    """The rate the ledger charges for a GPU-hour at `at`: the one price (see selectors)."""
    return gpu_hour_cents(gpu_type, at)


def token_rates_cents(model: str, at: datetime) -> tuple[int, int]:
    for name in (model, "*"):
        rate = TokenRate.objects.filter(model=name, effective_from__lte=at).first()
        if rate:
            return rate.input_cents_per_million, rate.output_cents_per_million
    return 0, 0


# --- Metering -------------------------------------------------------------------------


def _floor(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def gpu_windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime, float]]:
    """Split [start, end) into minute windows: (window start, window end, seconds in it)."""
    out = []
    w = _floor(start)
    while w < end:
        w_end = w + WINDOW
        seconds = (min(end, w_end) - max(start, w)).total_seconds()
        if seconds > 0:
            out.append((w, w_end, seconds))
        w = w_end
    return out


def meter_gpu_time(
    *,
    organization_id: int,
    source: str,
    deployment_id: int | None,
    deployment_name: str,
    region: str,
    gpu_type: str,
    gpus: int,
    start: datetime,
    end: datetime,
    final: bool = False,
) -> datetime:
    """Write the GPU-seconds of [start, end) for one source (a replica), one record per
    minute window, keyed by source and window so a retried, duplicated or replayed call
    never counts twice. Only complete windows are written unless `final` (the source
    stopped). Returns how far the ledger now covers."""
    records = []
    covered = start
    for w_start, w_end, seconds in gpu_windows(start, end):
        if w_end > end and not final:
            break
        quantity = round(seconds * gpus)
        rate = gpu_rate_cents(gpu_type, w_start)
        records.append(
            UsageRecord(
                organization_id=organization_id,
                kind=UsageKind.GPU_SECONDS,
                quantity=quantity,
                amount_micros=round(quantity * rate * MICROS_PER_CENT / 3600),
                window_start=w_start,
                window_end=w_end,
                deployment_id=deployment_id,
                deployment_name=deployment_name,
                region=region,
                gpu_type=gpu_type,
                idempotency_key=f"gpu:{source}:{w_start.isoformat()}",
            )
        )
        covered = min(end, w_end)
    usage_ingest(records)
    return covered


def meter_tokens(
    *,
    organization_id: int,
    request_id: str,
    deployment_id: int | None,
    deployment_name: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    at: datetime,
) -> None:
    meter_tokens_many(
        [
            {
                "organization_id": organization_id,
                "request_id": request_id,
                "deployment_id": deployment_id,
                "deployment_name": deployment_name,
                "model": model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "at": at,
            }
        ]
    )


def meter_tokens_many(items: list[dict]) -> None:
    """Token usage of many requests (the keys of `meter_tokens`), priced at the rate in
    force and written in one ledger batch, keyed by request so a replay counts once."""
    rates: dict = {}
    rows = []
    for item in items:
        at, model = item["at"], item["model"]
        # Rates change rarely; one lookup per model and minute serves a whole batch.
        key = (model, at.replace(second=0, microsecond=0))
        if key not in rates:
            rates[key] = token_rates_cents(model, at)
        rate_in, rate_out = rates[key]
        for kind, qty, rate in (
            (UsageKind.INPUT_TOKENS, item["input_tokens"], rate_in),
            (UsageKind.OUTPUT_TOKENS, item["output_tokens"], rate_out),
        ):
            if qty:
                rows.append(
                    UsageRecord(
                        organization_id=item["organization_id"],
                        kind=kind,
                        quantity=qty,
                        amount_micros=round(qty * rate * MICROS_PER_CENT / 1_000_000),
                        window_start=at,
                        window_end=at,
                        deployment_id=item["deployment_id"],
                        deployment_name=item["deployment_name"],
                        model=model,
                        idempotency_key=f"tok:{item['request_id']}:{kind}",
                    )
                )
    usage_ingest(rows)


_INGEST_COLUMNS = [
    "organization_id",
    "kind",
    "quantity",
    "amount_micros",
    "window_start",
    "window_end",
    "deployment_id",
    "deployment_name",
    "region",
    "gpu_type",
    "model",
    "idempotency_key",
]


def usage_ingest(records: list[UsageRecord], *, batch_size: int = 2000) -> None:
    """Append priced records to the ledger; records whose idempotency key is already there
    (or repeats within the batch) are skipped by the database: exactly once, whatever the
    input repeats. On PostgreSQL the batch is streamed with COPY into a staging table and
    merged with one INSERT … ON CONFLICT DO NOTHING."""
    if not records:
        return
    if connection.vendor != "postgresql":
        UsageRecord.objects.bulk_create(records, ignore_conflicts=True, batch_size=batch_size)
        return
    cols = ", ".join(_INGEST_COLUMNS)
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS billing_usage_stage ON COMMIT DELETE ROWS "
            f"AS SELECT {cols} FROM billing_usagerecord WITH NO DATA"
        )
        with cursor.cursor.copy(f"COPY billing_usage_stage ({cols}) FROM STDIN") as copy:
            for r in records:
                copy.write_row([getattr(r, c) for c in _INGEST_COLUMNS])
        cursor.execute(
            f"INSERT INTO billing_usagerecord ({cols}, created_at) "
            f"SELECT DISTINCT ON (idempotency_key) {cols}, %s FROM billing_usage_stage "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            [now],
        )


@transaction.atomic
def credit_issue(*, organization: Organization, amount_cents: int, reason: str) -> Credit:
    if amount_cents <= 0:
        raise ValidationError({"amount_cents": "Give a positive amount in cents."})
    if not reason.strip():
        raise ValidationError({"reason": "Say why the credit is given."})
    credit = Credit.objects.create(
        organization=organization, amount_cents=amount_cents, reason=reason.strip()
    )
    now = timezone.now()
    usage_ingest(
        [
            UsageRecord(
                organization=organization,
                kind=UsageKind.CREDIT,
                quantity=1,
                amount_micros=-amount_cents * MICROS_PER_CENT,
                window_start=now,
                window_end=now,
                deployment_name="",
                idempotency_key=f"credit:{credit.pk}",
            )
        ]
    )
    return credit


# --- Invoices -------------------------------------------------------------------------


@transaction.atomic
def invoice_close(*, organization: Organization, period_start: date) -> Invoice:
    """The month's invoice, one line per deployment and kind, from the ledger. Closing
    again gives the same invoice: lines are recomputed from the same records."""
    period_start = month_start(period_start)
    start, end = month_bounds(period_start)
    invoice, _ = (
        Invoice.objects.select_for_update()
        .exclude(status=Invoice.Status.VOID)
        .get_or_create(organization=organization, period_start=period_start)
    )
    if invoice.status == Invoice.Status.CLOSED:
        return invoice
    sums = (
        UsageRecord.objects.filter(
            organization=organization, window_start__gte=start, window_start__lt=end
        )
        .values("deployment_name", "kind")
        .annotate(quantity=Sum("quantity"), micros=Sum("amount_micros"))
        .order_by("deployment_name", "kind")
    )
    invoice.lines.all().delete()
    lines = [
        InvoiceLine(
            invoice=invoice,
            deployment_name=s["deployment_name"],
            kind=s["kind"],
            quantity=s["quantity"],
            amount_cents=round(s["micros"] / MICROS_PER_CENT),
        )
        for s in sums
    ]
    InvoiceLine.objects.bulk_create(lines)
    invoice.total_cents = sum(line.amount_cents for line in lines)
    if timezone.now() >= end:
        invoice.status = Invoice.Status.CLOSED
        invoice.closed_at = timezone.now()
        from billing import stripe_sync
        from billing.tasks import push_invoice

        if stripe_sync.enabled():
            transaction.on_commit(lambda: push_invoice.delay(invoice.pk))
    invoice.save()
    return invoice


def invoices_close_month(*, period_start: date) -> int:
    """Close the month's invoice of every organization that used something in it."""
    start, end = month_bounds(period_start)
    org_ids = (
        UsageRecord.objects.filter(window_start__gte=start, window_start__lt=end)
        .values_list("organization_id", flat=True)
        .distinct()
    )
    closed = 0
    for org in Organization.objects.filter(pk__in=list(org_ids)):
        invoice_close(organization=org, period_start=period_start)
        closed += 1
    return closed


def usage_lines(*, organization: Organization, start: datetime, end: datetime) -> list[dict]:
    rows = (
        UsageRecord.objects.filter(
            organization=organization, window_start__gte=start, window_start__lt=end
        )
        .values("deployment_name", "kind")
        .annotate(quantity=Sum("quantity"), micros=Sum("amount_micros"))
        .order_by("deployment_name", "kind")
    )
    return [
        {
            "deployment": r["deployment_name"],
            "kind": r["kind"],
            "quantity": r["quantity"],
            "amount": f"{r['micros'] / 1_000_000:.6f}",
        }
        for r in rows
    ]


def usage_by_day(*, organization: Organization, start: datetime, end: datetime) -> dict:
    days: dict = defaultdict(lambda: defaultdict(int))
    for r in UsageRecord.objects.filter(
        organization=organization, window_start__gte=start, window_start__lt=end
    ).values("window_start", "kind", "quantity"):
        days[r["window_start"].date().isoformat()][r["kind"]] += r["quantity"]
    return {d: dict(v) for d, v in sorted(days.items())}
