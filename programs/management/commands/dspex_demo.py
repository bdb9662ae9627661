"""Load the demo: an operator account with an API token (printed once) and three demo programs."""

import json
import secrets
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from dspex_site.roles import OPERATORS
from monitoring import audit
from programs.models import CognitiveProgram
from projects import keys

DEMO_FILE = Path(__file__).resolve().parents[2] / "demo" / "programs.json"


class Command(BaseCommand):
    help = "Create the demo operator (password and API token printed once) and the demo programs. Idempotent."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="operator")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        with transaction.atomic():
            self.ensure_operator(username)
            for spec in json.loads(DEMO_FILE.read_text()):
                self.ensure_program(spec)

    def ensure_operator(self, username: str) -> None:
        user_model = get_user_model()
        if user_model.objects.filter(username=username).exists():
            self.stdout.write(
                f"Operator '{username}' already exists (credentials were printed when it was created)."
            )
            return
        password = secrets.token_urlsafe(12)
        user = user_model.objects.create_superuser(username=username, email="", password=password)
        # A superuser already may do everything; the group makes the demo login's role visible.
        user.groups.add(*Group.objects.filter(name=OPERATORS))
        token = keys.issue(name="demo operator key", user=user)
        self.stdout.write(self.style.SUCCESS("Demo operator created. These are shown once, keep them:"))
        self.stdout.write(
            f"  admin login : http://127.0.0.1:8000/admin/  user={username}  password={password}"
        )
        self.stdout.write(f"  API key     : {token.key}")
        self.stdout.write(
            f'  try         : curl -H "Authorization: Bearer {token.key}" http://127.0.0.1:8000/api/v1/programs/'
        )

    def ensure_program(self, spec: dict) -> None:
        if CognitiveProgram.objects.filter(name=spec["name"]).exists():
            return
        program = CognitiveProgram.objects.create(**spec)
        audit.record("create", program, channel="command", changes={"source": "dspex_demo"})
        self.stdout.write(f"Demo program '{program.name}' loaded.")
