"""Stripe, when STRIPE_API_KEY and STRIPE_WEBHOOK_SECRET are set.

Gantry rates usage itself (the ledger and the rate table) and closes invoices; Stripe
collects. So each closed invoice is pushed as invoice items — one per invoice line, the
amount Gantry computed — plus an invoice that includes them. Meter events would make
Stripe rate the usage again from prices configured there, a second source of truth for
prices; invoice items keep one. Every call carries an idempotency key derived from the
organization, month and line, so a retried or replayed push never bills twice.
"""

import logging

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction

from billing.models import BillingAccount, Invoice, StripeEvent

log = logging.getLogger(__name__)


def enabled() -> bool:
    return bool(settings.STRIPE_API_KEY and settings.STRIPE_WEBHOOK_SECRET)


def _client() -> stripe.StripeClient:
    kwargs = {"max_network_retries": 2}
    if settings.STRIPE_API_BASE:
        kwargs["base_addresses"] = {"api": settings.STRIPE_API_BASE}
    return stripe.StripeClient(settings.STRIPE_API_KEY, **kwargs)


def customer_ensure(account: BillingAccount) -> str:
    if account.stripe_customer_id:
        return account.stripe_customer_id
    org = account.organization
    customer = _client().v1.customers.create(
        params={"name": org.name, "metadata": {"gantry_org": org.slug}},
        options={"idempotency_key": f"gantry-customer-{org.pk}"},
    )
    BillingAccount.objects.filter(pk=account.pk).update(stripe_customer_id=customer.id)
    account.stripe_customer_id = customer.id
    return customer.id


def invoice_push(invoice: Invoice) -> str:
    """Mirror a closed invoice in Stripe; returns the Stripe invoice id."""
    account, _ = BillingAccount.objects.get_or_create(organization=invoice.organization)
    customer = customer_ensure(account)
    client = _client()
    period = invoice.period_start.strftime("%Y-%m")
    base = f"gantry-{invoice.organization_id}-{period}-v{invoice.pk}"
    stripe_invoice = client.v1.invoices.create(
        params={
            "customer": customer,
            "collection_method": "charge_automatically",
            "auto_advance": True,
            "pending_invoice_items_behavior": "exclude",
            "metadata": {"gantry_invoice": str(invoice.pk), "period": period},
        },
        options={"idempotency_key": f"{base}-invoice"},
    )
    for line in invoice.lines.all():
        if line.amount_cents <= 0:
            continue
        client.v1.invoice_items.create(
            params={
                "customer": customer,
                "invoice": stripe_invoice.id,
                "amount": line.amount_cents,
                "currency": "usd",
                "description": f"{line.deployment_name or 'usage'} — "
                f"{line.get_kind_display()} ({period})",
                "metadata": {"gantry_invoice": str(invoice.pk), "kind": line.kind},
            },
            options={"idempotency_key": f"{base}-{line.deployment_name}-{line.kind}"},
        )
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=stripe_invoice.id)
    return stripe_invoice.id


class WebhookRejected(Exception):
    pass


def webhook_handle(payload: bytes, signature: str) -> str:
    """Verify the signature over the raw body, handle each event id once."""
    try:
        event = stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
    except (ValueError, stripe.SignatureVerificationError) as exc:
        raise WebhookRejected(str(exc)) from exc
    try:
        with transaction.atomic():
            StripeEvent.objects.create(event_id=event.id, type=event.type)
            _apply(event)
    except IntegrityError:
        return "duplicate"
    return "handled"


def _apply(event) -> None:
    obj = event.data.object
    try:
        customer = obj["customer"]
    except (KeyError, TypeError):
        customer = None
    if event.type == "invoice.payment_failed" and customer:
        BillingAccount.objects.filter(stripe_customer_id=customer).update(
            status=BillingAccount.Status.PAST_DUE
        )
    elif event.type == "invoice.paid" and customer:
        BillingAccount.objects.filter(
            stripe_customer_id=customer, status=BillingAccount.Status.PAST_DUE
        ).update(status=BillingAccount.Status.ACTIVE)
    log.info("stripe event %s (%s) handled", event.id, event.type)
