from celery import shared_task


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OSError,),
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

    from billing.services import invoices_close_month, month_start

    last = month_start(timezone.now()) - timedelta(days=1)
    return invoices_close_month(period_start=month_start(last))
