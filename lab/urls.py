from django.urls import path

from lab import views

app_name = "lab"

urlpatterns = [
    path("lab/benchmarks/", views.benchmark_list, name="benchmarks"),
]
