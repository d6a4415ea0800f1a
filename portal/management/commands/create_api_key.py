from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from portal.models import Organization
from portal.services import api_key_create


class Command(BaseCommand):
    help = "Mint an API key for a member of an organization. Prints the key, and only the key."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--user", required=True, help="username of a member")
        parser.add_argument("--name", required=True, help="what the key is for")

    def handle(self, *args, org, user, name, **options):
        organization = Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"No organization with slug {org!r}.")
        member = get_user_model().objects.filter(username=user).first()
        if member is None:
            raise CommandError(f"No user named {user!r}.")
        try:
            _key, raw = api_key_create(organization=organization, user=member, name=name)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        self.stdout.write(raw)
