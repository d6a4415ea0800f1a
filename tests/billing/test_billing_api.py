from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing import services as billing
from billing.gpu_rates import ensure_default_rates
from billing.invoices import invoice_close
from billing.models import GpuQuota, Quota, UsageRecord
from portal.models import Role
from tests.conftest import owner_of

# Baselines: the usage API and the usage page read the ledger with a fixed number of
# queries (aggregates), however many rows it holds.
API_MAX_QUERIES = 3
PAGE_MAX_QUERIES = 14


@pytest.fixture(autouse=True)
def rates(db):
    ensure_default_rates()


def _usage(org, start):
    billing.meter_gpu_time(
        organization_id=org.pk,
        source="r1",
        deployment_id=1,
        deployment_name="chat",
        region="local",
        gpu_type="cpu",
        gpus=1,
        start=start,
        end=start + timedelta(minutes=2),
        final=True,
    )
    billing.meter_tokens(
        organization_id=org.pk,
        request_id="req-1",
        deployment_id=1,
        deployment_name="chat",
        model="chat",
        input_tokens=1000,
        output_tokens=500,
        at=start,
    )


def test_usage_api_lines_per_deployment_and_kind(org_a, org_b, api_client_for):
    start = datetime(2026, 3, 5, 10, 0, tzinfo=UTC)
    _usage(org_a, start)
    _usage(org_b, start)  # another org's usage never shows
    body = (
        api_client_for(org_a)
        .get("/api/v1/usage", {"start": "2026-03-01", "end": "2026-04-01"})
        .json()
    )
    assert {(r["deployment"], r["kind"], r["quantity"]) for r in body} == {
        ("chat", "gpu_seconds", 120),
        ("chat", "input_tokens", 1000),
        ("chat", "output_tokens", 500),
    }
    gpu = next(r for r in body if r["kind"] == "gpu_seconds")
    assert gpu["amount"] == f"{2 * round(60 * 5 * 10_000 / 3600) / 1e6:.6f}"  # per window


def test_usage_api_refuses_bad_dates_naming_the_field(org_a, api_client_for):
    api = api_client_for(org_a)
    assert api.get("/api/v1/usage", {"start": "yesterday"}).json() == {
        "start": ["Use an ISO 8601 date or time, e.g. 2026-11-01; got 'yesterday'."]
    }
    assert "end" in api.get("/api/v1/usage", {"start": "2026-03-02", "end": "2026-03-01"}).json()


def test_invoices_need_the_billing_role(org_a, make_user, add_member, api_client_for):
    _usage(org_a, datetime(2026, 3, 5, 10, 0, tzinfo=UTC))
    invoice = invoice_close(organization=org_a, period_start=date(2026, 3, 1))
    member = add_member(org_a, make_user("dev"), Role.MEMBER)
    accountant = add_member(org_a, make_user("acct"), Role.BILLING)
    assert api_client_for(org_a, member.user).get("/api/v1/invoices").status_code == 403
    body = api_client_for(org_a, accountant.user).get("/api/v1/invoices").json()
    assert body["count"] == 1 and body["results"][0]["period"] == "2026-03"
    assert body["results"][0]["total_cents"] == invoice.total_cents
    detail = api_client_for(org_a).get(f"/api/v1/invoices/{invoice.pk}").json()
    assert {line["kind"] for line in detail["lines"]} == {
        "gpu_seconds",
        "input_tokens",
        "output_tokens",
    }


def test_quotas_api_shows_limits_and_use(org_a, api_client_for, local_pool):
    quota, _ = Quota.objects.get_or_create(organization=org_a)
    quota.max_deployments = 3
    quota.save()
    GpuQuota.objects.create(quota=quota, gpu_type="cpu", max_gpus=4)
    api = api_client_for(org_a)
    api.post(
        "/api/v1/deployments",
        {
            "name": "a",
            "model_ref": "demo:tiny-random-llama",
            "gpu_type": "cpu",
            "regions": ["local"],
        },
        format="json",
    )
    rows = {(r["name"], r["gpu_type"]): r for r in api.get("/api/v1/quotas").json()}
    assert rows[("deployments", "")] == {
        "name": "deployments",
        "region": "",
        "gpu_type": "",
        "limit": 3,
        "used": 1,
    }
    assert rows[("gpus", "cpu")]["limit"] == 4 and rows[("gpus", "cpu")]["used"] == 1
    assert rows[("monthly_spend_cents", "")]["limit"] is None


def _ledger(org, rows: int, tag: str):
    """`rows` ledger rows spread over the last 20 days, 7 deployments and the three kinds."""
    now = timezone.now().replace(second=0, microsecond=0)
    kinds = ["gpu_seconds", "input_tokens", "output_tokens"]
    billing.usage_ingest(
        [
            UsageRecord(
                organization=org,
                kind=kinds[i % 3],
                quantity=1 + i % 50,
                amount_micros=1000 + i,
                window_start=now - timedelta(minutes=1 + (i * 37) % (20 * 1440)),
                window_end=now,
                deployment_name=f"dep-{i % 7}",
                idempotency_key=f"{tag}:{i}",
            )
            for i in range(rows)
        ]
    )


def test_usage_api_and_page_take_the_same_few_queries_whatever_the_ledger_size(
    org_a, org_b, api_client_for, web_client, django_assert_max_num_queries
):
    api = api_client_for(org_a)
    page = web_client(owner_of(org_a), org_a)
    window = {
        "start": (timezone.now() - timedelta(days=30)).isoformat(),
        "end": (timezone.now() + timedelta(minutes=1)).isoformat(),
    }
    _ledger(org_b, 500, "b")  # another organization's rows are never read
    # First uses write once (the quota and account rows, the key's last use): not measured.
    page.get(reverse("deployments:usage"))
    api.get("/api/v1/usage", window)
    counts = []
    for size, tag in ((12, "small"), (3000, "large")):
        _ledger(org_a, size, tag)
        with (
            CaptureQueriesContext(connection) as api_queries,
            django_assert_max_num_queries(API_MAX_QUERIES),
        ):
            body = api.get("/api/v1/usage", window).json()
        with (
            CaptureQueriesContext(connection) as page_queries,
            django_assert_max_num_queries(PAGE_MAX_QUERIES),
        ):
            response = page.get(reverse("deployments:usage"))
        assert response.status_code == 200
        counts.append((len(api_queries), len(page_queries)))
        # Summed by the database, exactly as the rows add up.
        rows = UsageRecord.objects.filter(organization=org_a)
        assert sum(r["quantity"] for r in body) == rows.aggregate(q=Sum("quantity"))["q"]
        micros = rows.aggregate(m=Sum("amount_micros"))["m"]
        assert sum(int(r["amount"].replace(".", "")) for r in body) == micros
    assert counts[0] == counts[1]


def test_usage_per_day_is_summed_by_utc_day(org_a):
    day = datetime(2026, 3, 5, tzinfo=UTC)
    _usage(org_a, day - timedelta(minutes=1))  # 23:59 the day before: two windows
    by_day = billing.usage_by_day(
        organization=org_a, start=day - timedelta(days=1), end=day + timedelta(days=1)
    )
    assert by_day == {
        "2026-03-04": {"gpu_seconds": 60, "input_tokens": 1000, "output_tokens": 500},
        "2026-03-05": {"gpu_seconds": 60},
    }
