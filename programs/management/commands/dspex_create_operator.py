"""`manage.py dspex_create_operator <username> [--project <name>]`: a console login in the Operators
group and an operator of the project (`default` unless given)."""

import secrets
import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from dspex_site.roles import OPERATORS
from monitoring import audit
from projects import access, keys
from projects.models import Membership, Project


class Command(BaseCommand):
    help = (
        "Create a staff user in the Operators group (runs and edits programs; not a superuser). "
        "Prints a generated password once, unless --password-stdin; --token also issues an API token."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--password-stdin", action="store_true", help="read the password from standard input"
        )
        parser.add_argument("--token", action="store_true", help="also issue an API token (printed once)")
        parser.add_argument(
            "--project",
            default=None,
            help="the project they operate (default: `default`, created if missing)",
        )

    def handle(
        self,
        *args: Any,
        username: str,
        email: str,
        password_stdin: bool,
        token: bool,
        project: str | None = None,
        **options: Any,
    ) -> None:
        user_model = get_user_model()
        username = username.strip()
        try:
            user_model._meta.get_field("username").run_validators(username)
        except ValidationError as exc:
            raise CommandError(f"Invalid username '{username}': {' '.join(exc.messages)}") from exc
        if not username:
            raise CommandError("The username must not be empty.")
        try:
            target = access.resolve(project)
        except Project.DoesNotExist as exc:
            raise CommandError(str(exc)) from exc
        group = Group.objects.filter(name=OPERATORS).first()
        if group is None:
            raise CommandError(f"The '{OPERATORS}' group does not exist: run `manage.py migrate` first.")
        password = sys.stdin.readline().rstrip("\n") if password_stdin else secrets.token_urlsafe(12)
        user = user_model(username=username, email=email, is_staff=True)
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise CommandError("Password rejected: " + " ".join(exc.messages)) from exc
        with transaction.atomic():
            if user_model.objects.filter(username=username).exists():
                raise CommandError(f"A user named '{username}' already exists.")
            user.set_password(password)
            user.save()
            user.groups.add(group)
            Membership.objects.create(user=user, project=target, role=Membership.Role.OPERATOR)
            key = keys.issue(name="operator key", user=user, created_by=None).key if token else None
            audit.record(
                "create_operator",
                user,
                channel="command",
                changes={
                    "username": username,
                    "groups": [OPERATORS],
                    "project": target.name,
                    "token_issued": bool(key),
                },
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"Operator '{username}' created (group {OPERATORS}, operator of {target.name})."
            )
        )
        if not password_stdin:
            self.stdout.write(f"  password : {password}   (shown once)")
        if key:
            self.stdout.write(f"  API key  : {key}   (shown once)")
