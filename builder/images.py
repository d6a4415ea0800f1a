"""The image build: render the Dockerfile from the validated spec, build it with the Docker
SDK, push it to the registry, and register the result as a private catalog entry."""

import logging
import re
import time
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from builder import specs
from builder.image_config import config_image_create
from builder.inspection import ModelFacts
from builder.models import Build, BuildStatus
from builder.recovery import lease
from builder.services import gguf_quantization, largest_fit
from builder.weights import weights_cache_for, weights_files
from deployments.models import GpuType
from marketplace.models import CatalogModel, Managed, ServingProfile
from marketplace.services import profile_refresh_fit

log = logging.getLogger(__name__)
LOG_LIMIT = 64 * 1024


class _Log:
    """Build output, flushed to the row twice a second so the page can follow it."""

    def __init__(self, build_id: int):
        self.build_id, self.text, self.flushed = build_id, "", 0.0

    def write(self, line: str, phase: str | None = None) -> None:
        self.text = (self.text + line)[-LOG_LIMIT:]
        now = time.monotonic()
        if phase or now - self.flushed > 0.5:
            self.flush(phase)

    def flush(self, phase: str | None = None) -> None:
        values = {"log": self.text}
        if phase:
            values["phase"] = phase
        Build.objects.filter(pk=self.build_id).update(**values)
        self.flushed = time.monotonic()


def image_tag(build: Build) -> str:
    rev = re.sub(r"[^a-z0-9_.-]", "-", (build.resolved_revision or "latest").lower())[:40]
    repo = f"{build.organization.slug}/{build.name}"
    registry = settings.REGISTRY_URL
    return f"{registry}/{repo}:{rev}" if registry else f"gantry-builds/{repo}:{rev}"


def _ensure_base_image(client, image: str, out: _Log) -> None:
    from docker.errors import ImageNotFound

    try:
        client.images.get(image)
        return
    except ImageNotFound:
        if not settings.BUILDER_PULL_BASE_IMAGES:
            raise RuntimeError(
                f"base image {image} is not on the Docker host: load it there, or set "
                "BUILDER_PULL_BASE_IMAGES=true to let builds pull it"
            ) from None
    out.write(f"$ pull {image}\n", phase="pulling base image")
    client.images.pull(image)


def build_run(*, build_id: int) -> Build:
    """Render, build, push, register. A failure keeps the log and says why. Holds the
    build's lease while it runs, so a build whose worker died is found and failed."""
    with lease(Build, build_id):
        return _build_run(build_id=build_id)


def _build_run(*, build_id: int) -> Build:
    import docker
    from docker.errors import APIError, DockerException

    build = Build.objects.select_related("organization").get(pk=build_id)
    out = _Log(build.pk)
    Build.objects.filter(pk=build.pk).update(status=BuildStatus.BUILDING, started_at=timezone.now())
    try:
        spec = specs.spec_document(build)
        digest_of_spec = specs.spec_hash(spec)
        dockerfile = specs.render_dockerfile(
            spec, build_id=build.pk, org=build.organization.slug, name=build.name
        )
        tag = image_tag(build)
        out.write(f"$ spec {digest_of_spec[:12]} → {tag}\n{dockerfile}\n", phase="rendering")
        client = docker.DockerClient(base_url=settings.DOCKER_HOST, timeout=600)
        _ensure_base_image(client, spec["base_image"], out)
        out.write("", phase="making image")
        image_id = config_image_create(
            client,
            base=spec["base_image"],
            tag=tag,
            env=specs.image_env(spec),
            labels=specs.image_labels(
                spec, build_id=build.pk, org=build.organization.slug, name=build.name
            ),
        )
        out.write(f"image {image_id} made over {spec['base_image']} (no layer changed)\n")
        digest = ""
        if settings.REGISTRY_URL:
            out.write(f"$ push {tag}\n", phase="pushing to registry")
            repo, _, version = tag.rpartition(":")
            for chunk in client.images.push(repo, tag=version, stream=True, decode=True):
                if "error" in chunk:
                    raise RuntimeError(chunk["error"].strip())
                if chunk.get("aux", {}).get("Digest"):
                    digest = chunk["aux"]["Digest"]
                if chunk.get("status") and "id" not in chunk:
                    out.write(chunk["status"] + "\n")
        if not digest:
            digest = image_id
        out.write(f"image {tag}\ndigest {digest}\n", phase="registering model")
        model = register_catalog_entry(build=Build.objects.get(pk=build.pk), image=tag)
        Build.objects.filter(pk=build.pk).update(
            status=BuildStatus.SUCCEEDED,
            phase="done",
            image=tag,
            digest=digest,
            spec_hash=digest_of_spec,
            catalog_model=model,
            finished_at=timezone.now(),
            log=out.text,
        )
    except (DockerException, APIError, RuntimeError, OSError, ValidationError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        out.write(f"\nBUILD FAILED: {reason}\n")
        Build.objects.filter(pk=build.pk).update(
            status=BuildStatus.FAILED,
            phase="failed",
            error=reason[:2000],
            log=out.text,
            finished_at=timezone.now(),
        )
        log.warning("build %s failed: %s", build.pk, reason)
    return Build.objects.get(pk=build.pk)


@transaction.atomic
def register_catalog_entry(*, build: Build, image: str) -> CatalogModel:
    """The build's result: a private catalog entry with one profile, deployable like any
    marketplace model."""
    facts = build.facts
    cache = weights_cache_for(build)
    files = weights_files(build)
    if build.engine == "llama.cpp":
        model_ref = str(Path(cache.path) / files[0][0]) if files else ""
    else:
        model_ref = build.repo_id or cache.path
    params_b = round((facts.get("parameters") or 0) / 1e9, 2) or 0.01
    model, _ = CatalogModel.objects.update_or_create(
        organization=build.organization,
        slug=build.name,
        defaults={
            "name": build.name,
            "family": "other",
            "hf_repo": build.repo_id,
            "description": f"Built by Gantry from {build.source_label}.",
            "tasks": ["chat"],
            "architecture": facts.get("architecture", ""),
            "parameters_b": params_b,
            "context_length": facts.get("context_length") or 4096,
            "license": facts.get("license") or "unknown",
            "gated": facts.get("gated", False),
            "num_layers": facts.get("num_layers") or 1,
            "hidden_size": facts.get("hidden_size") or 1,
            "num_heads": facts.get("num_heads") or 1,
            "num_kv_heads": facts.get("num_kv_heads") or 1,
            "head_dim": facts.get("head_dim") or 1,
            "managed_by": Managed.OPERATOR,
            "sources": {"all": f"inspected by the builder (build {build.pk})"},
        },
    )
    facts_obj = _facts(facts)
    quant = gguf_quantization(facts_obj) if build.engine == "llama.cpp" else build.quantization
    fitting = [r for r in largest_fit(facts_obj, quant) if r["fits"]]
    # CPU first for llama.cpp builds (it is what they are for); else the first GPU that fits.
    cpu = [r for r in fitting if r["gpu_type"] == "cpu"]
    gpu_code = (cpu or fitting or [{"gpu_type": "cpu"}])[0]["gpu_type"]
    if build.engine != "llama.cpp":
        gpu_code = next((r["gpu_type"] for r in fitting if r["gpu_type"] != "cpu"), gpu_code)
    model.profiles.all().delete()
    profile = ServingProfile.objects.create(
        model=model,
        name=f"build-{build.pk}",
        engine=build.engine,
        gpu_type=GpuType.objects.get(code=gpu_code),
        gpu_count=1,
        quantization=quant,
        max_model_len=build.max_context or 4096,
        concurrent_sequences=1,
        engine_args=specs.option_args(build.engine, build.options),
        model_ref=model_ref,
        image=image,
    )
    profile_refresh_fit(profile)
    return model


def _facts(data: dict) -> ModelFacts:
    facts = ModelFacts()
    for key, value in data.items():
        if hasattr(facts, key):
            setattr(facts, key, value)
    return facts
