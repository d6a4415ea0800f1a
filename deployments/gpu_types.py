"""The GPU-type table every pool refers to. Prices are not here: a GPU-hour's one price is
billing's rate table (billing.gpu_rates holds its starting rates)."""

GPU_TYPES = [
    # code, name, memory GB
    ("b200-192gb", "B200 192GB", 192),
    ("h200-141gb", "H200 141GB", 141),
    ("h100-80gb", "H100 80GB", 80),
    ("a100-80gb", "A100 80GB", 80),
    ("l40s-48gb", "L40S 48GB", 48),
    ("cpu", "CPU", 0),
]


def ensure_gpu_types(model=None) -> None:
    """Create the standard GPU types that are missing (existing rows are left alone)."""
    if model is None:
        from deployments.models import GpuType as model
    for code, name, memory in GPU_TYPES:
        model.objects.get_or_create(code=code, defaults={"name": name, "memory_gb": memory})
