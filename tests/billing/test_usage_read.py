"""The daily totals always equal the ledger, and the read path built on them gives the
ledger's exact sums for any range."""

import itertools
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from billing import services as billing
from billing.models import UsageDay, UsageRecord
from billing.usage import usage_sums

T0 = datetime(2026, 3, 3, 0, 0, tzinfo=UTC)


def _records(org, n, seed=7):
    rng = random.Random(seed)
    kinds = ["gpu_seconds", "input_tokens", "output_tokens", "credit"]
    out = []
    for i in range(n):
        at = T0 + timedelta(seconds=rng.randrange(5 * 86400))
        kind = kinds[i % 4]
        out.append(
            UsageRecord(
                organization=org,
                kind=kind,
                quantity=rng.randrange(1, 5000),
                amount_micros=-rng.randrange(1, 10**6)
                if kind == "credit"
                else rng.randrange(10**7),
                window_start=at,
                window_end=at,
                deployment_name=f"d{i % 3}",
                idempotency_key=f"k{i}",
            )
        )
    return out


def _ledger_truth(org, start, end):
    truth: dict = {}
    for r in UsageRecord.objects.filter(
        organization=org, window_start__gte=start, window_start__lt=end
    ):
        key = (r.window_start.astimezone(UTC).date(), r.deployment_name, r.kind)
        q, m = truth.get(key, (0, 0))
        truth[key] = (q + r.quantity, m + r.amount_micros)
    return truth


def _days_truth(org):
    return _ledger_truth(org, T0 - timedelta(days=1), T0 + timedelta(days=7))


def _days(org):
    return {
        (d.day, d.deployment_name, d.kind): (d.quantity, d.amount_micros)
        for d in UsageDay.objects.filter(organization=org)
    }


def test_replayed_ingest_keeps_daily_totals_equal_to_the_ledger(org_a):
    records = _records(org_a, 600)
    for _ in range(3):  # retries, replays, and overlapping batches
        billing.usage_ingest(records[:400])
        billing.usage_ingest(records[200:] + records[:50])
    assert UsageRecord.objects.filter(organization=org_a).count() == 600
    assert _days(org_a) == _days_truth(org_a)


@pytest.mark.django_db(transaction=True)
def test_concurrent_ingest_of_overlapping_batches_counts_each_row_once(org_a):
    records = _records(org_a, 400, seed=3)
    batches = [records[i : i + 150] for i in range(0, 400, 50)] * 2

    def ingest(batch):
        try:
            billing.usage_ingest(batch)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(ingest, batches))
    assert UsageRecord.objects.filter(organization=org_a).count() == 400
    assert _days(org_a) == _days_truth(org_a)


def test_sums_equal_the_ledger_for_any_range(org_a, org_b):
    billing.usage_ingest(_records(org_a, 800))
    billing.usage_ingest(_records(org_b, 100, seed=9))  # never in org_a's sums
    marks = [
        T0 - timedelta(hours=3),
        T0,
        T0 + timedelta(hours=2, minutes=17, seconds=5),
        T0 + timedelta(hours=13),
        T0 + timedelta(days=1),
        T0 + timedelta(days=2, hours=23, minutes=59),
        T0 + timedelta(days=3, hours=1),
        T0 + timedelta(days=5),
        T0 + timedelta(days=6, hours=5),
    ]
    for start, end in itertools.combinations(marks, 2):
        assert usage_sums(organization=org_a, start=start, end=end) == {
            k: v for k, v in _ledger_truth(org_a, start, end).items() if v != (0, 0)
        }, (start, end)
    assert usage_sums(organization=org_a, start=marks[3], end=marks[1]) == {}


def test_month_spend_reads_the_daily_totals(org_a):
    from django.utils import timezone

    now = timezone.now()
    billing.credit_issue(organization=org_a, amount_cents=250, reason="goodwill", at=now)
    assert billing.month_spend_cents(org_a) == -250
