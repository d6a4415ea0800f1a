from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from portal.models import Membership, Organization, Role
from portal.services import organization_create

DEMO_USER = "demo"
# Public on purpose: the README prints it so a newcomer can sign in to `make run`.
DEMO_PASSWORD = "gantry-demo"  # noqa: S105
DEMO_ORG = "demo"


class Command(BaseCommand):
    help = "Load the demo data `make run` starts with (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--no-deployment", action="store_true", help="do not create the demo deployment"
        )

    @transaction.atomic
    def handle(self, *args, no_deployment=False, **options):
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=DEMO_USER,
            defaults={"email": "demo@example.com", "is_staff": True, "is_superuser": True},
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        org = Organization.objects.filter(slug=DEMO_ORG).first()
        if org is None:
            org = organization_create(name="Demo team", slug=DEMO_ORG, owner=user)
        Membership.objects.get_or_create(organization=org, user=user, defaults={"role": Role.OWNER})
        lines = [f"Demo ready: sign in as {DEMO_USER} / {DEMO_PASSWORD} (staff), org {org.slug}."]
        # Other apps add their own demo data, each through its services. Tenancy may not
        # import them, so each offers `load_demo(org=, user=, deployment=)` on its AppConfig;
        # INSTALLED_APPS order is the order they load in.
        for config in apps.get_app_configs():
            if hasattr(config, "load_demo"):
                lines += config.load_demo(org=org, user=user, deployment=not no_deployment)
        for line in lines:
            self.stdout.write(line)
