from django.contrib import admin

from lab.models import Benchmark


@admin.register(Benchmark)
class BenchmarkAdmin(admin.ModelAdmin):
    list_display = ["id", "organization", "deployment", "target", "status", "created_at"]
    list_filter = ["status", "target"]
    raw_id_fields = ["deployment", "replica", "api_key", "created_by"]
    readonly_fields = ["points", "summary", "log", "seed"]
