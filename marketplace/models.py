"""The catalog: open models and their pre-tuned serving profiles."""

from django.db import models
from django.db.models import Q

from deployments.models import Engine, GpuType
from portal.models import Organization


class Family(models.TextChoices):
    DEEPSEEK = "deepseek", "DeepSeek"
    QWEN = "qwen", "Qwen"
    LLAMA = "llama", "Llama"
    DEMO = "demo", "Demo"
    OTHER = "other", "Other"


class Attention(models.TextChoices):
    MHA = "mha", "Multi-head"
    GQA = "gqa", "Grouped-query"
    MLA = "mla", "Multi-head latent"


class Managed(models.TextChoices):
    CATALOG = "catalog", "Catalog files"  # loadcatalog may update it
    OPERATOR = "operator", "Operator"  # edited or added by staff: loadcatalog leaves it


class CatalogModel(models.Model):
    slug = models.SlugField(max_length=100)
    name = models.CharField(max_length=150)
    family = models.CharField(max_length=16, choices=Family.choices)
    # Private entries (custom builds) belong to one organization; public ones to none.
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    hf_repo = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    tasks = models.JSONField(default=list, help_text='e.g. ["chat", "code", "reasoning"]')
    architecture = models.CharField(max_length=100, blank=True)
    parameters_b = models.DecimalField(max_digits=8, decimal_places=2)
    active_parameters_b = models.DecimalField(
        max_digits=8, decimal_places=2, null=True, blank=True, help_text="MoE: per token."
    )
    context_length = models.PositiveIntegerField()
    license = models.CharField(max_length=64)
    gated = models.BooleanField(default=False)
    # What the fit calculation needs (config.json of the model).
    num_layers = models.PositiveIntegerField()
    hidden_size = models.PositiveIntegerField()
    num_heads = models.PositiveIntegerField()
    num_kv_heads = models.PositiveIntegerField()
    head_dim = models.PositiveIntegerField()
    attention = models.CharField(max_length=8, choices=Attention.choices, default=Attention.GQA)
    kv_lora_rank = models.PositiveIntegerField(default=0, help_text="MLA latent size.")
    qk_rope_head_dim = models.PositiveIntegerField(default=0, help_text="MLA rope part.")
    # Where the facts came from, field by field.
    sources = models.JSONField(default=dict, blank=True)
    # Checkpoints of other precisions a profile may load, by quantization
    # ({"awq-int4": "Qwen/Qwen2.5-72B-Instruct-AWQ"}); where `hf_repo` itself holds FP8
    # weights it is listed under "fp8". A profile's repo must be `hf_repo` or one of these.
    quant_repos = models.JSONField(default=dict, blank=True)
    # From the hub (catalog_sync).
    downloads = models.PositiveBigIntegerField(default=0)
    likes = models.PositiveIntegerField(default=0)
    hub_last_modified = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)
    managed_by = models.CharField(max_length=16, choices=Managed.choices, default=Managed.OPERATOR)
    listed = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["slug"],
                condition=Q(organization__isnull=True),
                name="catalog_slug_unique_public",
            ),
            models.UniqueConstraint(
                fields=["organization", "slug"], name="catalog_slug_unique_in_org"
            ),
        ]
        ordering = ["-downloads", "name"]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_moe(self) -> bool:
        return self.active_parameters_b is not None


class Quantization(models.TextChoices):
    BF16 = "bf16", "BF16"
    FP8 = "fp8", "FP8"
    INT8 = "int8", "INT8"
    AWQ = "awq-int4", "AWQ INT4"
    GPTQ = "gptq-int4", "GPTQ INT4"
    Q8_0 = "q8_0", "GGUF Q8_0"
    Q4_K_M = "q4_k_m", "GGUF Q4_K_M"
    F32 = "f32", "F32"
    F16 = "f16", "F16"


class ServingProfile(models.Model):
    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="profiles")
    name = models.SlugField(max_length=60, help_text="Unique within the model.")
    engine = models.CharField(max_length=16, choices=Engine.choices)
    gpu_type = models.ForeignKey(GpuType, on_delete=models.PROTECT, related_name="+")
    gpu_count = models.PositiveSmallIntegerField(default=1)
    quantization = models.CharField(max_length=16, choices=Quantization.choices)
    max_model_len = models.PositiveIntegerField()
    concurrent_sequences = models.PositiveIntegerField(
        default=1, help_text="Sequences at full context the KV cache is sized for."
    )
    gpu_memory_utilization = models.DecimalField(max_digits=3, decimal_places=2, default=0.90)
    engine_args = models.JSONField(
        default=list, blank=True, help_text="Extra flags beyond what the fields render."
    )
    engine_version = models.CharField(
        max_length=16, blank=True, help_text="The engine version the launch is written for."
    )
    kv_cache_dtype = models.CharField(max_length=16, default="auto")
    tensor_parallel = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Default: the GPU count."
    )
    parallel_reason = models.CharField(
        max_length=300, blank=True, help_text="Why tensor parallel differs from the GPU count."
    )
    model_ref = models.CharField(
        max_length=255, blank=True, help_text="What the engine loads; default the hub repo."
    )
    # The hub repo (and revision) the weights are fetched from on deploy: for llama.cpp the
    # repo holding the GGUF file ``model_ref`` names; empty: the model's own repo.
    weights_repo = models.CharField(max_length=200, blank=True)
    weights_revision = models.CharField(max_length=100, default="main")
    image = models.CharField(max_length=255, blank=True)
    # The fit estimate, stored by the services whenever the profile or its GPU type changes.
    memory_required_gib = models.DecimalField(max_digits=9, decimal_places=2, default=0)
    memory_available_gib = models.DecimalField(max_digits=9, decimal_places=2, default=0)
    fits = models.BooleanField(default=False)
    fit_reason = models.TextField(blank=True)
    throughput_tokens_s = models.PositiveIntegerField(null=True, blank=True)
    throughput_source = models.CharField(
        max_length=300, blank=True, help_text="Where the figure comes from (cited or measured)."
    )
    # Figures the Lab measured for this profile and their provenance (tuning, trial,
    # benchmark, date, engine and image, hardware, workload, SLO, re-measure tolerance).
    measured = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "name"], name="profile_unique_in_model")
        ]
        ordering = ["model_id", "gpu_count", "name"]

    def __str__(self) -> str:
        return f"{self.model.slug}/{self.name}"


class CatalogSync(models.Model):
    """One hub sync run: what it changed, or why it could not."""

    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    ok = models.BooleanField(default=False)
    updated = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"sync {self.started_at:%Y-%m-%d %H:%M}: {self.message[:60]}"
