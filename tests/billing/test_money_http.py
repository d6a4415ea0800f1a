"""The money path end to end over HTTP: staff void and re-issue a month and re-sync it in
the admin, a real Celery worker pushes to the local Stripe server, the customer reads the
invoice through the API; Stripe ends with one live invoice for the month."""

from datetime import UTC, date, datetime

import pytest

from billing import services as billing
from billing.gpu_rates import ensure_default_rates
from billing.invoices import invoice_close
from billing.models import Invoice
from tests.billing.stripe_server import StripeServer


@pytest.fixture
def stripe_env(settings, monkeypatch):
    """Stripe pointed at the local server, for this process and the worker it starts."""
    with StripeServer() as server:
        for name, value in (
            ("STRIPE_API_KEY", "sk_test_gantry"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_test"),
            ("STRIPE_API_BASE", server.url),
        ):
            monkeypatch.setenv(name, value)
            setattr(settings, name, value)
        yield server


def _admin_action(client, action: str, invoice_id: int):
    response = client.post(
        "/admin/billing/invoice/", {"action": action, "_selected_action": [invoice_id]}
    )
    assert response.status_code == 302, response.content[:500]


@pytest.mark.django_db(transaction=True)
def test_reissue_and_resync_in_the_admin_leave_one_live_stripe_invoice(
    stripe_env, celery_worker, org_a, make_user, client, api_client_for
):
    ensure_default_rates()
    billing.meter_gpu_time(
        organization_id=org_a.pk,
        source="r1",
        deployment_id=1,
        deployment_name="chat",
        region="eu",
        gpu_type="h100-80gb",
        gpus=8,
        start=datetime(2026, 1, 10, tzinfo=UTC),
        end=datetime(2026, 1, 10, 1, tzinfo=UTC),
        final=True,
    )
    v1 = invoice_close(organization=org_a, period_start=date(2026, 1, 1))  # queues the push
    celery_worker.wait_for(lambda: stripe_env.invoices("open"), what="the first push")
    [first] = stripe_env.invoices()
    billing.credit_issue(
        organization=org_a, amount_cents=392, reason="outage", at=datetime(2026, 1, 9, tzinfo=UTC)
    )

    client.force_login(make_user("ops", is_staff=True, is_superuser=True))
    _admin_action(client, "void_and_reissue", v1.pk)
    v2 = Invoice.objects.exclude(status="void").get(organization=org_a)
    assert v2.version == 2 and v2.total_cents == 8 * 299 - 392
    celery_worker.wait_for(
        lambda: stripe_env.objects[first["id"]]["status"] == "void" and stripe_env.invoices("open"),
        what="the re-issued push",
    )
    v2.refresh_from_db()
    reads = f"/v1/invoices/{v2.stripe_invoice_id}"
    for n in range(1, 4):  # re-synced three times, each after Stripe forgot its keys
        stripe_env.expire_idempotency_keys()
        _admin_action(client, "resync_stripe", v2.pk)
        celery_worker.wait_for(
            lambda n=n: sum(c["path"] == reads for c in stripe_env.calls) >= n,
            what=f"re-sync {n}",
        )
    live = [i for i in stripe_env.invoices() if i["status"] != "void"]
    assert len(live) == 1 and live[0]["total"] == v2.total_cents == 8 * 299 - 392
    assert sorted(i["amount"] for i in stripe_env.items_of(live[0]["id"])) == [-392, 8 * 299]

    body = api_client_for(org_a).get("/api/v1/invoices").json()
    assert [(i["version"], i["status"], i["total_cents"]) for i in body["results"]] == [
        (2, "closed", 2000),
        (1, "void", 8 * 299),
    ]
