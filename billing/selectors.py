"""Reads about money: month bounds and spend. The one place each figure is computed;
billing's services, deployments and the pages all call these.

Months are calendar months in UTC (invoices, spend limits and the usage page agree on
where a month starts, whatever the server's time zone).
"""

from datetime import UTC, date, datetime

from django.db.models import OuterRef, Subquery, Sum
from django.utils import timezone

from billing.models import GpuRate, UsageDay, UsageRecord
from portal.models import Organization

MICROS_PER_CENT = 10_000


def month_start(d: date | datetime) -> date:
    """The first day of the (UTC) month `d` falls in."""
    if isinstance(d, datetime):
        d = d.astimezone(UTC) if d.tzinfo else d
    return date(d.year, d.month, 1)


def next_month(d: date) -> date:
    return date(d.year + (d.month == 12), d.month % 12 + 1, 1)


def month_bounds(at: date | datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of the UTC month `at` (default: now) falls in, as aware datetimes."""
    first = month_start(at or timezone.now())
    after = next_month(first)
    return (
        datetime(first.year, first.month, 1, tzinfo=UTC),
        datetime(after.year, after.month, 1, tzinfo=UTC),
    )


def month_spend_cents(organization: Organization | int, at: datetime | None = None) -> int:
    """What the organization's usage this (UTC) month costs so far, credits deducted."""
    start, end = month_bounds(at)
    org_id = organization if isinstance(organization, int) else organization.pk
    # The daily totals equal the ledger's rows of their days (usage_ingest keeps them so);
    # a month is whole UTC days, so summing days reads a few rows instead of the month's.
    micros = (
        UsageDay.objects.filter(
            organization_id=org_id, day__gte=start.date(), day__lt=end.date()
        ).aggregate(m=Sum("amount_micros"))["m"]
        or 0
    )
    return round(micros / MICROS_PER_CENT)


def revenue_by_region(at: datetime | None = None) -> list[dict]:
    """This month's GPU revenue and GPU-hours per region, across organizations (staff)."""
    start, end = month_bounds(at)
    rows = (
        UsageRecord.objects.filter(window_start__gte=start, window_start__lt=end)
        .exclude(region="")
        .values("region")
        .annotate(micros=Sum("amount_micros"), gpu_seconds=Sum("quantity"))
        .order_by("region")
    )
    return [
        {
            "region": r["region"],
            "cents": round(r["micros"] / MICROS_PER_CENT),
            "gpu_hours": round(r["gpu_seconds"] / 3600, 1),
        }
        for r in rows
    ]


# --- The price of a GPU-hour ------------------------------------------------------------
# One price: the rate table (GpuRate, per GPU type, from an effective date). Pages, the
# API, placement and the meter all read it through these two functions, so the price a
# page shows is the price the ledger charges.


def gpu_hour_cents(gpu_type: str, at: datetime | None = None) -> int:
    """Cents per GPU-hour of a GPU type at `at` (default: now); 0 when it has no rate."""
    rate = (
        GpuRate.objects.filter(gpu_type=gpu_type, effective_from__lte=at or timezone.now())
        .order_by("-effective_from")
        .values_list("cents_per_hour", flat=True)
        .first()
    )
    return rate or 0


def gpu_hour_prices(at: datetime | None = None) -> dict[str, int]:
    """Cents per GPU-hour of every GPU type with a rate at `at` (default: now), in one
    query: for pages that list many profiles."""
    prices: dict[str, int] = {}
    for code, cents in (
        GpuRate.objects.filter(effective_from__lte=at or timezone.now())
        .order_by("gpu_type", "-effective_from")
        .values_list("gpu_type", "cents_per_hour")
    ):
        prices.setdefault(code, cents)
    return prices


def gpu_hour_provenance(at: datetime | None = None) -> dict[str, str]:
    """Where each GPU type's current price comes from (``GpuRate.provenance``), in one
    query, keyed like ``gpu_hour_prices``."""
    rates: dict[str, str] = {}
    for rate in GpuRate.objects.filter(effective_from__lte=at or timezone.now()).order_by(
        "gpu_type", "-effective_from"
    ):
        rates.setdefault(rate.gpu_type, rate.provenance)
    return rates


def gpu_hour_cents_sql(gpu_type_code_ref: str, at: datetime | None = None) -> Subquery:
    """The same price as an SQL expression, for querysets that sort or aggregate by it;
    `gpu_type_code_ref` names the GPU-type code in the outer query."""
    return Subquery(
        GpuRate.objects.filter(
            gpu_type=OuterRef(gpu_type_code_ref), effective_from__lte=at or timezone.now()
        )
        .order_by("-effective_from")
        .values("cents_per_hour")[:1]
    )
