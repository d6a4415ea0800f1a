from datetime import timedelta

import pytest
from django.utils import timezone

from billing import services as billing
from billing.gpu_rates import ensure_default_rates
from billing.models import BillingAccount, Quota
from deployments.engines import DEMO_MODEL_REF
from deployments.models import Deployment
from deployments.services import spend_limits_enforce

BODY = {"model_ref": DEMO_MODEL_REF, "gpu_type": "cpu", "regions": ["local"]}


@pytest.fixture(autouse=True)
def rates(db):
    ensure_default_rates()


def _spend(org, cents):
    now = timezone.now().replace(second=0, microsecond=0)
    billing.usage_ingest(
        [
            billing.UsageRecord(
                organization=org,
                kind="gpu_seconds",
                quantity=1,
                amount_micros=cents * 10_000,
                window_start=now - timedelta(minutes=1),
                window_end=now,
                deployment_name="x",
                idempotency_key=f"test-spend-{cents}",
            )
        ]
    )


def test_past_due_account_gets_new_deployments_refused(org_a, api_client_for, local_pool):
    BillingAccount.objects.create(organization=org_a, status="past_due")
    response = api_client_for(org_a).post(
        "/api/v1/deployments", {**BODY, "name": "a"}, format="json"
    )
    assert response.status_code == 400
    assert "past due: new capacity is refused" in response.json()["billing"][0]
    assert not Deployment.objects.exists()


def test_hard_spend_limit_refuses_new_capacity(org_a, api_client_for, local_pool):
    Quota.objects.create(organization=org_a, monthly_spend_limit_cents=1000)
    api = api_client_for(org_a)
    assert api.post("/api/v1/deployments", {**BODY, "name": "a"}, format="json").status_code == 201
    _spend(org_a, 1000)
    response = api.post("/api/v1/deployments", {**BODY, "name": "b"}, format="json")
    assert response.status_code == 400
    assert "Monthly spend limit reached ($10.00)" in response.json()["billing"][0]
    status = billing.spend_status(org_a)
    assert status["hard"] and status["percent"] == 100


def test_stop_policy_scales_running_deployments_to_zero_with_an_event(
    org_a, api_client_for, local_pool
):
    Quota.objects.create(organization=org_a, monthly_spend_limit_cents=500, soft_alert_percent=80)
    BillingAccount.objects.create(organization=org_a, over_limit="stop")
    api = api_client_for(org_a)
    d = api.post("/api/v1/deployments", {**BODY, "name": "a"}, format="json").json()
    _spend(org_a, 420)
    assert billing.spend_status(org_a)["soft"] and spend_limits_enforce() == 0
    _spend(org_a, 100)
    assert spend_limits_enforce() == 1
    deployment = Deployment.objects.get(pk=d["id"])
    assert deployment.desired_replicas == 0
    assert deployment.events.filter(kind="spend_limit", message__contains="scaled 1 → 0").exists()


@pytest.mark.django_db(transaction=True)
def test_a_per_region_gpu_quota_holds_at_placement(org_a, api_client_for, local_pool):
    from billing.models import GpuQuota
    from tests.deployments.conftest import reconcile_until

    ensure_default_rates()
    quota = Quota.objects.create(organization=org_a)
    GpuQuota.objects.create(quota=quota, region="local", gpu_type="cpu", max_gpus=1)
    api = api_client_for(org_a)
    a = Deployment.objects.get(
        pk=api.post("/api/v1/deployments", {**BODY, "name": "a"}, format="json").json()["id"]
    )
    b = Deployment.objects.get(
        pk=api.post("/api/v1/deployments", {**BODY, "name": "b"}, format="json").json()["id"]
    )
    reconcile_until(a, lambda d: d.status == "running", what="a running")
    reconcile_until(
        b,
        lambda d: d.status == "pending" and "quota" in d.status_reason,
        what="b held back by the region quota",
    )
    assert b.status_reason == "the organization's GPU quota is used up in local"
    assert not b.replicas.exists()


def test_the_price_pages_show_is_the_price_billed(org_a, api_client_for, web_client):
    """One price for a GPU-hour: the rate table. The marketplace page and API, the GPU-type
    API and the ledger all give the rate in force, never a copy of it."""
    from datetime import UTC, datetime

    from django.urls import reverse

    from billing.models import GpuRate, UsageRecord
    from marketplace.services import catalog_load
    from tests.conftest import owner_of

    catalog_load()
    GpuRate.objects.create(
        gpu_type="h200-141gb", cents_per_hour=437, effective_from=datetime(2026, 1, 1, tzinfo=UTC)
    )
    GpuRate.objects.create(
        gpu_type="h200-141gb", cents_per_hour=999, effective_from=datetime(2099, 1, 1, tzinfo=UTC)
    )  # not yet in force
    api = api_client_for(org_a)
    gpu_types = {g["code"]: g for g in api.get("/api/v1/gpu-types").json()}
    assert gpu_types["h200-141gb"]["price_per_hour_cents"] == 437
    profile = next(
        p
        for p in api.get("/api/v1/models/deepseek-r1").json()["profiles"]
        if p["gpu_type"] == "h200-141gb" and p["gpu_count"] == 8
    )
    assert profile["price_per_hour"] == "34.96"  # 8 × $4.37
    page = web_client(owner_of(org_a), org_a).get(
        reverse("marketplace:model", args=["deepseek-r1"])
    )
    assert "$34.96/h" in page.content.decode()

    # An hour of such a replica in the ledger costs exactly what the pages showed.
    start = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    billing.meter_gpu_time(
        organization_id=org_a.pk,
        source="replica-shown-price",
        deployment_id=None,
        deployment_name="r1",
        region="eu-west",
        gpu_type="h200-141gb",
        gpus=8,
        start=start,
        end=start + timedelta(hours=1),
        final=True,
    )
    billed = sum(
        UsageRecord.objects.filter(organization=org_a).values_list("amount_micros", flat=True)
    )
    assert round(billed / 10_000) == 3496
