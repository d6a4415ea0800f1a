from django.contrib import admin

from marketplace.models import CatalogModel, CatalogSync, Managed, ServingProfile
from marketplace.services import profile_refresh_fit


class ProfileInline(admin.TabularInline):
    model = ServingProfile
    extra = 0
    fields = [
        "name",
        "engine",
        "gpu_type",
        "gpu_count",
        "quantization",
        "max_model_len",
        "concurrent_sequences",
        "gpu_memory_utilization",
        "engine_args",
        "model_ref",
        "throughput_tokens_s",
        "throughput_source",
        "fits",
        "memory_required_gib",
    ]
    readonly_fields = ["fits", "memory_required_gib"]


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
