"""The builder's steps before the image build: uploads, source inspection, the build spec,
and queueing the build. The build itself is in `images`, the weights cache in `weights`,
and the composite operations both doors call in `submit`."""

import hashlib
import logging
import re
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from billing.selectors import gpu_hour_cents
from builder import specs
from builder.hub_tokens import token_encrypt
from builder.inspection import ModelFacts, inspect_folder, inspect_gguf, inspect_hub
from builder.models import Build, BuildStatus, Upload, WeightsCache
from builder.weights import progress_write, weights_cache_for, weights_files
from deployments.models import GpuType, Node
from marketplace.fit import BYTES_PER_PARAM, estimate, format_price, gpu_memory_gib
from marketplace.models import CatalogModel

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,58}[a-z0-9])?$")


# --- Uploads --------------------------------------------------------------------------


def upload_create(*, organization, user, files) -> Upload:
    """Keep an uploaded GGUF file, or a model folder (config.json + safetensors + tokenizer
    files). Anything that is not a model is refused and nothing is kept."""
    files = list(files)
    if not files:
        raise ValidationError({"upload": "Choose a .gguf file or the files of a model folder."})
    folder = Path(settings.MEDIA_ROOT) / "uploads" / str(organization.pk) / uuid.uuid4().hex
    folder.mkdir(parents=True)
    try:
        digest, size = hashlib.sha256(), 0
        for f in files:
            name = Path(f.name).name
            if not re.fullmatch(r"[\w.+-]{1,200}", name) or name.startswith("."):
                raise ValidationError({"upload": f"{name!r} is not an allowed file name."})
            with open(folder / name, "wb") as out:
                for chunk in f.chunks():
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        names = [Path(f.name).name for f in files]
        if len(names) == 1 and names[0].endswith(".gguf"):
            kind = Upload.Kind.GGUF
            inspect_gguf(folder / names[0])
            label = names[0]
        else:
            kind = Upload.Kind.FOLDER
            inspect_folder(folder)
            label = f"{len(names)} files"
    except ValidationError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Upload.objects.create(
        organization=organization,
        created_by=user,
        kind=kind,
        name=label,
        path=str(folder),
        size_bytes=size,
        sha256=digest.hexdigest(),
    )


# --- Builds: source and inspection --------------------------------------------------------


def _allowed_path(path: str) -> Path:
    p = Path(path or "")
    if not p.is_absolute():
        raise ValidationError({"path": "Give an absolute path on shared storage."})
    resolved = p.resolve()
    roots = [Path(r).resolve() for r in settings.BUILDER_ALLOWED_PATHS]
    if not any(resolved.is_relative_to(r) for r in roots):
        raise ValidationError(
            {
                "path": (
                    "That path is not on storage staff allowed"
                    + (f" ({', '.join(map(str, roots))})." if roots else " (none is allowed yet).")
                )
            }
        )
    if not resolved.exists():
        raise ValidationError({"path": f"Nothing at {resolved}."})
    return resolved


def _inspect_source(*, kind, repo_id, revision, token, upload, path) -> tuple[ModelFacts, str]:
    if kind == Build.Source.HUGGINGFACE:
        facts = inspect_hub(repo_id=repo_id, revision=revision, token=token)
        return facts, facts.revision
    if kind == Build.Source.UPLOAD:
        if upload is None:
            raise ValidationError({"upload": "Upload a model first."})
        src = Path(upload.path)
        if upload.kind == Upload.Kind.GGUF:
            return inspect_gguf(next(src.glob("*.gguf"))), f"upload-{upload.pk}"
        return inspect_folder(src), f"upload-{upload.pk}"
    if kind == Build.Source.PATH:
        p = _allowed_path(path)
        facts = inspect_gguf(p) if p.is_file() else inspect_folder(p)
        return facts, "path"
    raise ValidationError({"source": "Choose huggingface, upload or path."})


def gguf_quantization(facts: ModelFacts) -> str:
    """The quantization label nearest to a GGUF file's bytes per parameter."""
    per_param = facts.total_bytes / facts.parameters if facts.parameters else 0.6
    if per_param >= 3.5:
        return "f32"
    if per_param >= 1.5:
        return "bf16"
    if per_param >= 0.9:
        return "q8_0"
    return "q4_k_m"


def largest_fit(facts: ModelFacts, quantization: str = "") -> list[dict]:
    """The fit of this model on each GPU type, at the largest node of that type."""
    largest: dict[str, int] = {}
    for node in Node.objects.filter(pool__enabled=True).select_related("pool__gpu_type"):
        code = node.pool.gpu_type.code
        largest[code] = max(largest.get(code, 0), node.gpus_total)
    if facts.format == "gguf":
        quant = gguf_quantization(facts)
    else:
        quant = quantization if quantization in BYTES_PER_PARAM else "bf16"
    params_b = (facts.parameters or facts.total_bytes / BYTES_PER_PARAM[quant]) / 1e9
    rows = []
    for gpu in GpuType.objects.all():
        count = largest.get(gpu.code, 0)
        if not count:
            continue
        fit = estimate(
            parameters_b=params_b,
            quantization=quant,
            attention="gqa",
            num_layers=facts.num_layers or 1,
            num_kv_heads=facts.num_kv_heads or 1,
            head_dim=facts.head_dim or 1,
            max_model_len=min(facts.context_length or 4096, 32768),
            concurrent_sequences=1,
            engine="llama.cpp" if facts.format == "gguf" else "vllm",
            gpu_memory_gib=gpu_memory_gib(gpu),
            gpu_count=count,
            utilization=0.9,
            gpu_label="CPU slot" if gpu.is_cpu else gpu.name,
        )
        rows.append(
            {
                "gpu_type": gpu.code,
                "gpu_name": gpu.name,
                "gpu_count": count,
                "price_per_hour": format_price(gpu_hour_cents(gpu.code) * count),
                "fits": fit.fits,
                "required_gib": fit.required_gib,
                "available_gib": fit.available_gib,
                "sentence": fit.sentence,
            }
        )
    return rows


def source_inspect(
    *,
    organization,
    source_kind: str,
    repo_id: str = "",
    revision: str = "",
    token: str = "",
    upload_id=None,
    path: str = "",
) -> tuple:
    """Step 2, with no write: read the source and refuse what cannot be served. Calls the
    hub, so it runs outside any transaction. Returns (facts, resolved revision, upload)."""
    upload = None
    if source_kind == Build.Source.UPLOAD:
        upload = Upload.objects.filter(organization=organization, pk=upload_id).first()
        if upload is None:
            raise ValidationError({"upload": "No such upload in this organization."})
    facts, resolved = _inspect_source(
        kind=source_kind, repo_id=repo_id, revision=revision, token=token, upload=upload, path=path
    )
    engines = specs.engines_for(facts.architecture)
    if not engines:
        raise ValidationError(
            {
                "source": (
                    f"Architecture {facts.architecture or 'unknown'} is not served by vLLM, "
                    "SGLang or llama.cpp here."
                )
            }
        )
    fits = largest_fit(facts)
    if fits and not any(r["fits"] for r in fits):
        need = min(r["required_gib"] for r in fits)
        raise ValidationError(
            {
                "source": (
                    f"Too large for every pool: needs at least {need:,.1f} GiB; the largest nodes "
                    "have "
                    + ", ".join(
                        f"{r['gpu_count']}×{r['gpu_name']} ({r['available_gib']:,.1f} GiB usable)"
                        for r in fits
                    )
                    + "."
                )
            }
        )
    return facts, resolved, upload


def build_name_check(*, organization, name: str) -> str:
    """The normalised name, or a field error: checked before inspecting, which calls the hub."""
    name = (name or "").strip().lower()
    if not NAME_RE.match(name):
        raise ValidationError({"name": "Use 1–60 lowercase letters, digits or hyphens."})
    if (
        CatalogModel.objects.filter(organization=organization, slug=name).exists()
        or Build.objects.filter(organization=organization, name=name).exists()
    ):
        raise ValidationError({"name": f"{organization.slug} already has a model {name!r}."})
    return name


def build_create(
    *,
    organization,
    user,
    name: str,
    source_kind: str,
    repo_id: str = "",
    revision: str = "",
    token: str = "",
    upload_id=None,
    path: str = "",
    inspected: tuple | None = None,
) -> Build:
    """Steps 1 and 2: take the source, inspect it (unless already done), keep the draft."""
    name = build_name_check(organization=organization, name=name)
    facts, resolved, upload = inspected or source_inspect(
        organization=organization,
        source_kind=source_kind,
        repo_id=repo_id,
        revision=revision,
        token=token,
        upload_id=upload_id,
        path=path,
    )
    engines = specs.engines_for(facts.architecture)
    build = Build.objects.create(
        organization=organization,
        created_by=user,
        name=name,
        source_kind=source_kind,
        repo_id=repo_id if source_kind == Build.Source.HUGGINGFACE else "",
        revision=revision or ("main" if source_kind == Build.Source.HUGGINGFACE else ""),
        resolved_revision=resolved,
        token_encrypted=token_encrypt(token),
        upload=upload,
        path=path if source_kind == Build.Source.PATH else "",
        facts=facts.as_dict(),
        engine=engines[0] if facts.format != "gguf" else "llama.cpp",
        status=BuildStatus.INSPECTED,
        phase="inspected",
    )
    build.engine_version = specs.ENGINE_VERSIONS[build.engine][0]
    build.quantization = specs.QUANTIZATIONS[build.engine][0]
    build.max_context = min(facts.context_length or 4096, 32768)
    build.save(update_fields=["engine_version", "quantization", "max_context"])
    return build


@transaction.atomic
def build_configure(
    *,
    build: Build,
    engine: str,
    engine_version: str = "",
    quantization: str = "",
    max_context=None,
    options=None,
    env=None,
) -> Build:
    """Step 3: a validated spec. Never free-form Dockerfile text."""
    build = Build.objects.select_for_update().get(pk=build.pk)
    if build.is_running:
        raise ValidationError({"status": "A build is running; wait for it to finish."})
    facts = build.facts
    supported = specs.engines_for(facts.get("architecture", ""))
    if engine not in specs.ENGINE_ARCHITECTURES:
        raise ValidationError({"engine": "Choose vllm, sglang or llama.cpp."})
    if engine not in supported:
        raise ValidationError(
            {
                "engine": (
                    f"{engine} does not serve {facts.get('architecture')}; choose "
                    + (", ".join(supported) or "another model")
                    + "."
                )
            }
        )
    version = engine_version or specs.ENGINE_VERSIONS[engine][0]
    if version not in specs.ENGINE_VERSIONS[engine]:
        raise ValidationError(
            {"engine_version": (f"Choose one of: {', '.join(specs.ENGINE_VERSIONS[engine])}.")}
        )
    quant = quantization or specs.QUANTIZATIONS[engine][0]
    if quant not in specs.QUANTIZATIONS[engine]:
        raise ValidationError(
            {"quantization": (f"{engine} builds take: {', '.join(specs.QUANTIZATIONS[engine])}.")}
        )
    limit = facts.get("context_length") or 1_000_000
    try:
        context = int(max_context or min(limit, 32768))
    except (TypeError, ValueError):
        raise ValidationError({"max_context": "Give a whole number of tokens."}) from None
    if not 128 <= context <= limit:
        raise ValidationError({"max_context": f"Choose from 128 to {limit:,} tokens."})
    build.engine, build.engine_version, build.quantization = engine, version, quant
    build.max_context = context
    build.options = specs.validate_options(engine, options or {})
    build.env = specs.validate_env(env or {})
    build.save()
    return build


@transaction.atomic
def build_start(*, build: Build) -> Build:
    """Step 4: queue the image build and the weights prefetch."""
    from builder.tasks import prefetch_weights, run_build

    build = Build.objects.select_for_update().get(pk=build.pk)
    if build.is_running:
        raise ValidationError({"status": "This build is already running."})
    if not build.engine:
        raise ValidationError({"engine": "Configure the build first."})
    Build.objects.filter(pk=build.pk).update(
        status=BuildStatus.QUEUED,
        phase="queued",
        error="",
        log="",
        started_at=None,
        finished_at=None,
    )
    cache = weights_cache_for(build)
    folder = Path(cache.path)
    folder.mkdir(parents=True, exist_ok=True)
    if cache.status != WeightsCache.Status.READY:
        progress_write(folder, "pending", 0, sum(size for _, size in weights_files(build)))
    transaction.on_commit(lambda: run_build.delay(build.pk))
    transaction.on_commit(lambda: prefetch_weights.delay(cache.pk, build.pk))
    build.refresh_from_db()
    return build
