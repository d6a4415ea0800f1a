from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "deployments"
    verbose_name = "Regions, GPU pools and deployments"

    # Tenancy (`portal`) sits below this app and may not import it; the dashboard and
    # `manage.py demo` find these two hooks through the app registry instead.

    def dashboard_cards(self, org) -> list[dict]:
        from django.urls import reverse

        from deployments.selectors import deployment_list

        return [
            {
                "title": "Deployments",
                "stat": deployment_list(org=org).count(),
                "url": reverse("deployments:list"),
                "link": "See deployments",
            }
        ]

    def load_demo(self, *, org, user, deployment: bool = True) -> list[str]:
        from deployments.demo import load_demo_inventory

        return load_demo_inventory(org=org, user=user, deployment=deployment)
