import stripe
from celery import shared_task


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    # Network trouble and Stripe's own 5xx/429 are retried; a refused request (4xx) or a paid
    # invoice that cannot be voided does not retry by itself.
    autoretry_for=(OSError, stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError),
    retry_backoff=True,
    max_retries=8,
)
def push_invoice(invoice_id: int) -> str:
    from billing import stripe_sync
    from billing.models import Invoice

    return stripe_sync.invoice_push(Invoice.objects.get(pk=invoice_id))


@shared_task(acks_late=True)
def close_last_month() -> int:
    from datetime import timedelta

    from django.utils import timezone

    from billing.invoices import invoices_close_month
    from billing.selectors import month_start

    last = month_start(timezone.now()) - timedelta(days=1)
    return invoices_close_month(period_start=month_start(last))
