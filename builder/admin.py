from django.contrib import admin

from builder.models import Build, Upload, WeightsCache


@admin.register(Build)
class BuildAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "organization",
        "source_kind",
        "engine",
        "status",
        "phase",
        "image",
        "created_at",
    ]
    list_filter = ["status", "engine", "source_kind"]
    search_fields = ["name", "repo_id", "organization__slug"]
    exclude = ["token_encrypted"]  # never shown, even to staff
    readonly_fields = ["log", "facts", "digest", "image", "spec_hash", "error"]


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "kind", "size_bytes", "created_at"]


@admin.register(WeightsCache)
class WeightsCacheAdmin(admin.ModelAdmin):
    list_display = ["key", "status", "bytes_done", "bytes_total", "updated_at"]
