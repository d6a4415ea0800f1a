from django.core.management.base import BaseCommand

from marketplace.services import catalog_sync


class Command(BaseCommand):
    help = "Refresh catalog facts (licence, gated, downloads, likes, parameters) from the hub."

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=10.0)

    def handle(self, *args, timeout, **options):
        run = catalog_sync(timeout=timeout)
        self.stdout.write(("OK: " if run.ok else "PARTIAL: ") + run.message)
