"""Demo inventory for the embedded default: one region for this machine, a CPU pool run
by the local driver, and a deployment of the tiny random-weight demo model."""

import os

from deployments.engines import DEMO_MODEL_REF
from deployments.gpu_types import ensure_gpu_types
from deployments.models import Deployment, Driver, GpuPool, GpuType, Node, Region
from deployments.services import deployment_create

DEMO_DEPLOYMENT = "tiny-demo"


def load_demo_inventory(*, org, user, deployment: bool = True) -> list[str]:
    ensure_gpu_types()
    region, _ = Region.objects.get_or_create(
        code="local",
        defaults={
            "name": "This machine",
            "location": "localhost",
            "latitude": 0.0,
            "longitude": 0.0,
        },
    )
    pool, _ = GpuPool.objects.get_or_create(
        region=region,
        name="cpu",
        defaults={"driver": Driver.LOCAL, "gpu_type": GpuType.objects.get(code="cpu")},
    )
    slots = max(2, min(8, (os.cpu_count() or 2) * 2))
    Node.objects.get_or_create(
        pool=pool, name="localhost", defaults={"address": "127.0.0.1", "gpus_total": slots}
    )
    lines = [f"Region local: a CPU pool (local driver) with {slots} slots on this machine."]
    if (
        deployment
        and not Deployment.objects.filter(
            organization=org, name=DEMO_DEPLOYMENT, deleted_at__isnull=True
        ).exists()
    ):
        deployment_create(
            organization=org,
            user=user,
            name=DEMO_DEPLOYMENT,
            model_ref=DEMO_MODEL_REF,
            gpu_type="cpu",
            regions=["local"],
            engine_args=["--n_ctx", "512"],
        )
        lines.append(
            f"Deployment {DEMO_DEPLOYMENT}: the tiny random-weight demo model (its answers "
            "are noise — it exists to exercise the platform) on the local pool."
        )
    return lines
