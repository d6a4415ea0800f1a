from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError

from marketplace.launch import profile_launch
from marketplace.models import CatalogModel, CatalogSync, Managed, ServingProfile
from marketplace.services import profile_refresh_fit

PROFILE_FIELDS = [
    "name",
    "engine",
    "gpu_type",
    "gpu_count",
    "quantization",
    "max_model_len",
    "concurrent_sequences",
    "gpu_memory_utilization",
    "engine_args",
    "engine_version",
    "tensor_parallel",
    "parallel_reason",
    "kv_cache_dtype",
    "model_ref",
    "throughput_tokens_s",
    "throughput_source",
]


class ProfileForm(forms.ModelForm):
    """A profile staff edit must still render a launch the engine's schema accepts: the
    same check loadcatalog makes, so a saved profile is one deploy can start."""

    class Meta:
        model = ServingProfile
        fields = PROFILE_FIELDS

    def _post_clean(self):
        super()._post_clean()
        if self.errors or getattr(self.instance, "model", None) is None:
            return
        try:
            profile_launch(self.instance, strict=True)
        except ValidationError as exc:
            self.add_error(None, " ".join(exc.messages))


class ProfileInline(admin.TabularInline):
    model = ServingProfile
    form = ProfileForm
    extra = 0
    fields = [*PROFILE_FIELDS, "fits", "memory_required_gib", "fit_reason"]
    readonly_fields = ["fits", "memory_required_gib", "fit_reason"]


@admin.register(CatalogModel)
class CatalogModelAdmin(admin.ModelAdmin):
    list_display = [
        "slug",
        "name",
        "family",
        "parameters_b",
        "license",
        "organization",
        "managed_by",
        "listed",
        "downloads",
    ]
    list_filter = ["family", "managed_by", "listed", "license"]
    search_fields = ["slug", "name", "hf_repo"]
    inlines = [ProfileInline]
    readonly_fields = ["downloads", "likes", "hub_last_modified", "synced_at", "managed_by"]

    def save_model(self, request, obj, form, change):
        # Edited here, the entry is the operator's: later catalog loads leave it alone.
        obj.managed_by = Managed.OPERATOR
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        for profile in form.instance.profiles.select_related("model", "gpu_type"):
            profile_refresh_fit(profile)


@admin.register(CatalogSync)
class CatalogSyncAdmin(admin.ModelAdmin):
    list_display = ["started_at", "finished_at", "ok", "updated", "failed", "message"]
    readonly_fields = list_display
