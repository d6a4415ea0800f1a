"""Stripe, when STRIPE_API_KEY and STRIPE_WEBHOOK_SECRET are set.

Gantry rates usage itself (the ledger and the rate table) and closes invoices; Stripe
collects. So each closed invoice is pushed as a draft Stripe invoice with one invoice item
per line — the amount Gantry computed; a credit is a line with a negative amount, which
Stripe subtracts from the invoice — and then finalized. Meter events would make Stripe
rate the usage again from prices configured there, a second source of truth for prices;
invoice items keep one.

Pushing is idempotent on the invoice's identity (organization, month, version), not on
the time of the call: Stripe forgets idempotency keys after 24 hours, so before creating
anything the push looks for what an earlier push made — the Stripe invoice id recorded
here, else a Stripe invoice of the customer whose metadata carries the identity, and the
items already on it by their line key. A re-issued invoice (the next version) voids or
deletes the Stripe invoices of the versions before it.
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


class StripeSyncError(Exception):
    pass


def _metadata(obj, key: str) -> str | None:
    # StripeObject is not a dict (no .get); fields are attributes, metadata keys items.
    meta = getattr(obj, "metadata", None)
    return meta[key] if meta is not None and key in meta else None


def _by_identity(client: stripe.StripeClient, customer: str) -> dict:
    """The customer's Stripe invoices that carry a Gantry identity, by identity."""
    found = {}
    for candidate in client.v1.invoices.list(
        params={"customer": customer, "limit": 100}
    ).auto_paging_iter():
        identity = _metadata(candidate, "gantry_identity")
        if identity:
            found[identity] = candidate
    return found


def _void_superseded(client: stripe.StripeClient, invoice: Invoice, remote_by_identity) -> None:
    """The Stripe invoices of earlier versions of this month stop asking for money: a draft
    is deleted, a finalized one voided; one already void or deleted is left alone."""
    older = Invoice.objects.filter(
        organization_id=invoice.organization_id,
        period_start=invoice.period_start,
        version__lt=invoice.version,
    )
    for old in older:
        if old.stripe_invoice_id:
            try:
                remote = client.v1.invoices.retrieve(old.stripe_invoice_id)
            except stripe.InvalidRequestError as exc:
                if exc.code == "resource_missing":  # a deleted draft
                    continue
                raise
        else:  # pushed by a run that died before recording the id, or never pushed
            remote = remote_by_identity().get(old.identity)
            if remote is None:
                continue
        if remote.status == "draft":
            client.v1.invoices.delete(remote.id)
        elif remote.status in ("open", "uncollectible"):
            client.v1.invoices.void_invoice(
                remote.id, options={"idempotency_key": f"{old.identity}-void"}
            )
        elif remote.status == "paid":
            raise StripeSyncError(
                f"{old} is paid in Stripe ({remote.id}): it cannot be voided; refund or "
                "credit it in Stripe before pushing the re-issued invoice."
            )


def invoice_push(invoice: Invoice) -> str:
    """Mirror a closed invoice in Stripe, exactly once however often it is called; returns
    the Stripe invoice id ("" for a void invoice: its live version's push voids it)."""
    # The invoice row stays locked for the whole push, Stripe calls included: a re-issue
    # (which locks it too) waits for a running push to record what it made, so the next
    # version's push always finds the Stripe invoice it must void.
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if invoice.status == Invoice.Status.VOID:
            return ""
        if invoice.status != Invoice.Status.CLOSED:
            raise StripeSyncError(f"{invoice} is open: only closed invoices are pushed.")
        return _push_locked(invoice)


def _push_locked(invoice: Invoice) -> str:
    account, _ = BillingAccount.objects.get_or_create(organization=invoice.organization)
    customer = customer_ensure(account)
    client = _client()
    listed: dict | None = None

    def remote_by_identity() -> dict:
        nonlocal listed
        if listed is None:
            listed = _by_identity(client, customer)
        return listed

    _void_superseded(client, invoice, remote_by_identity)
    identity = invoice.identity
    period = invoice.period_start.strftime("%Y-%m")
    if invoice.stripe_invoice_id:
        remote = client.v1.invoices.retrieve(invoice.stripe_invoice_id)
    else:
        remote = remote_by_identity().get(identity)
    if remote is None:
        remote = client.v1.invoices.create(
            params={
                "customer": customer,
                "collection_method": "charge_automatically",
                # Finalized below, once every item is on it; Stripe would otherwise finalize
                # the draft by itself about an hour later, items or not.
                "auto_advance": False,
                "pending_invoice_items_behavior": "exclude",
                "metadata": {"gantry_identity": identity, "period": period},
            },
            options={"idempotency_key": identity},
        )
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=remote.id)
    if remote.status != "draft":
        return remote.id  # finalized by an earlier push: its items are all there
    present = {
        _metadata(item, "gantry_line")
        for item in client.v1.invoice_items.list(
            params={"invoice": remote.id, "limit": 100}
        ).auto_paging_iter()
    }
    for line in invoice.lines.all():
        if line.amount_cents == 0 or line.key in present:
            continue
        late = " (late usage)" if line.late else ""
        client.v1.invoice_items.create(
            params={
                "customer": customer,
                "invoice": remote.id,
                "amount": line.amount_cents,
                "currency": "usd",
                "description": f"{line.deployment_name or 'account'} — "
                f"{line.get_kind_display()}{late} ({period})",
                "metadata": {"gantry_identity": identity, "gantry_line": line.key},
            },
            options={"idempotency_key": f"{identity}-{line.key}"},
        )
    client.v1.invoices.finalize_invoice(
        remote.id,
        params={"auto_advance": True},
        options={"idempotency_key": f"{identity}-finalize"},
    )
    return remote.id


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
