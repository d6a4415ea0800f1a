"""Tunings (a search over an engine's flags, one temporary deployment per trial) and the
leaderboard of measured results. Imported by ``lab.models``."""

from django.conf import settings
from django.db import models

from deployments.models import Deployment
from lab.status import FINISHED_STATUSES, RunStatus
from marketplace.models import CatalogModel, ServingProfile
from portal.models import Organization


class Tuning(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="tunings")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    # What is tuned: a catalog model (slug) or one of the organization's builds; either way
    # the model_ref a deployment runs, its family (for warm starts) and its engine.
    catalog_model = models.ForeignKey(
        CatalogModel, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    build = models.ForeignKey(
        "builder.Build", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    model_label = models.CharField(max_length=150)
    model_ref = models.CharField(max_length=255)
    family = models.CharField(max_length=32, blank=True)
    engine = models.CharField(max_length=16)
    engine_version = models.CharField(max_length=32)
    image = models.CharField(max_length=255, blank=True)
    gpu_types = models.JSONField(default=list, help_text="GPU type codes considered.")
    regions = models.JSONField(default=list, help_text="Regions trials may be placed in.")
    objective = models.CharField(max_length=40)
    slo = models.JSONField(default=dict)
    budget = models.JSONField(default=dict, help_text='{"trials": n} or {"gpu_hours": h}.')
    workload = models.JSONField(default=dict)
    load = models.JSONField(default=dict)
    # Each flag's candidate values (lab.search.search_space), fixed when the tuning starts.
    space = models.JSONField(default=dict)
    base_args = models.JSONField(default=list, blank=True, help_text="Flags every trial sets.")
    warm_start = models.JSONField(default=list, blank=True, help_text="Configs tried first.")
    seed = models.PositiveBigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    phase = models.CharField(max_length=200, blank=True)
    progress = models.FloatField(default=0.0)
    log = models.TextField(blank=True)
    stop_reason = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    gpu_seconds = models.FloatField(default=0.0)
    cancel_requested = models.BooleanField(default=False)
    best_trial = models.ForeignKey(
        "lab.TuningTrial", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    deployed = models.ForeignKey(
        Deployment, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    published_profile = models.ForeignKey(
        ServingProfile, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"tuning {self.pk} of {self.model_label}"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class TrialState(models.TextChoices):
    RUNNING = "running", "Running"
    COMPLETE = "complete", "Complete"
    PRUNED = "pruned", "Pruned"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class TuningTrial(models.Model):
    tuning = models.ForeignKey(Tuning, on_delete=models.CASCADE, related_name="trials")
    number = models.PositiveIntegerField()
    gpu_type = models.CharField(max_length=32)
    params = models.JSONField(default=dict)
    launch = models.JSONField(default=list, help_text="The engine flags, as the engine takes them.")
    state = models.CharField(max_length=16, choices=TrialState.choices, default=TrialState.RUNNING)
    value = models.FloatField(null=True, blank=True)
    intermediate = models.JSONField(default=dict, blank=True)
    points = models.JSONField(default=list, blank=True)
    note = models.CharField(max_length=300, blank=True)
    warm = models.BooleanField(default=False, help_text="Queued from an earlier tuning.")
    deployment = models.ForeignKey(
        Deployment, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    benchmark = models.ForeignKey(
        "lab.Benchmark", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    gpus = models.PositiveSmallIntegerField(default=1)
    gpu_seconds = models.FloatField(default=0.0)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["tuning", "number"]
        constraints = [
            models.UniqueConstraint(fields=["tuning", "number"], name="trial_number_unique")
        ]

    def __str__(self) -> str:
        return f"trial {self.number} of tuning {self.tuning_id}"


class ResultSource(models.TextChoices):
    TUNING = "tuning", "Measured here"
    IMPORT = "import", "Imported bundle"


class LeaderboardEntry(models.Model):
    """One measured configuration: the best of a tuning, or a row of an imported bundle.
    ``organization`` null: shared with every organization (published, or imported by
    staff)."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    source = models.CharField(max_length=16, choices=ResultSource.choices)
    tuning = models.ForeignKey(
        Tuning, on_delete=models.CASCADE, null=True, blank=True, related_name="entries"
    )
    model = models.CharField(max_length=100)
    family = models.CharField(max_length=100)
    engine = models.CharField(max_length=16)
    engine_version = models.CharField(max_length=32)
    gpu_type = models.CharField(max_length=100)
    gpu_count = models.PositiveSmallIntegerField(default=1)
    objective = models.CharField(max_length=40)
    launch = models.JSONField(default=list)
    output_tokens_per_s = models.FloatField()
    ttft_p95_ms = models.FloatField(null=True, blank=True)
    itl_p95_ms = models.FloatField(null=True, blank=True)
    cost_per_1m_output_tokens = models.FloatField(null=True, blank=True)
    slo = models.JSONField(default=dict)
    workload = models.JSONField(default=dict)
    provenance = models.JSONField(default=dict)
    measured_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "gpu_type", "engine", "-output_tokens_per_s"]
        indexes = [models.Index(fields=["model", "gpu_type", "engine"])]

    def __str__(self) -> str:
        return f"{self.model} on {self.gpu_type} ({self.engine})"
