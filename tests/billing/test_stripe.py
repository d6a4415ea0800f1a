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
from billing.invoices import invoice_close, invoice_reissue
from billing.models import BillingAccount, Invoice, StripeEvent
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
    return invoice_close(organization=org, period_start=date(2026, 1, 1))


def test_customer_and_invoice_are_pushed_once_with_idempotency_keys(stripe_api, org_a):
    invoice = _closed_invoice(org_a)
    assert invoice.status == "closed" and invoice.total_cents == 8 * 299
    first = stripe_sync.invoice_push(invoice)
    for _ in range(2):  # a retried or replayed push
        assert stripe_sync.invoice_push(invoice) == first
    created = sorted(o["object"] for o in stripe_api.objects.values())
    assert created == ["customer", "invoice", "invoiceitem"]  # each exactly once
    [item] = stripe_api.items_of(first)
    assert item["amount"] == 8 * 299 and item["currency"] == "usd"
    assert item["metadata"]["gantry_identity"] == f"gantry-{org_a.pk}-2026-01-v1"
    assert stripe_api.objects[first]["status"] == "open"  # finalized once its items are on
    assert stripe_api.objects[first]["total"] == invoice.total_cents
    posts = [c for c in stripe_api.calls if c["method"] == "POST"]
    assert all(c["key"] for c in posts)
    assert all(c["auth"] == "Bearer sk_test_gantry" for c in stripe_api.calls)
    account = BillingAccount.objects.get(organization=org_a)
    assert account.stripe_customer_id.startswith("cus_")


def test_a_resync_after_stripe_forgot_its_keys_never_makes_a_second_invoice(stripe_api, org_a):
    invoice = _closed_invoice(org_a)
    first = stripe_sync.invoice_push(invoice)
    for _ in range(3):  # 24 hours later, three times
        stripe_api.expire_idempotency_keys()
        assert stripe_sync.invoice_push(Invoice.objects.get(pk=invoice.pk)) == first
    assert len(stripe_api.invoices()) == 1 and len(stripe_api.items_of(first)) == 1


def test_a_push_killed_before_it_recorded_the_stripe_invoice_finds_it_again(stripe_api, org_a):
    invoice = _closed_invoice(org_a)
    first = stripe_sync.invoice_push(invoice)
    for _ in range(3):  # the id never reached our database, and the keys expired
        Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id="")
        stripe_api.expire_idempotency_keys()
        assert stripe_sync.invoice_push(Invoice.objects.get(pk=invoice.pk)) == first
    assert len(stripe_api.invoices()) == 1 and len(stripe_api.items_of(first)) == 1


def test_a_push_killed_between_items_adds_only_the_missing_ones(stripe_api, org_a):
    _closed_invoice(org_a)
    billing.meter_tokens(
        organization_id=org_a.pk,
        request_id="q1",
        deployment_id=1,
        deployment_name="chat",
        model="chat",
        input_tokens=2_000_000,
        output_tokens=1_000_000,
        at=datetime(2026, 1, 11, tzinfo=UTC),
    )
    invoice = reissue(Invoice.objects.get(organization=org_a))
    assert invoice.lines.count() == 3
    sid = stripe_sync.invoice_push(invoice)
    # Simulate the crash: Stripe holds the draft and one item only.
    stripe_api.objects[sid]["status"] = "draft"
    for item in stripe_api.items_of(sid)[1:]:
        stripe_api.objects[sid]["total"] -= item["amount"]
        del stripe_api.objects[item["id"]]
    for _ in range(3):
        stripe_api.expire_idempotency_keys()
        assert stripe_sync.invoice_push(Invoice.objects.get(pk=invoice.pk)) == sid
    assert len(stripe_api.items_of(sid)) == 3
    assert stripe_api.objects[sid]["total"] == invoice.total_cents
    assert stripe_api.objects[sid]["status"] == "open"


def reissue(invoice):
    return invoice_reissue(invoice_id=invoice.pk)


def test_a_credit_reaches_stripe_as_a_negative_item(stripe_api, org_a):
    billing.credit_issue(
        organization=org_a,
        amount_cents=700,
        reason="outage on the 9th",
        at=datetime(2026, 1, 12, tzinfo=UTC),
    )
    invoice = _closed_invoice(org_a)
    assert invoice.total_cents == 8 * 299 - 700
    for _ in range(3):
        sid = stripe_sync.invoice_push(Invoice.objects.get(pk=invoice.pk))
        stripe_api.expire_idempotency_keys()
    amounts = sorted(i["amount"] for i in stripe_api.items_of(sid))
    assert amounts == [-700, 8 * 299]
    assert stripe_api.objects[sid]["total"] == invoice.total_cents
    assert len(stripe_api.invoices()) == 1


def test_reissue_voids_the_old_stripe_invoice_and_makes_exactly_one_new_one(stripe_api, org_a):
    v1 = _closed_invoice(org_a)
    old_sid = stripe_sync.invoice_push(v1)
    billing.credit_issue(
        organization=org_a,
        amount_cents=100,
        reason="late fix",
        at=datetime(2026, 1, 20, tzinfo=UTC),
    )
    v2 = reissue(v1)
    # The credit dated in January landed after January closed: the re-issue counts it.
    assert v2.version == 2 and v2.total_cents == v1.total_cents - 100
    for _ in range(3):  # replayed, within and after Stripe's 24 hours
        new_sid = stripe_sync.invoice_push(Invoice.objects.get(pk=v2.pk))
        stripe_api.expire_idempotency_keys()
    assert new_sid != old_sid
    assert stripe_api.objects[old_sid]["status"] == "void"
    [live] = [i for i in stripe_api.invoices() if i["status"] != "void"]
    assert live["id"] == new_sid and live["total"] == v2.total_cents
    assert live["metadata"]["gantry_identity"].endswith("-2026-01-v2")


def test_reissue_of_a_month_whose_push_stopped_at_a_draft_deletes_that_draft(stripe_api, org_a):
    v1 = _closed_invoice(org_a)
    old_sid = stripe_sync.invoice_push(v1)
    stripe_api.objects[old_sid]["status"] = "draft"  # killed before finalizing
    v2 = reissue(v1)
    for _ in range(3):
        stripe_sync.invoice_push(Invoice.objects.get(pk=v2.pk))
    assert old_sid not in stripe_api.objects
    assert [i["status"] for i in stripe_api.invoices()] == ["open"]


def test_a_paid_invoice_is_not_silently_replaced(stripe_api, org_a):
    v1 = _closed_invoice(org_a)
    old_sid = stripe_sync.invoice_push(v1)
    stripe_api.objects[old_sid]["status"] = "paid"
    v2 = reissue(v1)
    with pytest.raises(stripe_sync.StripeSyncError, match="is paid in Stripe"):
        stripe_sync.invoice_push(v2)
    assert len(stripe_api.invoices()) == 1


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
        inv = invoice_close(organization=org_a, period_start=date(2026, 2, 1))
        return inv.total_cents, list(inv.lines.values_list("quantity", "amount_cents"))

    assert run() == run() == (round(30 * 60 * 5 / 3600), [(1800, round(1800 * 5 / 3600))])
