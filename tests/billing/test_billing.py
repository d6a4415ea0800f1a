import itertools
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection

from billing import services as billing
from billing.gpu_rates import ensure_default_rates
from billing.invoices import invoice_close
from billing.models import GpuQuota, GpuRate, Invoice, Quota, UsageRecord
from deployments.engines import DEMO_MODEL_REF
from deployments.models import Deployment, Replica
from deployments.services import committed_gpus, deployment_reconcile
from tests.conftest import owner_of
from tests.deployments.conftest import reconcile_until

T0 = datetime(2026, 1, 31, 23, 57, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def rates(db):
    ensure_default_rates()


def meter(org, start, end, final=False, source="replica-1"):
    return billing.meter_gpu_time(
        organization_id=org.pk,
        source=source,
        deployment_id=7,
        deployment_name="chat",
        region="eu-west",
        gpu_type="h100-80gb",
        gpus=2,
        start=start,
        end=end,
        final=final,
    )


def ledger(org):
    return sorted(
        UsageRecord.objects.filter(organization=org).values_list(
            "idempotency_key", "quantity", "amount_micros"
        )
    )


def test_gpu_time_is_written_in_minute_windows_exactly_once(org_a):
    covered = meter(org_a, T0, T0 + timedelta(minutes=3, seconds=10))
    # 23:57:30–23:58 (30 s), 23:58–23:59, 23:59–00:00, 00:00–00:01; 00:00:40 is not done yet.
    assert covered == datetime(2026, 2, 1, 0, 0, 0, tzinfo=UTC)
    first = ledger(org_a)
    assert [q for _, q, _ in first] == [60, 120, 120]  # 30 s × 2 GPUs, then full minutes
    # $2.99/GPU-hour: 120 GPU-seconds = 120 × 299 × 10,000 / 3600 micro-dollars.
    assert first[1][2] == round(120 * 299 * 10_000 / 3600)
    for _ in range(3):  # replayed by a retried or duplicated task: nothing changes
        meter(org_a, T0, T0 + timedelta(minutes=3, seconds=10))
    assert ledger(org_a) == first
    meter(org_a, covered, T0 + timedelta(minutes=3, seconds=10), final=True)  # it stopped
    assert [q for _, q, _ in ledger(org_a)] == [60, 120, 120, 80]


def test_usage_is_priced_at_the_rate_in_force(org_a):
    GpuRate.objects.create(
        gpu_type="h100-80gb", cents_per_hour=360, effective_from=datetime(2026, 2, 1, tzinfo=UTC)
    )
    meter(org_a, T0, T0 + timedelta(minutes=4), final=True)
    rows = UsageRecord.objects.filter(organization=org_a).order_by("window_start")
    assert [r.amount_micros for r in rows] == [
        round(60 * 299 * 10_000 / 3600),
        round(120 * 299 * 10_000 / 3600),
        round(120 * 299 * 10_000 / 3600),
        round(120 * 360 * 10_000 / 3600),
        round(60 * 360 * 10_000 / 3600),
    ]


def test_a_month_rolled_over_gives_two_correct_invoices(org_a):
    meter(org_a, T0, T0 + timedelta(minutes=4), final=True)  # 2.5 min in Jan, 1.5 in Feb
    jan = invoice_close(organization=org_a, period_start=date(2026, 1, 1))
    feb = invoice_close(organization=org_a, period_start=date(2026, 2, 1))
    jan_micros = round(60 * 299 * 1e4 / 3600) + 2 * round(120 * 299 * 1e4 / 3600)
    feb_micros = round(120 * 299 * 1e4 / 3600) + round(60 * 299 * 1e4 / 3600)
    assert jan.total_cents == round(jan_micros / 10_000)
    assert feb.total_cents == round(feb_micros / 10_000)
    [line] = jan.lines.all()
    assert (line.deployment_name, line.kind, line.quantity) == ("chat", "gpu_seconds", 300)
    again = invoice_close(organization=org_a, period_start=date(2026, 1, 1))
    assert again.pk == jan.pk and again.status == Invoice.Status.CLOSED
    assert list(again.lines.values_list("quantity", "amount_cents")) == list(
        jan.lines.values_list("quantity", "amount_cents")
    )


def _quota(org, gpus):
    quota, _ = Quota.objects.get_or_create(organization=org)
    GpuQuota.objects.create(quota=quota, gpu_type="cpu", max_gpus=gpus)


@pytest.mark.django_db(transaction=True)
def test_50_concurrent_deploys_and_scales_never_pass_a_4_gpu_quota(
    org_a, local_pool, api_client_for
):
    ensure_default_rates()
    _quota(org_a, 4)
    api = api_client_for(org_a)
    seed = api.post(
        "/api/v1/deployments",
        {
            "name": "seed",
            "model_ref": DEMO_MODEL_REF,
            "gpu_type": "cpu",
            "regions": ["local"],
            "max_replicas": 8,
        },
        format="json",
    ).json()

    def act(i):
        try:
            if i % 2:
                r = api.post(
                    f"/api/v1/deployments/{seed['id']}/scale",
                    {"replicas": 2 + i % 5},
                    format="json",
                )
            else:
                r = api.post(
                    "/api/v1/deployments",
                    {
                        "name": f"d{i}",
                        "model_ref": DEMO_MODEL_REF,
                        "gpu_type": "cpu",
                        "regions": ["local"],
                    },
                    format="json",
                )
            return r.status_code, r.json()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(act, range(50)))
    assert committed_gpus(org_a, "cpu") <= 4
    refused = [body for status, body in results if status == 400]
    assert refused and all("GPU quota: CPU is limited to 4" in body["quota"][0] for body in refused)
    # Exactly at the limit: the first requests filled it, every later one was refused.
    assert committed_gpus(org_a, "cpu") == 4


@pytest.mark.django_db(transaction=True)
def test_running_replicas_are_metered_and_a_killed_pass_never_doubles(org_a, local_pool):
    from deployments.services import deployment_create

    ensure_default_rates()
    d = deployment_create(
        organization=org_a,
        user=owner_of(org_a),
        name="metered",
        model_ref=DEMO_MODEL_REF,
        gpu_type="cpu",
        regions=["local"],
        engine_args=["--n_ctx", "256"],
    )
    reconcile_until(d, lambda d: d.status == "running", what="running")
    replica = d.replicas.get(status="running")
    # Five minutes pass (the clock is not slept on: the replica became ready earlier).
    ready = replica.ready_at.replace(second=0, microsecond=0) - timedelta(minutes=5)
    Replica.objects.filter(pk=replica.pk).update(ready_at=ready, metered_until=None)
    # A pass killed after writing the ledger but before recording how far it got:
    billing.meter_gpu_time(
        organization_id=org_a.pk,
        source=f"replica-{replica.pk}",
        deployment_id=d.pk,
        deployment_name=d.name,
        region="local",
        gpu_type="cpu",
        gpus=1,
        start=ready,
        end=ready + timedelta(minutes=3),
    )
    deployment_reconcile(deployment_id=d.pk)
    deployment_reconcile(deployment_id=d.pk)
    rows = UsageRecord.objects.filter(organization=org_a, deployment_id=d.pk)
    keys = list(rows.values_list("idempotency_key", flat=True))
    assert len(keys) == len(set(keys)) >= 5  # every minute once, none twice
    windows = sorted(rows.values_list("window_start", flat=True))
    assert windows[0] == ready and all(
        b - a == timedelta(minutes=1) for a, b in itertools.pairwise(windows)
    )
    assert all(q == 60 for q in rows.values_list("quantity", flat=True))
    assert Deployment.objects.get(pk=d.pk).status == "running"
