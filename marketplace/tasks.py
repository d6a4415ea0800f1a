from celery import shared_task


@shared_task(acks_late=True)
def sync_catalog() -> str:
    from marketplace.services import catalog_sync

    return catalog_sync().message
