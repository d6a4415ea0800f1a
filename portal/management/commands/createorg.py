from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from portal.services import organization_create


class Command(BaseCommand):
    help = "Create an organization owned by a user (created too when --password is given)."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--owner", required=True, help="username of the owner")
        parser.add_argument("--name", default="", help="display name (default: the slug)")
        parser.add_argument("--password", help="create the owner with this password if new")
        parser.add_argument("--email", default="", help="the new owner's email")

    @transaction.atomic
    def handle(self, *args, slug, owner, name, password, email, **options):
        User = get_user_model()
        user = User.objects.filter(username=owner).first()
        if user is None:
            if not password:
                raise CommandError(f"No user named {owner!r}; pass --password to create them.")
            user = User.objects.create_user(username=owner, email=email, password=password)
        try:
            org = organization_create(name=name or slug, slug=slug, owner=user)
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            ) from exc
        self.stdout.write(f"Created organization {org.slug} owned by {user.username}.")
