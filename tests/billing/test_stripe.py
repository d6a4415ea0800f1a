import hashlib
import hmac
import json
import time
from datetime import UTC, date, datetime, timedelta

import pytest
from django.urls import reverse

from billing import services as billing
from billing import stripe_sync
from billing.gpu_rates import ensure_default_rates
from billing.models import BillingAccount, StripeEvent
from tests.billing.stripe_server import StripeServer

SECRET = "whsec_test_secret"


@pytest.fixture
def stripe_api(settings, db):
    ensure_default_rates()
    with StripeServer() as server:
        settings.STRIPE_API_KEY = "sk_test_gantry"
        settings.STRIPE_WEBHOOK_SECRET = SECRET
        settings.STRIPE_API_BASE = server.url
        yield server


def signed(payload: bytes, secret: str = SECRET, at: int | None = None) -> str:
    at = at or int(time.time())
    sig = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={sig}"


def event(type_: str, customer: str, event_id: str) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": type_,
            "api_version": None,
            "data": {"object": {"id": "in_1", "object": "invoice", "customer": customer}},
        }
    ).encode()


def _closed_invoice(org):
    billing.meter_gpu_time(
        organization_id=org.pk,
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
    return billing.invoice_close(organization=org, period_start=date(2026, 1, 1))


def test_customer_and_invoice_are_pushed_once_with_idempotency_keys(stripe_api, org_a):
    invoice = _closed_invoice(org_a)
    assert invoice.status == "closed" and invoice.total_cents == 8 * 299
    first = stripe_sync.invoice_push(invoice)
    for _ in range(2):  # a retried or replayed push
        assert stripe_sync.invoice_push(invoice) == first
    created = [(o["object"]) for o in stripe_api.created]
    assert created == ["customer", "invoice", "invoiceitem"]  # each exactly once
    item = next(o for o in stripe_api.created if o["object"] == "invoiceitem")
    assert item["amount"] == str(8 * 299) and item["currency"] == "usd"
    assert item["invoice"] == first
    assert all(c["key"] for c in stripe_api.calls)
    assert all(c["auth"] == "Bearer sk_test_gantry" for c in stripe_api.calls)
    account = BillingAccount.objects.get(organization=org_a)
    assert account.stripe_customer_id.startswith("cus_")


def test_webhooks_move_the_account_and_each_event_counts_once(stripe_api, client, org_a):
    BillingAccount.objects.create(organization=org_a, stripe_customer_id="cus_alpha")
    url = reverse("billing:stripe_webhook")
    failed = event("invoice.payment_failed", "cus_alpha", "evt_1")
    for _ in range(3):  # Stripe retries and replays
        r = client.post(
            url, failed, content_type="application/json", HTTP_STRIPE_SIGNATURE=signed(failed)
        )
        assert r.status_code == 200
    assert BillingAccount.objects.get(organization=org_a).status == "past_due"
    assert StripeEvent.objects.count() == 1
    paid = event("invoice.paid", "cus_alpha", "evt_2")
    client.post(url, paid, content_type="application/json", HTTP_STRIPE_SIGNATURE=signed(paid))
    assert BillingAccount.objects.get(organization=org_a).status == "active"
    replay = client.post(
        url, failed, content_type="application/json", HTTP_STRIPE_SIGNATURE=signed(failed)
    )
    assert replay.json()["outcome"] == "duplicate"
    assert BillingAccount.objects.get(organization=org_a).status == "active"


@pytest.mark.parametrize("how", ["forged", "stale", "missing"])
def test_forged_or_stale_signatures_are_rejected_and_change_nothing(how, stripe_api, client, org_a):
    BillingAccount.objects.create(organization=org_a, stripe_customer_id="cus_alpha")
    payload = event("invoice.payment_failed", "cus_alpha", "evt_9")
    header = {
        "forged": signed(payload, secret="whsec_wrong"),
        "stale": signed(payload, at=int(time.time()) - 3600),
        "missing": "",
    }[how]
    r = client.post(
        reverse("billing:stripe_webhook"),
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=header,
    )
    assert r.status_code == 400
    assert BillingAccount.objects.get(organization=org_a).status == "active"
    assert not StripeEvent.objects.exists()


def test_metering_replayed_three_times_gives_identical_invoices(stripe_api, org_a):
    def run():
        for _ in range(3):
            billing.meter_gpu_time(
                organization_id=org_a.pk,
                source="r1",
                deployment_id=1,
                deployment_name="chat",
                region="eu",
                gpu_type="cpu",
                gpus=1,
                start=datetime(2026, 2, 1, tzinfo=UTC),
                end=datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=30),
                final=True,
            )
        inv = billing.invoice_close(organization=org_a, period_start=date(2026, 2, 1))
        return inv.total_cents, list(inv.lines.values_list("quantity", "amount_cents"))

    assert run() == run() == (round(30 * 60 * 5 / 3600), [(1800, round(1800 * 5 / 3600))])
