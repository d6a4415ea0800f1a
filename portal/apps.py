from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Organizations and access"

    def ready(self) -> None:
        # Every app's urls.py uses <id:…>; the converter must exist before any is loaded.
        from portal import converters  # noqa: F401
