from django.urls import path

from lab import tuning_views, views

app_name = "lab"

urlpatterns = [
    path("lab/benchmarks/", views.benchmark_list, name="benchmarks"),
    path("lab/benchmarks/new/", views.benchmark_new, name="benchmark_new"),
    path("lab/benchmarks/<id:pk>/", views.benchmark_detail, name="benchmark"),
    path("lab/benchmarks/<id:pk>/cancel/", views.benchmark_cancel, name="benchmark_cancel"),
    path("lab/tunings/", tuning_views.tuning_list, name="tunings"),
    path("lab/tunings/<id:pk>/", tuning_views.tuning_detail, name="tuning"),
    path(
        "lab/tunings/<id:pk>/<str:verb>/",
        tuning_views.tuning_action,
        name="tuning_action",
    ),
    path("lab/leaderboard/", tuning_views.leaderboard_page, name="leaderboard"),
]
