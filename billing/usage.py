"""The usage read path: sums of the ledger between two instants, per deployment and kind
(the usage API and page) or per UTC day (the chart).

One query whatever the size of the ledger or of the range: the daily totals (UsageDay,
kept exact by usage_ingest) for every whole day, and the ledger rows only for the parts
of the one or two days the range cuts. A cut day is read the cheaper way: its
covered part added from the ledger, or its whole total minus the uncovered part — so a
range ending now (the common case) reads almost no rows.
"""

from datetime import UTC, date, datetime, time, timedelta

from django.db.models import Case, F, Q, Sum, Value, When
from django.db.models.functions import TruncDate

from billing.models import UsageDay, UsageRecord
from portal.models import Organization

DAY = timedelta(days=1)


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time(), tzinfo=UTC)


def _plan(start: datetime, end: datetime):
    """Which days come from the daily totals, and which ledger ranges are added to or
    subtracted from them, for [start, end)."""
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    whole_from, whole_to = first, last  # inclusive, adjusted for the cut days below
    add: list[tuple[datetime, datetime]] = []
    subtract: list[tuple[datetime, datetime]] = []
    for day in {first, last}:
        lo, hi = max(start, _midnight(day)), min(end, _midnight(day) + DAY)
        if hi - lo == DAY:
            continue  # not cut
        if (hi - lo) <= DAY / 2:
            add.append((lo, hi))
            if day == first:
                whole_from = day + DAY
            if day == last:
                whole_to = day - DAY
        else:  # the day's total minus the parts outside the range
            subtract += [
                r for r in ((_midnight(day), lo), (hi, _midnight(day) + DAY)) if r[0] < r[1]
            ]
    return whole_from, whole_to, add, subtract


def _within(ranges: list[tuple[datetime, datetime]]) -> Q:
    q = Q()
    for lo, hi in ranges:
        q |= Q(window_start__gte=lo, window_start__lt=hi)
    return q


def usage_sums(
    *,
    organization: Organization,
    start: datetime,
    end: datetime,
    by: tuple[str, ...] = ("day", "deployment_name", "kind"),
) -> dict[tuple, tuple[int, int]]:
    """{values of `by`: (quantity, micro-dollars)} of the rows in [start, end), summed by
    the database in one query: the daily totals of the range's days, UNION ALL the ledger
    rows of the cut days (negated where they lie outside the range)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        return {}
    whole_from, whole_to, add, subtract = _plan(start, end)
    # Days read as their total minus what lies outside the range are within these bounds.
    query = (
        UsageDay.objects.filter(organization=organization, day__gte=whole_from, day__lte=whole_to)
        .values(*by)
        .annotate(q=Sum("quantity"), m=Sum("amount_micros"))
        .order_by()
    )
    if add or subtract:
        sign = Value(1)
        if subtract:
            sign = Case(When(_within(subtract), then=Value(-1)), default=Value(1))
        cut = (
            UsageRecord.objects.filter(_within(add + subtract), organization=organization)
            .annotate(day=TruncDate("window_start", tzinfo=UTC))
            .values(*by)
            .annotate(q=Sum(F("quantity") * sign), m=Sum(F("amount_micros") * sign))
            .order_by()
        )
        query = query.union(cut, all=True)
    totals: dict[tuple, list[int]] = {}
    for r in query:  # at most two rows per group: the totals' and the cut days'
        t = totals.setdefault(tuple(r[f] for f in by), [0, 0])
        t[0] += r["q"]
        t[1] += r["m"]
    return {k: (q, m) for k, (q, m) in totals.items() if q or m}


def usage_lines(*, organization: Organization, start: datetime, end: datetime) -> list[dict]:
    """Per deployment and kind, as the usage API and page show them."""
    sums = usage_sums(
        organization=organization, start=start, end=end, by=("deployment_name", "kind")
    )
    return [
        {"deployment": name, "kind": kind, "quantity": q, "amount": _dollars(m)}
        for (name, kind), (q, m) in sorted(sums.items())
    ]


def usage_by_day(*, organization: Organization, start: datetime, end: datetime) -> dict:
    """{"YYYY-MM-DD": {kind: quantity}} per UTC day."""
    days: dict[str, dict[str, int]] = {}
    sums = usage_sums(organization=organization, start=start, end=end, by=("day", "kind"))
    for (day, kind), (quantity, _micros) in sorted(sums.items()):
        days.setdefault(day.isoformat(), {})[kind] = quantity
    return days


def _dollars(micros: int) -> str:
    """Micro-dollars as an exact decimal string, e.g. -1500 → "-0.001500"."""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{'-' if micros < 0 else ''}{whole}.{frac:06d}"
