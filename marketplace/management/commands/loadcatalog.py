from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from marketplace.services import CATALOG_DIR, catalog_load


class Command(BaseCommand):
    help = "Load the marketplace catalog (YAML). Operator-edited entries are left alone."

    def add_arguments(self, parser):
        parser.add_argument("--dir", default=str(CATALOG_DIR), help="folder of YAML files")

    def handle(self, *args, dir, **options):
        try:
            result = catalog_load(directory=Path(dir))
        except (ValidationError, OSError, KeyError) as exc:
            raise CommandError(f"catalog not loaded: {exc}") from exc
        self.stdout.write(f"Catalog: {result}.")
