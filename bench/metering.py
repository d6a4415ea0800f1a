"""Usage ingestion into the PostgreSQL ledger, exactly once, and invoice close time.

1. A stream of token and GPU-time events with 10% duplicates (retries, replays) goes into
   the ledger through billing.services.usage_ingest (batched INSERT … ON CONFLICT DO
   NOTHING on the idempotency key). Side by side: the one-by-one way (get_or_create per
   event). Afterwards the ledger must hold each distinct event exactly once.
2. Monthly invoices are closed for 1,000 organizations × 20 deployments.
"""

import random
import time
from datetime import UTC, date, datetime, timedelta

from _setup import django_on_postgres

EVENTS = 100_000
BASELINE_EVENTS = 5_000
ORGS = 1000
DEPLOYMENTS = 20


def make_events(org_ids, n, seed, prefix):
    from billing.models import UsageRecord

    rng = random.Random(seed)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    unique = []
    for i in range(n):
        org = org_ids[i % len(org_ids)]
        at = base + timedelta(seconds=rng.randrange(28 * 86400))
        kind = rng.choice(["input_tokens", "output_tokens", "gpu_seconds"])
        qty = rng.randrange(1, 4000)
        unique.append(
            UsageRecord(
                organization_id=org,
                kind=kind,
                quantity=qty,
                amount_micros=qty * 3,
                window_start=at,
                window_end=at,
                deployment_id=i % DEPLOYMENTS,
                deployment_name=f"d{i % DEPLOYMENTS}",
                idempotency_key=f"{prefix}:{i}",
            )
        )
    dupes = [unique[rng.randrange(n)] for _ in range(n // 10)]
    stream = unique + dupes
    rng.shuffle(stream)
    return stream, n


def main():
    django_on_postgres()
    from django.contrib.auth import get_user_model
    from django.db import connection

    from billing import invoices, services
    from billing.models import Invoice, UsageRecord
    from portal.models import Organization

    with connection.cursor() as c:
        c.execute(
            "TRUNCATE billing_invoiceline, billing_invoice, billing_usagerecord, "
            "billing_usageday CASCADE"
        )
    get_user_model().objects.get_or_create(username="bench-meter")
    existing = set(
        Organization.objects.filter(slug__startswith="meter-").values_list("slug", flat=True)
    )
    Organization.objects.bulk_create(
        [
            Organization(slug=f"meter-{i}", name=f"Meter {i}")
            for i in range(ORGS)
            if f"meter-{i}" not in existing
        ]
    )
    org_ids = list(
        Organization.objects.filter(slug__startswith="meter-").values_list("pk", flat=True)
    )

    stream, distinct = make_events(org_ids, EVENTS, 1, "bench")
    t = time.perf_counter()
    for i in range(0, len(stream), 10_000):
        services.usage_ingest(stream[i : i + 10_000])
    batched_s = time.perf_counter() - t
    stored = UsageRecord.objects.filter(idempotency_key__startswith="bench:").count()
    duplicates_counted = stored - distinct
    lost = max(0, distinct - stored)

    base_stream, _base_distinct = make_events(org_ids, BASELINE_EVENTS, 2, "one")
    t = time.perf_counter()
    for r in base_stream:
        UsageRecord.objects.get_or_create(
            idempotency_key=r.idempotency_key,
            defaults={
                "organization_id": r.organization_id,
                "kind": r.kind,
                "quantity": r.quantity,
                "amount_micros": r.amount_micros,
                "window_start": r.window_start,
                "window_end": r.window_end,
                "deployment_id": r.deployment_id,
                "deployment_name": r.deployment_name,
            },
        )
    one_s = time.perf_counter() - t

    t = time.perf_counter()
    for org in Organization.objects.filter(pk__in=org_ids):
        invoices.invoice_close(organization=org, period_start=date(2026, 3, 1))
    close_s = time.perf_counter() - t
    invoices = Invoice.objects.filter(organization_id__in=org_ids).count()
    total = sum(
        Invoice.objects.filter(organization_id__in=org_ids).values_list("total_cents", flat=True)
    )
    ledger_cents = round(
        sum(
            UsageRecord.objects.filter(organization_id__in=org_ids).values_list(
                "amount_micros", flat=True
            )
        )
        / 10_000
    )

    eps = len(stream) / batched_s
    base_eps = len(base_stream) / one_s
    print(f"{len(stream):,} events ({distinct:,} distinct, {len(stream) - distinct:,} repeats)")
    print(f"{'ingest':<30}{'events/s':>12}")
    print(f"{'gantry (batched, on conflict)':<30}{eps:>12,.0f}")
    print(f"{'one by one (get_or_create)':<30}{base_eps:>12,.0f}")
    print(
        f"ratio {eps / base_eps:.1f}×; stored {stored:,}: duplicates counted "
        f"{duplicates_counted}, lost {lost}"
    )
    print(
        f"closed {invoices} invoices ({ORGS} orgs × {DEPLOYMENTS} deployments) in "
        f"{close_s:.1f} s; invoices total {total:,}¢ vs ledger {ledger_cents:,}¢"
    )
    print(
        f"RESULT events_per_s={eps:.0f} duplicates_counted={duplicates_counted} "
        f"invoice_close_s={close_s:.1f} baseline_events_per_s={base_eps:.0f} lost={lost}"
    )


if __name__ == "__main__":
    main()
