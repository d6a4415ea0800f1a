"""Starting GPU rates (cents per GPU-hour). They are the operator's own prices, not read
from any provider's price list, and are marked so (``GpuRate.source``); operators change
them in the admin, with an effective date, and name a source and its date when a price
follows a published list."""

DEFAULT_GPU_RATES = {
    "b200-192gb": 599,
    "h200-141gb": 399,
    "h100-80gb": 299,
    "a100-80gb": 179,
    "l40s-48gb": 99,
    "cpu": 5,
}


def ensure_default_rates(gpu_rate_model=None, token_rate_model=None) -> None:
    from datetime import UTC, datetime

    if gpu_rate_model is None:
        from billing.models import GpuRate as gpu_rate_model
        from billing.models import TokenRate as token_rate_model
    since = datetime(2020, 1, 1, tzinfo=UTC)
    for code, cents in DEFAULT_GPU_RATES.items():
        gpu_rate_model.objects.get_or_create(
            gpu_type=code, effective_from=since, defaults={"cents_per_hour": cents}
        )
    token_rate_model.objects.get_or_create(
        model="*",
        effective_from=since,
        defaults={"input_cents_per_million": 10, "output_cents_per_million": 30},
    )
