"""The usage read path at 1,000,000 ledger rows on PostgreSQL: server time of
`GET /api/v1/usage` and of the Usage & billing page, measured in-process through Django's
full request stack (middleware, auth, rendering), and the queries each takes.

The ledger is filled with generate_series in one statement: 10 organizations, 60 days of
GPU-minute and token rows; the measured organization owns half of them (500,000 rows),
the API is asked for the last 30 days of it (~250,000 rows). The daily totals the ingest
path keeps beside the ledger (UsageDay) are summed from it once.

Side by side in the same run, the baseline is the old way: every ledger row of the
window fetched and summed in Python (per day for the chart, per deployment and kind for
the lines), without the request stack. Also shown for reference: one GROUP BY over the
same rows in the database (what the read path would cost without the daily totals).

Runs in a database of its own (BENCH_DATABASE_URL, default gantry_bench_usage), dropped
at the end.
"""

import os
import statistics
import time
from collections import defaultdict
from datetime import timedelta
from urllib.parse import urlparse

from _setup import django_on_postgres, percentile

DATABASE_URL = "postgres://postgres@127.0.0.1:5432/gantry_bench_usage"

ROWS = int(os.environ.get("BENCH_USAGE_ROWS", 1_000_000))
ORGS = 10
DAYS = 60
REQUESTS = int(os.environ.get("BENCH_USAGE_REQUESTS", 100))
BASELINE_RUNS = 3


def fill(now):
    """ROWS ledger rows in one INSERT … SELECT generate_series; returns the measured org."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from billing.models import UsageRecord
    from portal.models import Organization
    from portal.services import organization_create

    orgs = []
    for i in range(ORGS):
        user, _ = get_user_model().objects.get_or_create(username=f"bench-usage-{i}")
        org = Organization.objects.filter(slug=f"bench-usage-{i}").first() or (
            organization_create(name=f"bench usage {i}", slug=f"bench-usage-{i}", owner=user)
        )
        orgs.append(org)
    UsageRecord.objects.all().delete()
    ids = [o.pk for o in orgs]
    minutes = DAYS * 1440
    with connection.cursor() as cursor:
        # Half the rows go to the first organization, the rest round-robin to the others.
        cursor.execute(
            """
            INSERT INTO billing_usagerecord (organization_id, kind, quantity, amount_micros,
                window_start, window_end, deployment_id, deployment_name, region, gpu_type,
                model, token_source, idempotency_key, created_at)
            SELECT CASE WHEN i %% 2 = 0 THEN %(first)s
                        ELSE (%(ids)s::bigint[])[1 + (i / 2) %% %(n)s] END,
                   (ARRAY['gpu_seconds', 'input_tokens', 'output_tokens'])[1 + i %% 3],
                   60 + i %% 1000, 49833 + i %% 7,
                   %(now)s - ((i::bigint * 7919) %% %(minutes)s) * interval '1 minute',
                   %(now)s - ((i::bigint * 7919) %% %(minutes)s - 1) * interval '1 minute',
                   i %% 20, 'dep-' || (i %% 20), 'eu-west', 'h100-80gb', 'chat',
                   CASE WHEN i %% 3 = 0 THEN '' ELSE 'engine' END, 'bench:' || i, %(now)s
            FROM generate_series(0, %(rows)s - 1) AS i
            """,
            {
                "first": ids[0],
                "ids": ids,
                "n": len(ids),
                "now": now,
                "minutes": minutes,
                "rows": ROWS,
            },
        )
        # The daily totals usage_ingest keeps as it inserts, here summed in one go.
        cursor.execute("DELETE FROM billing_usageday")
        cursor.execute(
            """
            INSERT INTO billing_usageday (organization_id, day, deployment_name, kind,
                quantity, amount_micros)
            SELECT organization_id, (window_start AT TIME ZONE 'UTC')::date, deployment_name,
                   kind, SUM(quantity), SUM(amount_micros)
            FROM billing_usagerecord GROUP BY 1, 2, 3, 4
            """
        )
        cursor.execute("VACUUM ANALYZE billing_usagerecord")  # as autovacuum would
        cursor.execute("ANALYZE billing_usageday")
    return orgs[0]


def baseline(org, start, end):
    """The old read path: every row of the window through Python."""
    from billing.models import UsageRecord

    days: dict = defaultdict(lambda: defaultdict(int))
    lines: dict = defaultdict(lambda: [0, 0])
    for r in UsageRecord.objects.filter(
        organization=org, window_start__gte=start, window_start__lt=end
    ).values("window_start", "kind", "quantity", "amount_micros", "deployment_name"):
        days[r["window_start"].date().isoformat()][r["kind"]] += r["quantity"]
        line = lines[(r["deployment_name"], r["kind"])]
        line[0] += r["quantity"]
        line[1] += r["amount_micros"]
    return days, lines


def ledger_group_by(org, start, end):
    """The rows summed by the database, without the daily totals: what one GROUP BY over
    the ledger costs at this size."""
    from django.db.models import Sum

    from billing.models import UsageRecord

    return list(
        UsageRecord.objects.filter(organization=org, window_start__gte=start, window_start__lt=end)
        .values("deployment_name", "kind")
        .annotate(quantity=Sum("quantity"), micros=Sum("amount_micros"))
        .order_by()
    )


def timed(fn, n):
    fn()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def drop_database(url: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    parsed = urlparse(url)
    with psycopg.connect(parsed._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.path.lstrip("/")}" WITH (FORCE)')


def main():
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ.setdefault("BENCH_DATABASE_URL", DATABASE_URL)
    os.environ["DEBUG"] = "True"  # the static files as `make run` serves them
    url = django_on_postgres()
    try:
        run()
    finally:
        drop_database(url)


def run():
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone
    from rest_framework.test import APIClient

    from billing.models import UsageRecord
    from portal.middleware import SESSION_KEY
    from portal.services import api_key_create

    now = timezone.now().replace(second=0, microsecond=0)
    started = time.perf_counter()
    org = fill(now)
    fill_s = time.perf_counter() - started
    owner = org.memberships.get().user
    in_window = UsageRecord.objects.filter(
        organization=org, window_start__gte=now - timedelta(days=30)
    ).count()
    _key, raw = api_key_create(organization=org, user=owner, name="bench")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    query = {
        "start": (now - timedelta(days=30)).isoformat(),
        "end": (now + timedelta(minutes=1)).isoformat(),
    }
    page = Client()
    page.force_login(owner)
    session = page.session
    session[SESSION_KEY] = org.pk
    session.save()

    def usage_api():
        response = api.get("/api/v1/usage", query)
        assert response.status_code == 200, response.content[:300]

    def usage_page():
        response = page.get("/billing/")
        assert response.status_code == 200, response.content[:300]

    def old_way():
        baseline(org, now - timedelta(days=30), now + timedelta(minutes=1))

    def group_by():
        ledger_group_by(org, now - timedelta(days=30), now + timedelta(minutes=1))

    queries, sql_ms = {}, {}
    for name, fn in (("api", usage_api), ("page", usage_page)):
        fn()  # first uses write once (quota and account rows, the key's last use)
        with CaptureQueriesContext(connection) as ctx:
            fn()
        queries[name] = len(ctx.captured_queries)
        sql_ms[name] = sum(float(q["time"]) for q in ctx.captured_queries) * 1000
    results = {
        "api": timed(usage_api, REQUESTS),
        "page": timed(usage_page, REQUESTS),
        "group_by": timed(group_by, BASELINE_RUNS * 2),
        "baseline": timed(old_way, BASELINE_RUNS),
    }
    print(
        f"{ROWS:,} ledger rows ({ORGS} organizations, {DAYS} days) filled in {fill_s:.1f} s; "
        f"the measured organization has {in_window:,} rows in the last 30 days"
    )
    print(f"{'path':<40}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'queries':>9}{'runs':>6}")
    labels = {
        "api": "GET /api/v1/usage (30 days)",
        "page": "Usage & billing page",
        "group_by": "reference: one GROUP BY over the rows",
        "baseline": "baseline: rows summed in Python",
    }
    for key, samples in results.items():
        print(
            f"{labels[key]:<40}{percentile(samples, 50):>9.1f}{percentile(samples, 95):>9.1f}"
            f"{statistics.mean(samples):>9.1f}{queries.get(key, 1):>9}{len(samples):>6}"
        )
    api_p95, page_p95 = percentile(results["api"], 95), percentile(results["page"], 95)
    print(f"SQL time in one request: API {sql_ms['api']:.1f} ms, page {sql_ms['page']:.1f} ms")
    for key in ("api", "page"):
        ratio = percentile(results["baseline"], 50) / percentile(results[key], 50)
        print(f"{labels[key]}: {ratio:.1f}× faster than the baseline (p50)")
    print("(the baseline and the reference run without the request stack)")
    print(
        f"RESULT usage_api_p95_ms={api_p95:.1f} usage_page_p95_ms={page_p95:.1f} "
        f"queries={max(queries.values())} ledger_rows={ROWS}"
    )


if __name__ == "__main__":
    main()
