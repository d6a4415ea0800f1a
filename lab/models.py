"""Benchmarks: one measured run of a deployment (through the gateway or straight to one
replica) under a workload and a load, with the points it measured."""

from django.conf import settings
from django.db import models

from deployments.models import Deployment, Replica
from lab.status import FINISHED_STATUSES, RunStatus
from portal.models import ApiKey, Organization


class Target(models.TextChoices):
    GATEWAY = "gateway", "Through the gateway (what clients see)"
    REPLICA = "replica", "Straight to one replica (what the engine does)"


class Benchmark(models.Model):
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="benchmarks"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="benchmarks")
    target = models.CharField(max_length=16, choices=Target.choices, default=Target.GATEWAY)
    # The replica measured (target=replica), and the key minted for the run (target=gateway):
    # gateway traffic is authenticated and metered like any other.
    replica = models.ForeignKey(
        Replica, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Validated shapes (lab.specs): what was asked, with every default filled in.
    workload = models.JSONField(default=dict)
    load = models.JSONField(default=dict)
    slo = models.JSONField(default=dict)
    # Seeds the prompts and arrivals were drawn from, so a run can be replayed.
    seed = models.PositiveBigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    phase = models.CharField(max_length=200, blank=True)
    progress = models.FloatField(default=0.0, help_text="0 to 1.")
    log = models.TextField(blank=True)
    # One dict per load point (lab.runner.Point.as_dict), in the order measured.
    points = models.JSONField(default=list, blank=True)
    # What the run found beyond its points, e.g. the highest load meeting the SLO.
    summary = models.JSONField(default=dict, blank=True)
    runner = models.CharField(max_length=100, blank=True, help_text="Load generator and version.")
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(progress__gte=0) & models.Q(progress__lte=1),
                name="benchmark_progress_0_to_1",
            )
        ]

    def __str__(self) -> str:
        return f"benchmark {self.pk} of {self.deployment_id}"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES


# Tunings and the leaderboard live in their own module; imported here so Django sees them.
from lab.models_tuning import (  # noqa: E402
    LeaderboardEntry,
    ResultSource,
    TrialState,
    Tuning,
    TuningTrial,
)

__all__ = [
    "FINISHED_STATUSES",
    "Benchmark",
    "LeaderboardEntry",
    "ResultSource",
    "RunStatus",
    "Target",
    "TrialState",
    "Tuning",
    "TuningTrial",
]
