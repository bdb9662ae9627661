"""Hostile input on the session endpoints: schemathesis generates bodies and query parameters
for each of them, sent against a real, live session (the suite-wide run of tests/security only
hits random ids there, which are 404s), and checks there is no 500 and no answer the schema
does not document. The generated inputs are arbitrary JSON (the schema cannot say a program's
fields): this covers malformed and odd bodies; well-formed turns are tests/sessions/test_api.py's."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from dspex_site.permissions import TokenRateThrottle
from dspex_site.wsgi import application
from executions.models import Session
from tests.factories import SessionFactory
from tests.security.test_hostile_input import CHECKS
from tests.security.test_hostile_input import wsgi_in_test_transaction as _wsgi  # noqa: F401 (a fixture)

# `_wsgi`: the WSGI app called as the test client calls it (tests/security/test_hostile_input.py).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("_wsgi")]


def test_no_session_operation_answers_500_or_violates_its_schema(
    transactional_db,
    api,
    monkeypatch,
):
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"user": "100000/min"})
    token = api._credentials["HTTP_AUTHORIZATION"]
    schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
    operations = [r.ok() for r in schema.get_all_operations() if "/sessions/" in r.ok().path]
    assert len(operations) == 5, [o.label for o in operations]
    failures: list[str] = []
    answered: set[tuple[str, int]] = set()
    for operation in operations:
        for mode, examples in ((GenerationMode.POSITIVE, 30), (GenerationMode.NEGATIVE, 10)):

            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: object) -> None:
                if "id" in (case.path_parameters or {}):
                    session = Session.objects.filter(expires_at__gt=_now()).first() or SessionFactory()
                    case.path_parameters = {"id": str(session.id)}
                response = case.call(headers={"Authorization": token})
                answered.add((case.operation.label, response.status_code))
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except BaseException as exc:
                if mode is GenerationMode.NEGATIVE and type(exc).__name__ == "Unsatisfiable":
                    continue
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:800]}")
    assert not failures, "\n\n".join(failures)
    # The real session was reached: read, refused for bad bodies, deleted (and made again).
    assert {("GET /api/v1/sessions/{id}/", 200), ("DELETE /api/v1/sessions/{id}/", 204)} <= answered, answered
    assert ("POST /api/v1/sessions/{id}/turns/", 400) in answered, answered


def _now() -> object:
    from django.utils import timezone

    return timezone.now()
