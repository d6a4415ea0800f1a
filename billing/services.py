"""Quotas, rates, the usage ledger and invoices.

Callers above (deployments, the gateway) describe usage as data — organization id,
deployment id and name, region and GPU-type codes — and call these functions; billing
never imports them.
"""

from datetime import UTC, datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from billing.models import (
    BillingAccount,
    Credit,
    GpuQuota,
    Quota,
    TokenRate,
    TokenSource,
    UsageDay,
    UsageKind,
    UsageRecord,
)
from billing.plans import quota_get_or_create
from billing.selectors import (
    MICROS_PER_CENT,
    gpu_hour_cents,
    month_spend_cents,
)
from billing.selectors import month_start as month_start  # re-exported for older callers
from billing.selectors import next_month as next_month  # re-exported for older callers
from billing.usage import _dollars
from billing.usage import usage_by_day as usage_by_day  # re-exported: the usage page calls it
from billing.usage import usage_lines as usage_lines  # re-exported: the usage page calls it
from portal.models import Organization

WINDOW = timedelta(minutes=1)


# --- Quotas ---------------------------------------------------------------------------


def quota_lock(organization: Organization) -> Quota:
    """The organization's quota row, locked until the caller's transaction ends. Every
    capacity decision of the organization takes it first, so they happen one at a time."""
    quota_get_or_create(organization)
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
    quota = quota_get_or_create(organization)
    spent = month_spend_cents(organization)
    limit = quota.monthly_spend_limit_cents
    percent = round(100 * spent / limit) if limit else None
    return {
        "spent_cents": spent,
        "limit_cents": limit,
        "percent": percent,
        "soft": percent is not None and percent >= quota.soft_alert_percent,
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


def token_amount_micros(quantity: int, cents_per_million: int) -> int:
    """What `quantity` tokens cost at a rate per million, in micro-dollars: the one rounding
    the ledger and every price shown before metering use."""
    return round(quantity * cents_per_million * MICROS_PER_CENT / 1_000_000)


def token_cost_micros(
    *, model: str, input_tokens: int, output_tokens: int, at: datetime | None = None
) -> int:
    """What one request of `model` with these counts costs at the rates in force at `at`
    (now by default), as the ledger would price it."""
    rate_in, rate_out = token_rates_cents(model, at or timezone.now())
    return token_amount_micros(input_tokens, rate_in) + token_amount_micros(output_tokens, rate_out)


def token_cost(*, model: str, input_tokens: int, output_tokens: int) -> dict:
    """One answer's price now, for display: micro-dollars and the exact dollar string."""
    micros = token_cost_micros(model=model, input_tokens=input_tokens, output_tokens=output_tokens)
    return {"micros": micros, "amount": _dollars(micros)}


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
    """Token usage of many requests (the keys of `meter_tokens`, plus an optional
    `source`: a TokenSource, "engine" when absent), priced at the rate in force and written
    in one ledger batch, keyed by request so a replay counts once."""
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
                        amount_micros=token_amount_micros(qty, rate),
                        window_start=at,
                        window_end=at,
                        deployment_id=item["deployment_id"],
                        deployment_name=item["deployment_name"],
                        model=model,
                        token_source=item.get("source", TokenSource.ENGINE),
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
    "token_source",
    "idempotency_key",
]


def usage_ingest(records: list[UsageRecord], *, batch_size: int = 2000) -> None:
    """Append priced records to the ledger; records whose idempotency key is already there
    (or repeats within the batch) are skipped: exactly once, whatever the input repeats.
    The rows actually inserted are added to the daily totals (UsageDay) in the same
    transaction. On PostgreSQL the batch is streamed with COPY into a staging table and
    merged with one statement: INSERT … ON CONFLICT DO NOTHING RETURNING feeds the upsert
    of the daily totals, so a skipped duplicate never reaches them."""
    if not records:
        return
    if connection.vendor != "postgresql":
        _ingest_portable(records, batch_size=batch_size)
        return
    cols = ", ".join(_INGEST_COLUMNS)
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            # Column names come from _INGEST_COLUMNS, a module constant; every value goes
            # through COPY or a bound parameter, never into the SQL text.
            "CREATE TEMP TABLE IF NOT EXISTS billing_usage_stage ON COMMIT DELETE ROWS "  # noqa: S608
            f"AS SELECT {cols} FROM billing_usagerecord WITH NO DATA"
        )
        with cursor.cursor.copy(f"COPY billing_usage_stage ({cols}) FROM STDIN") as copy:
            for r in records:
                copy.write_row([getattr(r, c) for c in _INGEST_COLUMNS])
        # Daily totals are upserted in key order so concurrent batches lock them in the
        # same order and cannot deadlock on each other.
        cursor.execute(
            f"WITH inserted AS (INSERT INTO billing_usagerecord ({cols}, created_at) "  # noqa: S608
            f"SELECT DISTINCT ON (idempotency_key) {cols}, %s FROM billing_usage_stage "
            "ON CONFLICT (idempotency_key) DO NOTHING "
            "RETURNING organization_id, window_start, deployment_name, kind, quantity, "
            "amount_micros) "
            "INSERT INTO billing_usageday "
            "(organization_id, day, deployment_name, kind, quantity, amount_micros) "
            "SELECT organization_id, (window_start AT TIME ZONE 'UTC')::date AS day, "
            "deployment_name, kind, SUM(quantity), SUM(amount_micros) FROM inserted "
            "GROUP BY organization_id, day, deployment_name, kind "
            "ORDER BY organization_id, day, deployment_name, kind "
            "ON CONFLICT (organization_id, day, deployment_name, kind) DO UPDATE SET "
            "quantity = billing_usageday.quantity + EXCLUDED.quantity, "
            "amount_micros = billing_usageday.amount_micros + EXCLUDED.amount_micros",
            [now],
        )


def _ingest_portable(records: list[UsageRecord], *, batch_size: int) -> None:
    """The same on SQLite (the embedded default), where transactions are IMMEDIATE: the
    write lock is held from the start, so checking which keys exist and then inserting
    the others cannot race another writer."""
    fresh: dict[str, UsageRecord] = {}
    for r in records:
        fresh.setdefault(r.idempotency_key, r)
    with transaction.atomic():
        keys = list(fresh)
        for i in range(0, len(keys), 500):
            for key in UsageRecord.objects.filter(
                idempotency_key__in=keys[i : i + 500]
            ).values_list("idempotency_key", flat=True):
                del fresh[key]
        UsageRecord.objects.bulk_create(fresh.values(), batch_size=batch_size)
        days: dict[tuple, list[int]] = {}
        for r in fresh.values():
            day_key = (
                r.organization_id,
                r.window_start.astimezone(UTC).date(),
                r.deployment_name,
                r.kind,
            )
            total = days.setdefault(day_key, [0, 0])
            total[0] += r.quantity
            total[1] += r.amount_micros
        for (org_id, day, name, kind), (quantity, micros) in sorted(days.items()):
            row, _ = UsageDay.objects.get_or_create(
                organization_id=org_id, day=day, deployment_name=name, kind=kind
            )
            UsageDay.objects.filter(pk=row.pk).update(
                quantity=F("quantity") + quantity, amount_micros=F("amount_micros") + micros
            )


@transaction.atomic
def credit_issue(
    *, organization: Organization, amount_cents: int, reason: str, at: datetime | None = None
) -> Credit:
    """A credit enters the ledger at `at` (default now) as a negative amount, so it is on
    the invoice of that month — or, when that month is closed already, carried to the
    next one like any late usage — and reaches Stripe as a negative invoice item."""
    if amount_cents <= 0:
        raise ValidationError({"amount_cents": "Give a positive amount in cents."})
    if not reason.strip():
        raise ValidationError({"reason": "Say why the credit is given."})
    now = timezone.now()
    if at is not None and at > now:
        raise ValidationError({"at": "A credit cannot be dated in the future."})
    credit = Credit.objects.create(
        organization=organization, amount_cents=amount_cents, reason=reason.strip()
    )
    when = at or now
    usage_ingest(
        [
            UsageRecord(
                organization=organization,
                kind=UsageKind.CREDIT,
                quantity=1,
                amount_micros=-amount_cents * MICROS_PER_CENT,
                window_start=when,
                window_end=when,
                deployment_name="",
                idempotency_key=f"credit:{credit.pk}",
            )
        ]
    )
    return credit
