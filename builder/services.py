"""The builder: uploads, inspection, build specs, image builds and the weights cache."""

import base64
import hashlib
import json
import logging
import re
import shutil
import time
import uuid
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from builder import specs
from builder.images import config_image_create
from builder.inspection import ModelFacts, inspect_folder, inspect_gguf, inspect_hub
from builder.models import Build, BuildStatus, Upload, WeightsCache
from builder.recovery import lease
from deployments.engines import PROGRESS_FILE
from deployments.models import GpuType, Node
from marketplace.fit import BYTES_PER_PARAM, estimate, format_price, gpu_memory_gib
from marketplace.models import CatalogModel, Managed, ServingProfile

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,58}[a-z0-9])?$")
LOG_LIMIT = 64 * 1024


# --- Secrets --------------------------------------------------------------------------


def _fernet():
    from cryptography.fernet import Fernet

    key = hashlib.sha256(f"gantry.builder:{settings.SECRET_KEY}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def token_encrypt(token: str) -> str:
    return _fernet().encrypt(token.encode()).decode() if token else ""


def token_decrypt(value: str) -> str:
    return _fernet().decrypt(value.encode()).decode() if value else ""


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
                "price_per_hour": format_price(gpu.price_per_hour_cents * count),
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
    name = (name or "").strip().lower()
    if not NAME_RE.match(name):
        raise ValidationError({"name": "Use 1–60 lowercase letters, digits or hyphens."})
    if (
        CatalogModel.objects.filter(organization=organization, slug=name).exists()
        or Build.objects.filter(organization=organization, name=name).exists()
    ):
        raise ValidationError({"name": f"{organization.slug} already has a model {name!r}."})
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
        _progress(folder, "pending", 0, sum(size for _, size in _weights_files(build)))
    transaction.on_commit(lambda: run_build.delay(build.pk))
    transaction.on_commit(lambda: prefetch_weights.delay(cache.pk, build.pk))
    build.refresh_from_db()
    return build


# --- Weights cache ------------------------------------------------------------------------


def _cache_key(build: Build) -> str:
    if build.source_kind == Build.Source.HUGGINGFACE:
        return f"{build.repo_id}@{build.resolved_revision}"
    if build.source_kind == Build.Source.UPLOAD:
        return f"upload:{build.upload_id}"
    return f"path:{build.path}"


def weights_cache_for(build: Build) -> WeightsCache:
    key = _cache_key(build)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "--", key)
    folder = Path(settings.GANTRY_MODEL_DIRS[0]) / "cache" / safe
    cache, _ = WeightsCache.objects.get_or_create(key=key, defaults={"path": str(folder)})
    return cache


def _weights_files(build: Build) -> list[list]:
    files = build.facts.get("files", [])
    if build.facts.get("format") == "gguf":
        ggufs = [f for f in files if f[0].endswith(".gguf")]
        # The hub may offer several quantizations: take the smallest that is there.
        return sorted(ggufs, key=lambda f: f[1])[:1]
    return [f for f in files if f[0].endswith((".safetensors", ".json", ".model", ".txt"))]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_hash(build: Build, name: str, target: Path) -> None:
    """Check a fetched file against the hash its source gives: the upload's SHA-256 for a
    single-file upload, the hub's ETag where it is a SHA-256 (large files)."""
    expected = ""
    if (
        build.source_kind == Build.Source.UPLOAD
        and build.upload
        and build.upload.kind == Upload.Kind.GGUF
    ):
        expected = build.upload.sha256
    elif build.source_kind == Build.Source.HUGGINGFACE:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        meta = get_hf_file_metadata(
            hf_hub_url(
                build.repo_id,
                name,
                revision=build.resolved_revision,
                endpoint=settings.HF_ENDPOINT or None,
            ),
            token=token_decrypt(build.token_encrypted) or None,
        )
        etag = (meta.etag or "").strip('"')
        expected = etag if re.fullmatch(r"[0-9a-f]{64}", etag) else ""
    if expected and _sha256(target) != expected:
        target.unlink(missing_ok=True)
        raise ValidationError({"weights": f"{name}: its SHA-256 does not match the source's."})


def _progress(folder: Path, status: str, done: int, total: int, error: str = "") -> None:
    tmp = folder / f".{PROGRESS_FILE}.tmp"
    tmp.write_text(
        json.dumps({"status": status, "bytes_done": done, "bytes_total": total, "error": error})
    )
    tmp.replace(folder / PROGRESS_FILE)


def weights_prefetch(*, cache_id: int, build_id: int) -> WeightsCache:
    """Fill the cache: download (resumably, checking sizes) or copy the model files.
    Idempotent: files already there at the right size are kept. Holds the cache row's
    lease while it runs, so a fetch whose worker died is found and failed."""
    with lease(WeightsCache, cache_id):
        return _weights_prefetch(cache_id=cache_id, build_id=build_id)


def _weights_prefetch(*, cache_id: int, build_id: int) -> WeightsCache:
    cache = WeightsCache.objects.get(pk=cache_id)
    build = Build.objects.select_related("upload").get(pk=build_id)
    folder = Path(cache.path)
    folder.mkdir(parents=True, exist_ok=True)
    files = _weights_files(build)
    total = sum(size for _, size in files)
    WeightsCache.objects.filter(pk=cache.pk).update(
        status=WeightsCache.Status.FETCHING,
        files=[name for name, _ in files],
        bytes_total=total,
        error="",
    )
    # Deployments learn about the fetch from this file beside the weights (the deployments
    # layer knows nothing of builds): they wait, showing the progress, instead of failing.
    _progress(folder, "fetching", 0, total)
    done = 0
    try:
        for name, size in files:
            target = folder / name
            if target.is_file() and target.stat().st_size == size:
                done += size
                continue
            if build.source_kind == Build.Source.HUGGINGFACE:
                from huggingface_hub import hf_hub_download

                hf_hub_download(
                    build.repo_id,
                    name,
                    revision=build.resolved_revision,
                    token=token_decrypt(build.token_encrypted) or None,
                    endpoint=settings.HF_ENDPOINT or None,
                    local_dir=str(folder),
                )
            else:
                src_root = Path(build.upload.path) if build.upload else Path(build.path)
                src = src_root if src_root.is_file() else src_root / name
                tmp = target.with_name(f".{name}.partial")
                shutil.copyfile(src, tmp)
                tmp.replace(target)
            _verify_hash(build, name, target)
            if size and target.stat().st_size != size:
                raise ValidationError(
                    {"weights": (f"{name}: got {target.stat().st_size} bytes, expected {size}.")}
                )
            done += target.stat().st_size
            WeightsCache.objects.filter(pk=cache.pk).update(bytes_done=done)
            _progress(folder, "fetching", done, total)
    except Exception as exc:
        WeightsCache.objects.filter(pk=cache.pk).update(
            status=WeightsCache.Status.FAILED, error=str(exc)[:2000]
        )
        _progress(folder, "failed", done, total, error=str(exc)[:300])
        log.warning("weights %s failed: %s", cache.key, exc)
        raise
    WeightsCache.objects.filter(pk=cache.pk).update(
        status=WeightsCache.Status.READY, bytes_done=done, bytes_total=max(total, done)
    )
    (folder / PROGRESS_FILE).unlink(missing_ok=True)
    cache.refresh_from_db()
    return cache


# --- The image build ----------------------------------------------------------------------


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
    from marketplace.services import profile_refresh_fit

    facts = build.facts
    cache = weights_cache_for(build)
    files = _weights_files(build)
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
