"""The weights cache: hub weights fetched on deploy, one copy per region and repo@revision.

Owns: the WeightsFetch rows (one per region, repo, revision and file; shared by every
organization that deploys that public repo), the ``fetch_weights`` task's work with the
hub's own client, progress, retry and recovery, and what the reconciler needs to know
(have the weights landed? where are they in a replica's region?).

Invariants:
* One row per (region, repo, revision, file), by a database constraint: concurrent
  deploys of the same weights join the same fetch instead of starting another.
* A fetch runs only in the worker that claimed it with one conditional UPDATE; the claimer
  renews ``heartbeat_at`` while it runs. A worker killed mid-way stops renewing, and the
  beat task hands the row to another run (the task is idempotent), which removes the dead
  run's partial file and downloads again: the hub client (2.x) writes each download to a
  file unique to its process and does not continue another process's.
* Tokens are read at the moment of the hub call and never written to a row, a log or an
  error message.
"""

import logging
import os
import re
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from deployments.engines import model_dirs
from deployments.models import Deployment, DeploymentStatus, Region, WeightsFetch
from deployments.services.events import enqueue_reconcile, event
from portal.models import Organization
from portal.secrets import secret_decrypt

log = logging.getLogger("deployments.weights")

HUB_PREFIX = "hub:"
# hub:<owner>/<name>@<revision>[/<file>]
HUB_REF_RE = re.compile(
    r"^hub:(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})"
    r"@(?P<revision>[\w.-]{1,100})(?:/(?P<filename>[\w.-]{1,255}))?$"
)
# What a vLLM/SGLang snapshot needs: weights, configs, tokenizer files.
SNAPSHOT_PATTERNS = ["*.safetensors", "*.json", "*.model", "*.txt", "*.tiktoken", "*.py"]
Status = WeightsFetch.Status


# --- names and places -------------------------------------------------------------------


def hub_ref(repo: str, revision: str, filename: str = "") -> str:
    return f"{HUB_PREFIX}{repo}@{revision}" + (f"/{filename}" if filename else "")


def hub_ref_parse(ref: str) -> tuple[str, str, str] | None:
    found = HUB_REF_RE.match(ref or "")
    if not found or ".." in ref:
        return None
    return found["repo"], found["revision"], found["filename"] or ""


def weights_dir() -> Path:
    root = settings.GANTRY_WEIGHTS_DIR
    return Path(root).resolve() if root else model_dirs()[0] / "hub"


def weights_folder(region_code: str, repo: str, revision: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", revision)
    return weights_dir() / region_code / repo.replace("/", "--") / safe


def weights_target(fetch: WeightsFetch) -> Path:
    """What the engine loads: the file, or the snapshot's folder."""
    folder = Path(fetch.path)
    return folder / fetch.filename if fetch.filename else folder


# --- tokens -----------------------------------------------------------------------------


def hub_token_for(organization: Organization | None) -> str:
    """The organization's own hub token, else the operator's (HF_TOKEN), else ""."""
    own = secret_decrypt(organization.hub_token_encrypted) if organization else ""
    return own or settings.HF_TOKEN


def _hub_errors() -> tuple[type[BaseException], ...]:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError)


def hub_error_text(repo: str, exc: BaseException, token: str = "") -> str:
    """What went wrong, in words, without the token or the hub's full response."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return (
            f"{repo} is gated on the hub and the token used has no access to it: accept its "
            "licence on the hub with the account whose token your organization set."
        )
    if isinstance(exc, RepositoryNotFoundError):
        return f"{repo} is not on the hub (or is private to another account)."
    if isinstance(exc, RevisionNotFoundError):
        return f"{repo} has no such revision on the hub."
    if isinstance(exc, EntryNotFoundError):
        return f"{repo} has no such file on the hub."
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    for secret in {settings.HF_TOKEN, token} - {""}:
        first = first.replace(secret, "***")
    return f"{type(exc).__name__}: {first[:300]}"


def weights_access_check(*, repo: str, revision: str, filename: str, token: str) -> None:
    """Before anything is created: may this token read these weights? Raises a
    ValidationError on ``model`` saying why not."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url

    endpoint = settings.HF_ENDPOINT or None
    try:
        if filename:
            get_hf_file_metadata(
                hf_hub_url(repo, filename, revision=revision, endpoint=endpoint),
                token=token or False,
            )
        else:
            HfApi(endpoint=endpoint).model_info(repo, revision=revision, token=token or False)
    except _hub_errors() as exc:
        raise ValidationError({"model": hub_error_text(repo, exc, token)}) from None


def engine_hub_token(d: Deployment) -> str:
    """The token a vLLM/SGLang replica that downloads its own weights (its model is a hub
    repo id, not a cached path) gets as HF_TOKEN: its organization's, else the operator's."""
    from deployments.artifacts import HF_REPO_RE

    if d.engine == "llama.cpp" or not HF_REPO_RE.match(d.model_ref or ""):
        return ""
    return hub_token_for(d.organization)


# --- ensure, join, retry ----------------------------------------------------------------


def _enqueue_fetch(fetch_id: int) -> None:
    from deployments.tasks import fetch_weights

    transaction.on_commit(lambda: fetch_weights.delay(fetch_id))


def weights_fetch_ensure(
    *,
    region: Region,
    repo: str,
    revision: str,
    filename: str = "",
    token_organization: Organization | None = None,
) -> WeightsFetch:
    """The region's fetch of these weights: the existing one (joined, whatever its state),
    restarted when it failed or its files went missing, or a new one. Queues the task
    after the commit when there is something to fetch."""
    folder = weights_folder(region.code, repo, revision)
    with transaction.atomic():
        fetch, _ = WeightsFetch.objects.get_or_create(
            region=region,
            repo=repo,
            revision=revision,
            filename=filename,
            defaults={"path": str(folder), "token_organization": token_organization},
        )
        fetch = WeightsFetch.objects.select_for_update().get(pk=fetch.pk)
        changes: dict = {}
        if token_organization is not None and fetch.token_organization_id is None:
            changes["token_organization"] = token_organization
        gone = fetch.status == Status.READY and not weights_target(fetch).exists()
        if fetch.status == Status.FAILED or gone:
            changes.update(status=Status.PENDING, error="", attempts=0, bytes_done=0)
        if changes:
            for k, v in changes.items():
                setattr(fetch, k, v)
            fetch.save(update_fields=[*changes, "updated_at"])
        if fetch.status == Status.PENDING:
            _enqueue_fetch(fetch.pk)
    return fetch


def deployment_weights_attach(
    *, deployment: Deployment, weights: tuple[str, str, str]
) -> Deployment:
    """Make sure the weights are (or are being) fetched into each of the deployment's
    regions, and tie the deployment to them. Call inside the transaction that creates it."""
    repo, revision, filename = weights
    org = deployment.organization
    token_org = org if secret_decrypt(org.hub_token_encrypted) else None
    regions = {r.code: r for r in Region.objects.filter(code__in=deployment.regions)}
    fetches = [
        weights_fetch_ensure(
            region=regions[code],
            repo=repo,
            revision=revision,
            filename=filename,
            token_organization=token_org,
        )
        for code in deployment.regions
    ]
    first = fetches[0]
    deployment.weights = first
    what = f"{repo}@{revision}" + (f" ({filename})" if filename else "")
    if all(f.status == Status.READY for f in fetches):
        Deployment.objects.filter(pk=deployment.pk).update(weights=first)
        event(deployment, "weights", f"weights {what} already in the cache")
        return deployment
    # Fetching from the start, not from the reconciler's first pass: a busy worker may run
    # the fetch before that pass.
    deployment.status, deployment.status_reason = DeploymentStatus.FETCHING, first.progress_text
    Deployment.objects.filter(pk=deployment.pk).update(
        weights=first, status=deployment.status, status_reason=deployment.status_reason
    )
    event(deployment, "weights", f"fetching weights {what} into {', '.join(regions)}")
    return deployment


def deployment_weights_rows(d: Deployment) -> list[WeightsFetch]:
    """The deployment's weights in each of its regions (its first region's row first)."""
    w = d.weights
    if w is None:
        return []
    rows = WeightsFetch.objects.filter(
        repo=w.repo, revision=w.revision, filename=w.filename, region__code__in=d.regions
    ).select_related("region")
    return sorted(rows, key=lambda r: (r.pk != w.pk, r.region.code))


@transaction.atomic
def deployment_weights_retry(*, deployment: Deployment) -> Deployment:
    """Fetch a deployment's weights again after a failure (every region's copy)."""
    d = Deployment.objects.select_for_update().get(pk=deployment.pk)
    rows = deployment_weights_rows(d)
    if not rows or all(r.status != Status.FAILED for r in rows):
        raise ValidationError({"weights": "Nothing to retry: the weights are not failing."})
    for r in rows:
        weights_fetch_ensure(region=r.region, repo=r.repo, revision=r.revision, filename=r.filename)
    Deployment.objects.filter(pk=d.pk).update(
        status=DeploymentStatus.FETCHING, status_reason="fetching weights (retrying)"
    )
    event(d, "weights_retry", "fetching the weights again")
    enqueue_reconcile(d.pk)
    d.refresh_from_db()
    return d


# --- what the reconciler asks -----------------------------------------------------------


def weights_wait(d: Deployment) -> tuple[str, str]:
    """("", "") when the deployment's weights are in every one of its regions; else
    ("fetching", progress) or ("failed", why)."""
    rows = deployment_weights_rows(d)
    if not rows:
        return "", ""
    failed = next((r for r in rows if r.status == Status.FAILED), None)
    if failed is not None:
        return "failed", f"{failed.progress_text} — retry the fetch once that is fixed."
    waiting = next((r for r in rows if r.status != Status.READY), None)
    if waiting is not None:
        return "fetching", waiting.progress_text
    return "", ""


def weights_model_path(d: Deployment, region_id: int) -> str | None:
    """Where a replica in ``region_id`` loads the deployment's hub weights from."""
    for r in deployment_weights_rows(d):
        if r.region_id == region_id:
            return str(weights_target(r))
    return None


# --- the fetch itself (the task) --------------------------------------------------------


def _bytes_on_disk(folder: Path, filename: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            # The hub client keeps .metadata and .lock files beside its downloads, and names
            # a partial download by a hash, not the file's name.
            if name.endswith((".metadata", ".lock")):
                continue
            if ".cache" in Path(root).relative_to(folder).parts and not name.endswith(
                ".incomplete"
            ):
                continue  # the client's own bookkeeping (tree listings), not weights
            if filename and not (name == filename or name.endswith(".incomplete")):
                continue
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _claim(fetch_id: int, now: datetime) -> bool:
    stale = now - timedelta(seconds=settings.WEIGHTS_FETCH_LEASE_S)
    free = Q(status=Status.PENDING) | Q(status=Status.FETCHING) & (
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale)
    )
    return bool(
        WeightsFetch.objects.filter(free, pk=fetch_id).update(
            status=Status.FETCHING, heartbeat_at=now, attempts=F("attempts") + 1, error=""
        )
    )


class _Progress:
    """Counts the bytes on disk and renews the lease from a thread of its own, so a long
    quiet download still shows it is alive."""

    def __init__(self, fetch: WeightsFetch):
        self.fetch = fetch
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"weights-{fetch.pk}", daemon=True)

    def record(self) -> None:
        f = self.fetch
        done = _bytes_on_disk(Path(f.path), f.filename)
        total = WeightsFetch.objects.filter(pk=f.pk).values_list("bytes_total", flat=True)[0]
        WeightsFetch.objects.filter(pk=f.pk, status=Status.FETCHING).update(
            bytes_done=min(done, total) if total else done, heartbeat_at=timezone.now()
        )

    def run(self) -> None:
        try:
            while not self.stop.wait(0.5):
                try:
                    self.record()
                except Exception:  # a database hiccup must not kill the fetch it watches
                    log.warning("could not record the progress of weights %s", self.fetch.pk)
        finally:
            connection.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _remove_orphans(folder: Path) -> None:
    """Delete partial files a killed run left behind. The hub client downloads into a
    temporary file unique to its process and never resumes another process's, so an
    orphan only takes space and would count as progress. A file a live run writes was
    touched within the lease; these were not."""
    partials = folder / ".cache" / "huggingface" / "download"
    if not partials.is_dir():
        return
    cutoff = time.time() - settings.WEIGHTS_FETCH_LEASE_S
    for path in partials.glob("*.incomplete"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            continue


def _download(fetch: WeightsFetch, token: str) -> None:
    from huggingface_hub import (
        HfApi,
        get_hf_file_metadata,
        hf_hub_download,
        hf_hub_url,
        snapshot_download,
    )

    endpoint = settings.HF_ENDPOINT or None
    folder = Path(fetch.path)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_orphans(folder)
    if fetch.filename:
        meta = get_hf_file_metadata(
            hf_hub_url(fetch.repo, fetch.filename, revision=fetch.revision, endpoint=endpoint),
            token=token or False,
        )
        WeightsFetch.objects.filter(pk=fetch.pk).update(
            bytes_total=meta.size or 0, commit=meta.commit_hash or "", files=[fetch.filename]
        )
        with _Progress(fetch):
            hf_hub_download(
                fetch.repo,
                fetch.filename,
                revision=meta.commit_hash or fetch.revision,
                endpoint=endpoint,
                token=token or False,
                local_dir=str(folder),
            )
        return
    from fnmatch import fnmatch

    info = HfApi(endpoint=endpoint).model_info(
        fetch.repo, revision=fetch.revision, files_metadata=True, token=token or False
    )
    wanted = [
        s for s in info.siblings or [] if any(fnmatch(s.rfilename, p) for p in SNAPSHOT_PATTERNS)
    ]
    WeightsFetch.objects.filter(pk=fetch.pk).update(
        bytes_total=sum(s.size or 0 for s in wanted),
        commit=info.sha or "",
        files=[s.rfilename for s in wanted],
    )
    with _Progress(fetch):
        snapshot_download(
            fetch.repo,
            revision=info.sha or fetch.revision,
            endpoint=endpoint,
            token=token or False,
            local_dir=str(folder),
            allow_patterns=SNAPSHOT_PATTERNS,
        )


def weights_fetch_run(*, fetch_id: int) -> WeightsFetch | None:
    """Fetch one region's copy. Idempotent: a fetch that is ready, failed or being run by a
    live worker is left alone; files already complete are kept."""
    if not _claim(fetch_id, timezone.now()):
        return None
    fetch = WeightsFetch.objects.select_related("token_organization").get(pk=fetch_id)
    token = hub_token_for(fetch.token_organization)
    try:
        _download(fetch, token)
    except Exception as exc:  # any failure is recorded on the row, in words, then shown
        why = hub_error_text(fetch.repo, exc, token)
        WeightsFetch.objects.filter(pk=fetch.pk).update(status=Status.FAILED, error=why)
        log.warning("weights %s failed: %s", fetch, why)
        _wake_deployments(fetch)
        fetch.refresh_from_db()
        return fetch
    target = weights_target(fetch)
    size = _bytes_on_disk(Path(fetch.path), fetch.filename)
    WeightsFetch.objects.filter(pk=fetch.pk).update(status=Status.READY, bytes_done=size)
    WeightsFetch.objects.filter(pk=fetch.pk, bytes_total__lt=size).update(bytes_total=size)
    log.info("weights %s ready at %s", fetch, target)
    _wake_deployments(fetch)
    fetch.refresh_from_db()
    return fetch


def _wake_deployments(fetch: WeightsFetch) -> None:
    """Reconcile the deployments waiting for these weights now rather than at their next
    poll."""
    same = Deployment.objects.filter(
        deleted_at__isnull=True,
        weights__repo=fetch.repo,
        weights__revision=fetch.revision,
        weights__filename=fetch.filename,
        status__in=[DeploymentStatus.PENDING, DeploymentStatus.FETCHING],
    )
    for pk in same.values_list("pk", flat=True):
        enqueue_reconcile(pk)


def weights_fetches_recover(*, now: datetime | None = None) -> dict[str, int]:
    """Hand every fetch whose worker stopped renewing its lease (or that was never picked
    up) to a new run; fail it after WEIGHTS_FETCH_ATTEMPTS runs."""
    from deployments.tasks import fetch_weights

    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.WEIGHTS_FETCH_LEASE_S)
    lost = Q(status=Status.FETCHING) & (
        Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True, updated_at__lt=stale)
    ) | Q(status=Status.PENDING, updated_at__lt=stale)
    resumed = failed = 0
    for fetch in WeightsFetch.objects.filter(lost):
        if fetch.attempts >= settings.WEIGHTS_FETCH_ATTEMPTS:
            failed += WeightsFetch.objects.filter(lost, pk=fetch.pk).update(
                status=Status.FAILED,
                error=f"the workers fetching these weights stopped {fetch.attempts} times",
            )
            _wake_deployments(fetch)
            continue
        fetch_weights.delay(fetch.pk)
        resumed += 1
    return {"resumed": resumed, "failed": failed}
