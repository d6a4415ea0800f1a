from django.urls import path

from lab import views

app_name = "lab"

urlpatterns = [
    path("lab/benchmarks/", views.benchmark_list, name="benchmarks"),
    path("lab/benchmarks/new/", views.benchmark_new, name="benchmark_new"),
    path("lab/benchmarks/<id:pk>/", views.benchmark_detail, name="benchmark"),
    path("lab/benchmarks/<id:pk>/cancel/", views.benchmark_cancel, name="benchmark_cancel"),
]
