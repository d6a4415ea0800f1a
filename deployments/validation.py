"""The checks on what a deployment runs — engine flags, image and model — in one place,
for every way a deployment is created (the form, the API, a catalog or build deploy)."""

from django.core.exceptions import ValidationError

from deployments.artifacts import resolve_image, resolve_model_ref
from deployments.flags import validate_engine_args
from deployments.models import Engine, GpuPool


def runtime_check(
    *, organization, engine: str, image, model_ref, engine_args, gpu_type, regions
) -> tuple[dict, dict[str, str]]:
    """The clean values ({"image", "model_ref", "engine_args"}) and the errors by field.
    ``gpu_type`` is the GpuType (or None when it is itself wrong); ``regions`` codes."""
    clean: dict = {}
    errors: dict[str, str] = {}
    if engine not in Engine.values:
        return clean, errors  # the engine's own error says what to choose
    pools = GpuPool.objects.filter(
        region__code__in=[str(r) for r in regions or []],
        region__enabled=True,
        gpu_type=gpu_type,
        enabled=True,
    )
    checks = {
        "model_ref": lambda: resolve_model_ref(
            organization=organization, engine=engine, model_ref=model_ref
        ),
        "image": lambda: resolve_image(
            organization=organization, engine=engine, image=image, pools=pools
        ),
        "engine_args": lambda: validate_engine_args(
            engine, [] if engine_args is None else engine_args
        ),
    }
    for name, check in checks.items():
        try:
            clean[name] = check()
        except ValidationError as exc:
            errors.update({k: " ".join(v) for k, v in exc.message_dict.items()})
    return clean, errors
