from django.apps import AppConfig


class BuilderConfig(AppConfig):
    name = "builder"
    verbose_name = "Custom model builder"

    def ready(self) -> None:
        from builder.submit import build_deploy
        from deployments.sources import source_register

        source_register(field="build", help_text="a build id", deploy=build_deploy)
