from django.urls import path

from marketplace import views

app_name = "marketplace"

urlpatterns = [
    path("marketplace/", views.grid, name="grid"),
    path("marketplace/<str:slug>/", views.model_detail, name="model"),
    path("marketplace/<str:slug>/deploy/", views.deploy, name="deploy"),
]
