"""The GPU-type table every pool refers to. List prices are starting points operators
change in the admin (and, later, through the billing rate table)."""

GPU_TYPES = [
    # code, name, memory GB, list price per GPU-hour in cents
    ("b200-192gb", "B200 192GB", 192, 599),
    ("h200-141gb", "H200 141GB", 141, 399),
    ("h100-80gb", "H100 80GB", 80, 299),
    ("a100-80gb", "A100 80GB", 80, 179),
    ("l40s-48gb", "L40S 48GB", 48, 99),
    ("cpu", "CPU", 0, 5),
]


def ensure_gpu_types(model=None) -> None:
    """Create the standard GPU types that are missing (existing rows are left alone)."""
    if model is None:
        from deployments.models import GpuType as model
    for code, name, memory, price in GPU_TYPES:
        model.objects.get_or_create(
            code=code, defaults={"name": name, "memory_gb": memory, "price_per_hour_cents": price}
        )
