from datetime import UTC, date, datetime, timedelta

import pytest

from billing import services as billing
from billing.gpu_rates import ensure_default_rates
from billing.models import GpuQuota, Quota
from portal.models import Role


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
    invoice = billing.invoice_close(organization=org_a, period_start=date(2026, 3, 1))
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
