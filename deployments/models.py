"""Regions, GPU pools and nodes (inventory); deployments (desired) and replicas (actual)."""

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from portal.models import Organization, slug_validator


class GpuType(models.Model):
    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=64)
    memory_gb = models.PositiveIntegerField(help_text="Memory of one GPU; 0 for CPU slots.")
    # No price here: a GPU-hour's one price is billing's rate table (billing.selectors).

    class Meta:
        ordering = ["-memory_gb", "code"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_cpu(self) -> bool:
        return self.code == "cpu"


class Region(models.Model):
    code = models.SlugField(max_length=32, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=100)
    location = models.CharField(max_length=100, blank=True, help_text="City or site.")
    latitude = models.FloatField(default=0.0)
    longitude = models.FloatField(default=0.0)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Driver(models.TextChoices):
    LOCAL = "local", "Local processes"
    DOCKER = "docker", "Docker hosts"
    KUBERNETES = "kubernetes", "Kubernetes cluster"


class GpuPool(models.Model):
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="pools")
    name = models.SlugField(max_length=40)
    driver = models.CharField(max_length=16, choices=Driver.choices)
    gpu_type = models.ForeignKey(GpuType, on_delete=models.PROTECT, related_name="pools")
    # Driver settings (docker_url, namespace, kubeconfig context, port range…). May hold
    # credentials: never rendered outside the admin's own form.
    config = models.JSONField(default=dict, blank=True)
    # Images are the operators' choice: a tenant's deployment runs one of these (or one
    # of its own organization's builds, where runs_org_builds allows).
    allowed_images = models.JSONField(
        default=list,
        blank=True,
        help_text='Images this pool may run, e.g. ["vllm/vllm-openai:v0.11.0"]; '
        "empty: the engine images (GANTRY_ENGINE_IMAGES).",
    )
    runs_org_builds = models.BooleanField(
        default=True, help_text="Also run images an organization built with the builder."
    )
    engine_fetches_weights = models.BooleanField(
        default=False,
        help_text="vLLM/SGLang replicas download hub weights themselves (with the "
        "organization's or the operator's hub token as HF_TOKEN) instead of loading them "
        "from the region's weights cache.",
    )
    enabled = models.BooleanField(default=True)
    healthy = models.BooleanField(default=True)
    health_message = models.CharField(max_length=300, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["region", "name"], name="pool_unique_in_region")
        ]
        ordering = ["region__code", "name"]

    def __str__(self) -> str:
        return f"{self.region.code}/{self.name}"

    def effective_images(self) -> list[str]:
        listed = [str(i) for i in self.allowed_images or [] if i]
        return listed or [i for i in settings.GANTRY_ENGINE_IMAGES.values() if i]


class Node(models.Model):
    pool = models.ForeignKey(GpuPool, on_delete=models.CASCADE, related_name="nodes")
    name = models.CharField(max_length=64)
    address = models.CharField(
        max_length=255, default="127.0.0.1", help_text="Host replicas on this node answer on."
    )
    config = models.JSONField(default=dict, blank=True)
    gpus_total = models.PositiveIntegerField()
    gpus_allocated = models.PositiveIntegerField(default=0)
    healthy = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["pool", "name"], name="node_unique_in_pool"),
            # The database itself refuses over-allocation, whatever a placer believed.
            models.CheckConstraint(
                condition=Q(gpus_allocated__lte=F("gpus_total")), name="node_not_overallocated"
            ),
        ]
        ordering = ["pool_id", "name"]

    def __str__(self) -> str:
        return f"{self.pool}/{self.name}"

    @property
    def gpus_free(self) -> int:
        return self.gpus_total - self.gpus_allocated


class Engine(models.TextChoices):
    LLAMACPP = "llama.cpp", "llama.cpp"
    VLLM = "vllm", "vLLM"
    SGLANG = "sglang", "SGLang"


class DeploymentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    FETCHING = "fetching", "Fetching weights"
    PLACING = "placing", "Placing"
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    DEGRADED = "degraded", "Degraded"
    FAILED = "failed", "Failed"
    STOPPED = "stopped", "Stopped"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"


class WeightsFetch(models.Model):
    """One region's cached copy of a hub repo's weights at a revision: a single file (a GGUF
    quant for llama.cpp) or the whole safetensors snapshot (``filename`` empty). Shared by
    every organization that deploys it; filled by the ``fetch_weights`` task."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        FETCHING = "fetching", "Fetching"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="weights")
    repo = models.CharField(max_length=200)
    revision = models.CharField(max_length=100, help_text="As asked for: a branch, tag or sha.")
    filename = models.CharField(max_length=255, blank=True, help_text="Empty: the snapshot.")
    commit = models.CharField(max_length=64, blank=True, help_text="The sha the hub served.")
    files = models.JSONField(default=list, blank=True)
    path = models.CharField(max_length=500, help_text="The folder the files land in.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    bytes_done = models.PositiveBigIntegerField(default=0)
    bytes_total = models.PositiveBigIntegerField(default=0)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # Whose hub token the task uses (gated repos); none: the operator's HF_TOKEN.
    token_organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["region", "repo", "revision", "filename"], name="weights_one_per_region"
            )
        ]
        ordering = ["region__code", "repo", "revision", "filename"]

    def __str__(self) -> str:
        tail = f"/{self.filename}" if self.filename else ""
        return f"{self.region.code}:{self.repo}@{self.revision}{tail}"

    @property
    def percent(self) -> int:
        if self.status == self.Status.READY:
            return 100
        return min(100 * self.bytes_done // self.bytes_total, 99) if self.bytes_total else 0

    @property
    def progress_text(self) -> str:
        """ "fetching weights 37% (2.1 of 5.6 GB)", or where it stands otherwise."""

        def gb(n: int) -> str:
            return f"{n / 1e9:.1f}" if n >= 1e8 else f"{n / 1e9:.2f}"

        if self.status == self.Status.READY:
            return f"weights ready ({gb(self.bytes_total)} GB)"
        if self.status == self.Status.FAILED:
            return f"fetching the weights failed: {self.error}"
        if not self.bytes_total:
            return "fetching weights (asking the hub for their size)"
        return (
            f"fetching weights {self.percent}% ({gb(self.bytes_done)} of {gb(self.bytes_total)} GB)"
        )


class RoutingPolicy(models.TextChoices):
    LEAST_BUSY = "least_busy", "Least busy"
    PREFIX_AFFINITY = "prefix_affinity", "Prefix affinity"


class AutoscaleMetric(models.TextChoices):
    IN_FLIGHT = "in_flight", "Requests in flight per replica"
    QUEUE_DEPTH = "queue_depth", "Engine queue depth per replica"
    KV_CACHE = "kv_cache", "Engine KV-cache use (%)"
    TTFT_P95 = "ttft_p95", "Time to first token p95 (ms SLO)"


class Deployment(models.Model):
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="deployments"
    )
    name = models.SlugField(max_length=63, validators=[slug_validator])
    engine = models.CharField(max_length=16, choices=Engine.choices, default=Engine.LLAMACPP)
    image = models.CharField(max_length=255, blank=True, help_text="Override the engine image.")
    model_ref = models.CharField(max_length=255)
    engine_args = models.JSONField(default=list, blank=True)
    gpu_type = models.ForeignKey(GpuType, on_delete=models.PROTECT, related_name="+")
    gpus_per_replica = models.PositiveSmallIntegerField(default=1)
    min_replicas = models.PositiveSmallIntegerField(default=1)
    max_replicas = models.PositiveSmallIntegerField(default=1)
    desired_replicas = models.PositiveSmallIntegerField(default=1)
    regions = models.JSONField(default=list, help_text="Region codes, in preference order.")
    # Autoscaling: replicas follow the load the gateway records (in-flight requests per
    # replica against this target), between min and max; idle deployments may sleep.
    autoscale_target = models.PositiveIntegerField(
        null=True, blank=True, help_text="In-flight requests per replica; empty: no autoscaling."
    )
    scale_to_zero_after_s = models.PositiveIntegerField(
        null=True, blank=True, help_text="Scale to zero after this long without requests."
    )
    # What `autoscale_target` counts: in-flight requests (the gateway's count), the
    # engine's own queue or KV-cache use (scraped from its metrics), or a TTFT p95 SLO.
    autoscale_metric = models.CharField(
        max_length=16, choices=AutoscaleMetric.choices, default=AutoscaleMetric.IN_FLIGHT
    )
    # Stabilisation: a change is made only once every recommendation over the window
    # agrees (up: the lowest of them, down: the highest), so the count does not flap.
    scale_up_window_s = models.PositiveIntegerField(default=0)
    scale_down_window_s = models.PositiveIntegerField(default=20)
    routing_policy = models.CharField(
        max_length=16, choices=RoutingPolicy.choices, default=RoutingPolicy.LEAST_BUSY
    )
    asleep = models.BooleanField(
        default=False,
        help_text=(
            "At zero replicas because the autoscaler put it to sleep when idle: the next "
            "request wakes it. A deployment a person (or the spend limit) stopped stays down."
        ),
    )
    source = models.CharField(
        max_length=200,
        blank=True,
        help_text='Where it came from, e.g. "catalog:qwen3-8b/h100-bf16".',
    )
    status = models.CharField(
        max_length=16, choices=DeploymentStatus.choices, default=DeploymentStatus.PENDING
    )
    status_reason = models.TextField(blank=True)
    # The hub weights it loads, fetched into its first region's cache (the other regions'
    # copies are rows with the same repo, revision and file).
    weights = models.ForeignKey(
        WeightsFetch, null=True, blank=True, on_delete=models.PROTECT, related_name="deployments"
    )
    failure_count = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    # A lease so one reconciler at a time works on a deployment; see services.
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "name"],
                condition=Q(deleted_at__isnull=True),
                name="deployment_name_unique_in_org",
            ),
            models.CheckConstraint(
                condition=Q(min_replicas__lte=F("max_replicas")), name="deployment_min_le_max"
            ),
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.organization.slug}/{self.name}"

    @property
    def is_demo_model(self) -> bool:
        return self.model_ref.startswith("demo:")

    @property
    def reason_now(self) -> str:
        """The status reason, with the weights' progress as it is now while they are fetched
        (the reconciler writes its reason only when it passes)."""
        if self.status == DeploymentStatus.FETCHING and self.weights is not None:
            return self.weights.progress_text
        return self.status_reason

    @property
    def is_transitional(self) -> bool:
        return self.status in {
            DeploymentStatus.PENDING,
            DeploymentStatus.FETCHING,
            DeploymentStatus.PLACING,
            DeploymentStatus.STARTING,
            DeploymentStatus.DEGRADED,
            DeploymentStatus.DELETING,
        }


class ReplicaStatus(models.TextChoices):
    PENDING = "pending", "Pending"  # placed (GPUs held), not started yet
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    # No new requests are routed to it; it stops once those in flight have finished.
    DRAINING = "draining", "Draining"
    STOPPING = "stopping", "Stopping"
    FAILED = "failed", "Failed"
    STOPPED = "stopped", "Stopped"


ACTIVE_REPLICA_STATUSES = (ReplicaStatus.PENDING, ReplicaStatus.STARTING, ReplicaStatus.RUNNING)
LIVE_REPLICA_STATUSES = (*ACTIVE_REPLICA_STATUSES, ReplicaStatus.DRAINING, ReplicaStatus.STOPPING)


class Replica(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replicas")
    ordinal = models.PositiveSmallIntegerField()
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="+")
    pool = models.ForeignKey(GpuPool, on_delete=models.PROTECT, related_name="replicas")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="replicas")
    gpus = models.PositiveSmallIntegerField(help_text="GPUs held on the node; 0 once released.")
    # Which of the node's GPUs (0-based device indices) it holds; what the driver hands
    # the engine. Placement picks them under the node's row lock; empty once released.
    gpu_indices = models.JSONField(default=list, blank=True)
    status = models.CharField(
        max_length=16, choices=ReplicaStatus.choices, default=ReplicaStatus.PENDING
    )
    handle = models.CharField(max_length=128, blank=True, help_text="The driver's runtime id.")
    url = models.CharField(max_length=255, blank=True)
    health_failures = models.PositiveSmallIntegerField(default=0)
    exit_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # How far this replica's GPU time is in the usage ledger.
    metered_until = models.DateTimeField(null=True, blank=True)
    drain_started_at = models.DateTimeField(null=True, blank=True)
    # The engine's own load, scraped from its Prometheus metrics where it has them (vLLM,
    # SGLang); null where it has none.
    queue_depth = models.FloatField(null=True, blank=True)
    kv_cache_usage = models.FloatField(null=True, blank=True, help_text="0..1")
    signals_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Two reconcilers can never both fill the same slot.
            models.UniqueConstraint(
                fields=["deployment", "ordinal"],
                condition=Q(status__in=["pending", "starting", "running", "draining", "stopping"]),
                name="replica_slot_unique_while_live",
            )
        ]
        ordering = ["deployment_id", "ordinal", "-created_at"]

    def __str__(self) -> str:
        return f"{self.deployment} #{self.ordinal}"

    @property
    def runtime_name(self) -> str:
        return f"gantry-r{self.pk}"


class DeploymentEvent(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    replica = models.ForeignKey(
        Replica, on_delete=models.SET_NULL, null=True, blank=True, related_name="events"
    )
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=32)
    message = models.TextField()

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%H:%M:%S} {self.kind}: {self.message}"


class DeploymentLoad(models.Model):
    """What the gateway saw of a deployment lately; the autoscaler reads it."""

    deployment = models.OneToOneField(Deployment, on_delete=models.CASCADE, related_name="load")
    in_flight = models.FloatField(default=0.0, help_text="Average requests in flight.")
    last_request_at = models.DateTimeField(null=True, blank=True)
    wake_requested_at = models.DateTimeField(null=True, blank=True)
    # The autoscaler's recent recommendations, [[unix time, replicas], ...], over the
    # longer of the deployment's stabilisation windows.
    recommendations = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"load of {self.deployment_id}: {self.in_flight:.1f}"


LATENCY_BUCKETS_MS = [50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]
TTFT_BUCKETS_MS = [25, 50, 100, 200, 350, 500, 750, 1000, 1500, 2500, 5000, 10000, 30000]
ITL_BUCKETS_MS = [5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000]


class ReplicaLoad(models.Model):
    """Requests one gateway process has in flight on one replica, as it last reported.
    A draining replica stops once every gateway that reported lately has none left."""

    replica = models.ForeignKey(Replica, on_delete=models.CASCADE, related_name="gateway_loads")
    gateway = models.CharField(max_length=64)
    in_flight = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["replica", "gateway"], name="replica_load_unique")
        ]

    def __str__(self) -> str:
        return f"{self.replica_id}@{self.gateway}: {self.in_flight}"


class TrafficMinute(models.Model):
    """Requests a deployment served in one minute, summed over gateway processes."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="traffic")
    minute = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    tokens = models.PositiveBigIntegerField(default=0)
    # Counts per LATENCY_BUCKETS_MS upper bound, plus one for slower.
    latency_buckets = models.JSONField(default=list)
    # Streams only: time to first token and mean inter-token latency per request, counts
    # per TTFT_BUCKETS_MS / ITL_BUCKETS_MS bound plus one for slower.
    ttft_buckets = models.JSONField(default=list, blank=True)
    itl_buckets = models.JSONField(default=list, blank=True)
    # The same per replica: {"<replica id>": {"requests", "tokens", "ttft", "itl"}}.
    per_replica = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["deployment", "minute"], name="traffic_minute_unique")
        ]

    def __str__(self) -> str:
        return f"{self.deployment_id} {self.minute:%H:%M} {self.requests}"
