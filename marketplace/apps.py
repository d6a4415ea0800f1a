from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "Marketplace"

    def ready(self) -> None:
        from deployments.sources import source_register
        from marketplace.services import catalog_deploy_by_slug

        # `model` in POST /api/v1/deployments; see deployments.sources for why a registry.
        source_register(field="model", help_text="a catalog slug", deploy=catalog_deploy_by_slug)

    # The dashboard and `manage.py demo` (in tenancy, which may not import this app) find
    # these hooks through the app registry.

    def dashboard_cards(self, org) -> list[dict]:
        from django.urls import reverse

        return [
            {
                "title": "Marketplace",
                "text": "Tuned DeepSeek, Qwen and Llama models, checked against every GPU type.",
                "url": reverse("marketplace:grid"),
                "link": "Browse models",
            }
        ]

    def load_demo(self, *, org, user, deployment: bool = True) -> list[str]:
        from marketplace.services import catalog_load

        return [f"Catalog: {catalog_load()}."]
