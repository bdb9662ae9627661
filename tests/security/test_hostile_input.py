"""Hostile input: schemathesis generates requests for every operation of /api/schema/ (with a
token) and checks there is no 500, no status the operation does not document, and no response
(body, content type, headers) that violates the schema. Bodies are sent in every media type an
operation declares (multipart included), valid ones and invalid ones.

Bounded: `EXAMPLES` per operation and mode keeps the whole run to a few minutes on a loaded
2-core box.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dspex_site.permissions import TokenRateThrottle
from dspex_site.wsgi import application

EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 6}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]


@pytest.fixture
def wsgi_in_test_transaction() -> object:
    """Call the WSGI app directly, as Django's test client does: without closing the test's
    database connection at each request (it is inside the test transaction)."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield application
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def seeded(make_program, db: None) -> None:
    """Something for generated ids to sometimes hit, besides the 404s of random UUIDs."""
    make_program(name="hostile-target")


def exercise(
    operation: object, mode: GenerationMode, token: str, failures: list[str], sent: set[tuple[str, str]]
) -> None:
    """Run one operation's generated cases in one mode; record the first failure found and the
    media types bodies were sent in."""

    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: object) -> None:
        if case.body is not NOT_SET and case.media_type:
            sent.add((operation.label, case.media_type))
        response = case.call(headers={"Authorization": token})
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except BaseException as exc:  # collect every operation's failure, report them together
        if isinstance(exc, Unsatisfiable) and mode is GenerationMode.NEGATIVE:
            return  # nothing to make invalid: no body and no parameters
        failures.append(f"{operation.label} ({mode.value}): {str(exc)[:800]}")


@pytest.mark.slow
def test_no_operation_answers_500_or_violates_its_schema(
    transactional_db, api, seeded, wsgi_in_test_transaction, monkeypatch
):
    # transactional_db: each request commits on its own, as in production, so one failing request
    # cannot poison the others' transaction.
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"user": "100000/min"})
    token = api._credentials["HTTP_AUTHORIZATION"]
    schema = schemathesis.openapi.from_wsgi("/api/schema/", wsgi_in_test_transaction)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    failures: list[str] = []
    sent: set[tuple[str, str]] = set()
    for operation in operations:
        for mode in EXAMPLES:
            exercise(operation, mode, token, failures, sent)
    assert not failures, "\n\n".join(failures)
    declared = {
        (operation.label, media_type)
        for operation in operations
        for media_type in operation.get_request_payload_content_types()
    }
    assert any(media_type == "multipart/form-data" for _, media_type in declared)
    assert declared <= sent, f"bodies never sent: {sorted(declared - sent)}"
