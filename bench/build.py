"""Image builds: cold build, warm rebuild after a config-only change, and how much the
image adds over its engine base — for Gantry's builder, and side by side for the common
alternative that bakes the weights into the image (COPY of the model file) and for a
`docker build` of the same configuration (ENV + COPY of the spec, Gantry's former way).

Needs the Docker engine and the llama.cpp engine image (make images). The model is the
demo GGUF padded to BENCH_WEIGHTS_MB (default 200) so baking has something to copy.
"""

import os
import tempfile
import time
from pathlib import Path

from _setup import django_on_postgres

WEIGHTS_MB = int(os.environ.get("BENCH_WEIGHTS_MB", "200"))


def main():
    os.environ.setdefault("REGISTRY_URL", "")  # measure the build itself, not a push
    django_on_postgres()
    import docker
    from django.contrib.auth import get_user_model
    from django.core.files.uploadedfile import SimpleUploadedFile

    from builder import images, services
    from builder.models import Build
    from deployments.demo_model import write_demo_gguf
    from marketplace.models import CatalogModel
    from portal.models import Organization
    from portal.services import organization_create

    client = docker.from_env()
    base = client.images.get("gantry/llamacpp:0.3.36")
    user, _ = get_user_model().objects.get_or_create(username="bench-build")
    org = Organization.objects.filter(slug="bench-build").first() or organization_create(
        name="bench-build", slug="bench-build", owner=user
    )
    Build.objects.filter(organization=org).delete()
    CatalogModel.objects.filter(organization=org).delete()
    tmp = Path(tempfile.mkdtemp(prefix="gantry-bench-build-"))
    gguf = write_demo_gguf(tmp / "tiny.gguf")
    upload = services.upload_create(
        organization=org, user=user, files=[SimpleUploadedFile("tiny.gguf", gguf.read_bytes())]
    )

    # Gantry: cold (a new build), then warm (same build, one variable changed).
    build = services.build_create(
        organization=org,
        user=user,
        name=f"bench-{int(time.time())}",
        source_kind="upload",
        upload_id=upload.pk,
    )
    services.build_configure(build=build, engine="llama.cpp", env={"MODE": "a"})
    t = time.perf_counter()
    cold = images.build_run(build_id=build.pk)
    cold_s = time.perf_counter() - t
    assert cold.status == "succeeded", cold.log
    services.build_configure(build=cold, engine="llama.cpp", env={"MODE": "b"})
    t = time.perf_counter()
    warm = images.build_run(build_id=build.pk)
    warm_s = time.perf_counter() - t
    assert warm.status == "succeeded", warm.log
    over = client.images.get(warm.image).attrs["Size"] - base.attrs["Size"]

    # Baseline: the weights baked into the image, the config after them.
    weights = tmp / "ctx" / "model.gguf"
    weights.parent.mkdir()
    with open(weights, "wb") as f:
        f.write(gguf.read_bytes())
        f.write(os.urandom(WEIGHTS_MB * 1024 * 1024))

    def baked(mode: str, nocache: bool) -> float:
        (tmp / "ctx" / "Dockerfile").write_text(
            f'FROM gantry/llamacpp:0.3.36\nCOPY model.gguf /models/model.gguf\nENV MODE="{mode}"\n'
        )
        start = time.perf_counter()
        for _ in client.api.build(
            path=str(tmp / "ctx"),
            tag="gantry-bench/baked:latest",
            rm=True,
            nocache=nocache,
            decode=True,
            pull=False,
        ):
            pass
        return time.perf_counter() - start

    baked_cold = baked("a", nocache=True)
    baked_warm = baked("b", nocache=False)
    baked_over = client.images.get("gantry-bench/baked:latest").attrs["Size"] - base.attrs["Size"]
    client.images.remove("gantry-bench/baked:latest", force=True)

    # Gantry's previous way, for comparison: `docker build` of ENV + COPY of the spec file.
    def dockerfile_build(mode: str, nocache: bool) -> float:
        ctx = tmp / "ctx-build"
        ctx.mkdir(exist_ok=True)
        (ctx / "spec.json").write_text(f'{{"MODE": "{mode}"}}')
        (ctx / "Dockerfile").write_text(
            f'FROM gantry/llamacpp:0.3.36\nENV MODE="{mode}"\nCOPY spec.json /etc/gantry/\n'
        )
        start = time.perf_counter()
        for _ in client.api.build(
            path=str(ctx), tag="gantry-bench/built:latest", rm=True, nocache=nocache, decode=True
        ):
            pass
        return time.perf_counter() - start

    built_cold = dockerfile_build("a", nocache=True)
    built_warm = dockerfile_build("b", nocache=False)
    client.images.remove("gantry-bench/built:latest", force=True)

    print(f"model file {gguf.stat().st_size:,} B (baseline bakes {WEIGHTS_MB} MB of weights)")
    print(f"{'':<26}{'cold s':>9}{'warm s':>9}{'over base':>14}")
    print(f"{'gantry (weights mounted)':<26}{cold_s:>9.2f}{warm_s:>9.2f}{over:>14,}")
    print(f"{'baseline (weights baked)':<26}{baked_cold:>9.2f}{baked_warm:>9.2f}{baked_over:>14,}")
    print(f"{'docker build ENV + COPY':<26}{built_cold:>9.2f}{built_warm:>9.2f}{'':>14}")
    print(
        f"RESULT cold_build_s={cold_s:.2f} warm_rebuild_s={warm_s:.2f} "
        f"size_over_base_bytes={over} baked_cold_build_s={baked_cold:.2f} "
        f"baked_warm_rebuild_s={baked_warm:.2f} baked_size_over_base_bytes={baked_over}"
    )


if __name__ == "__main__":
    main()
