"""The weights cache: one folder per source (repo@revision, upload, path) that replicas
load from, filled by a Celery task beside the image build. Weights are never baked into
images."""

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError

from builder.hub_tokens import token_decrypt
from builder.models import Build, Upload, WeightsCache
from builder.recovery import lease
from deployments.engines import PROGRESS_FILE

log = logging.getLogger(__name__)


def cache_key(build: Build) -> str:
    if build.source_kind == Build.Source.HUGGINGFACE:
        return f"{build.repo_id}@{build.resolved_revision}"
    if build.source_kind == Build.Source.UPLOAD:
        return f"upload:{build.upload_id}"
    return f"path:{build.path}"


def weights_cache_for(build: Build) -> WeightsCache:
    key = cache_key(build)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "--", key)
    folder = Path(settings.GANTRY_MODEL_DIRS[0]) / "cache" / safe
    cache, _ = WeightsCache.objects.get_or_create(key=key, defaults={"path": str(folder)})
    return cache


def weights_files(build: Build) -> list[list]:
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


def progress_write(folder: Path, status: str, done: int, total: int, error: str = "") -> None:
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
    files = weights_files(build)
    total = sum(size for _, size in files)
    WeightsCache.objects.filter(pk=cache.pk).update(
        status=WeightsCache.Status.FETCHING,
        files=[name for name, _ in files],
        bytes_total=total,
        error="",
    )
    # Deployments learn about the fetch from this file beside the weights (the deployments
    # layer knows nothing of builds): they wait, showing the progress, instead of failing.
    progress_write(folder, "fetching", 0, total)
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
            progress_write(folder, "fetching", done, total)
    except Exception as exc:
        WeightsCache.objects.filter(pk=cache.pk).update(
            status=WeightsCache.Status.FAILED, error=str(exc)[:2000]
        )
        progress_write(folder, "failed", done, total, error=str(exc)[:300])
        log.warning("weights %s failed: %s", cache.key, exc)
        raise
    WeightsCache.objects.filter(pk=cache.pk).update(
        status=WeightsCache.Status.READY, bytes_done=done, bytes_total=max(total, done)
    )
    (folder / PROGRESS_FILE).unlink(missing_ok=True)
    cache.refresh_from_db()
    return cache
