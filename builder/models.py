"""Custom models: uploads, builds (source → inspection → spec → image) and the weights
cache that replicas read from."""

from django.conf import settings
from django.db import models

from portal.models import Organization


class Upload(models.Model):
    class Kind(models.TextChoices):
        GGUF = "gguf", "GGUF file"
        FOLDER = "folder", "Model folder"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    kind = models.CharField(max_length=8, choices=Kind.choices)
    name = models.CharField(max_length=200)
    path = models.CharField(max_length=500, help_text="Where the upload is kept.")
    size_bytes = models.PositiveBigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


class BuildStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    INSPECTED = "inspected", "Inspected"
    QUEUED = "queued", "Queued"
    BUILDING = "building", "Building"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class Build(models.Model):
    class Source(models.TextChoices):
        HUGGINGFACE = "huggingface", "Hugging Face repo"
        UPLOAD = "upload", "Upload"
        PATH = "path", "Shared storage path"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="builds")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    name = models.SlugField(max_length=60, help_text="The private catalog entry's slug.")
    source_kind = models.CharField(max_length=16, choices=Source.choices)
    repo_id = models.CharField(max_length=200, blank=True)
    revision = models.CharField(max_length=100, blank=True)
    resolved_revision = models.CharField(max_length=64, blank=True)
    # The hub token, encrypted with a key derived from SECRET_KEY. Never rendered.
    token_encrypted = models.TextField(blank=True)
    upload = models.ForeignKey(
        Upload, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    path = models.CharField(max_length=500, blank=True)
    facts = models.JSONField(default=dict, blank=True)
    engine = models.CharField(max_length=16, blank=True)
    engine_version = models.CharField(max_length=32, blank=True)
    quantization = models.CharField(max_length=16, blank=True)
    max_context = models.PositiveIntegerField(null=True, blank=True)
    options = models.JSONField(default=dict, blank=True)
    env = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=BuildStatus.choices, default=BuildStatus.DRAFT)
    phase = models.CharField(max_length=100, blank=True)
    log = models.TextField(blank=True)
    image = models.CharField(max_length=300, blank=True)
    digest = models.CharField(max_length=100, blank=True)
    spec_hash = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    catalog_model = models.ForeignKey(
        "marketplace.CatalogModel",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The lease of the worker running the build, renewed while it runs (builder/recovery.py):
    # a build whose lease ran out has lost its worker and is failed with that reason.
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.organization.slug}/{self.name}"

    @property
    def is_running(self) -> bool:
        return self.status in {BuildStatus.QUEUED, BuildStatus.BUILDING}

    @property
    def source_label(self) -> str:
        if self.source_kind == self.Source.HUGGINGFACE:
            return f"{self.repo_id}@{self.revision or 'main'}"
        if self.source_kind == self.Source.UPLOAD and self.upload:
            return f"upload: {self.upload.name}"
        return self.path


class WeightsCache(models.Model):
    """Model files kept on shared storage, keyed by where they came from (repo@revision or
    upload:<id>). Replicas read them; images never contain them."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        FETCHING = "fetching", "Fetching"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    key = models.CharField(max_length=300, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    path = models.CharField(max_length=500, blank=True)
    files = models.JSONField(default=list, blank=True)
    bytes_total = models.PositiveBigIntegerField(default=0)
    bytes_done = models.PositiveBigIntegerField(default=0)
    error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)  # as Build.heartbeat_at

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"

    @property
    def percent(self) -> int:
        return int(100 * self.bytes_done / self.bytes_total) if self.bytes_total else 0
