"""`manage.py dspex_create_key <username> [--project <name>] [--scopes read,execute,...]
[--name ...] [--expires-in-days N] [--service]`: issue an API key and print it once, alone on the
last line of output (scripts and deployments read that line)."""

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from monitoring import audit
from projects import access, keys
from projects.models import Project


class Command(BaseCommand):
    help = (
        "Issue an API key for a user (or, with --service, a project's service key) and print it once, "
        "alone on the last line. Only its SHA-256 digest is stored."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username", nargs="?", help="the user the key acts for (not with --service)")
        parser.add_argument(
            "--project", default=None, help="the one project the key works in (default: all the user's)"
        )
        parser.add_argument(
            "--scopes",
            default=",".join(keys.SCOPES),
            help=f"comma-separated, any of {','.join(keys.SCOPES)} (default: all)",
        )
        parser.add_argument("--name", default="command-line key", help="what the key is for, shown in lists")
        parser.add_argument("--expires-in-days", type=float, default=None, help="expire after this many days")
        parser.add_argument("--service", action="store_true", help="a service key of --project (no person)")

    def handle(
        self,
        *args: Any,
        username: str | None,
        project: str | None,
        scopes: str,
        name: str,
        expires_in_days: float | None,
        service: bool,
        **options: Any,
    ) -> None:
        try:
            scope_list = keys.check_scopes(s.strip() for s in scopes.split(",") if s.strip())
        except ValueError as exc:
            raise CommandError(f"--scopes: {exc}") from exc
        target = None
        if project is not None or service:
            if project is None:
                raise CommandError("--service needs --project <name>.")
            try:
                target = access.resolve(project)
            except Project.DoesNotExist as exc:
                raise CommandError(f"--project: {exc}") from exc
        user = None
        if service:
            if username:
                raise CommandError("A service key acts for no user: give --project and no username.")
        else:
            if not username:
                raise CommandError("Give the username the key acts for (or --service --project <name>).")
            user = get_user_model().objects.filter(username=username, is_active=True).first()
            if user is None:
                raise CommandError(f"No active user named '{username}'.")
            if target is not None and not access.sees(user, target.pk):
                raise CommandError(f"'{username}' is not a member of project {target.name}.")
        if expires_in_days is not None and expires_in_days <= 0:
            raise CommandError("--expires-in-days must be positive.")
        expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
        with transaction.atomic():
            issued = keys.issue(
                name=name,
                user=user,
                project=target,
                scopes=scope_list,
                expires_at=expires_at,
                service=service,
            )
            audit.record("issue_key", issued.api_key, channel="command", changes=keys.facts(issued.api_key))
        where = f"project {target.name}" if target else "all of the user's projects"
        self.stdout.write(
            f"API key {issued.api_key.prefix}… for {issued.api_key.user.username} in {where}, "
            f"scopes {','.join(scope_list)}"
            + (f", expires {expires_at.isoformat()}" if expires_at else "")
            + ". Shown once, on the next line:"
        )
        self.stdout.write(issued.key)
