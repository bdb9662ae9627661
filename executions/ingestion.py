"""AMQP ingestion: messages on the `dspex_executions` queue become executions
(`manage.py dspex_consume`; docs/operations.md, "AMQP ingestion").

A message is JSON `{"program": id or name, "input": {...}, "variables": {...}, "message_id": "..."}`
(also `priority` and `cache`, as the execute API's body). It runs as the consumer's API key
(`DSPEX_CONSUME_KEY`): that key's projects, role and `execute` scope bound what messages may run,
and its budgets and rate limits apply, through the one run path (`runner.run_now`, as the execute
API's `wait=true`). The finished execution (the execute API's body) goes to the message's
`reply_to` with its `correlation_id`, or else to the `dspex_results` topic exchange with the
program's name as routing key.

Idempotency: the message's key is the body's `message_id`, else the AMQP `message_id` property
(the body wins: it is what the sender's application chose; some clients set the property anew on
every publish). It is stored (`IngestedMessage`, primary key) in the transaction that stores the
execution, so a redelivered message finds its execution and re-publishes its result instead of
running again. A message with neither runs without that protection.

A message that cannot run (not JSON, unknown program, an input its signature refuses, a refusal
such as `budget_exceeded`) goes to the `dspex_executions.dead` queue with the error body (the
execute API's `{"code", "detail", "errors"}`, same codes) in its `x-dspex-error` header and its
original body unchanged; the caller's `reply_to`, if any, gets the error body too.

Poison messages: a message is delivered at most `DSPEX_CONSUME_MAX_DELIVERIES` times. One whose
processing raises on its last delivery is dead-lettered by the consumer (code `delivery_limit`,
the last error in the detail); one whose consumer died on each delivery is dead-lettered by
RabbitMQ itself (the queue's `x-delivery-limit`, `x-first-death-reason: delivery_limit`), and the
consumer refuses any that still arrives with that many deliveries behind it (a queue declared
without the limit). Database and broker outages are not counted: the message is held and retried.
"""

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, close_old_connections
from rest_framework import exceptions

from dspex_site.api.handler import exception_handler
from dspex_site.celery import broker_is_amqp
from dspex_site.errors import DomainError
from dspex_site.roles import RUN
from executions import runner
from executions.models import CognitiveExecution, IngestedMessage
from executions.serializers import execution_data
from llm.quotas import RateLimitExceeded
from programs.api import execute_body
from programs.models import CognitiveProgram
from projects import access, keys

logger = logging.getLogger(__name__)

QUEUE = "dspex_executions"
DEAD_QUEUE = "dspex_executions.dead"
RESULTS_EXCHANGE = "dspex_results"
MAX_MESSAGE_ID = 200
RATE_LIMIT_TRIES = 20  # a 429 `rate_limited` refusal: wait its Retry-After, this many times at most
REDELIVERED_WAIT_S = 600.0  # a redelivered message whose execution still runs: wait this long for it


def queue_arguments(max_deliveries: int) -> dict[str, Any]:
    """`dspex_executions`' arguments: a quorum queue that dead-letters a message to
    `dspex_executions.dead` once it was delivered `max_deliveries` times without an ack
    (RabbitMQ's delivery-limit counts the returns: a requeue, or its consumer's channel closing)."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": max(0, max_deliveries - 1),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": DEAD_QUEUE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",  # at-least-once dead-lettering requires it (no length limit is set)
    }


def deliveries_before(headers: dict[str, Any] | None) -> int:
    """How often the message was delivered before without an ack (quorum queues' `x-delivery-count`)."""
    value = (headers or {}).get("x-delivery-count", 0)
    return value if isinstance(value, int) and value > 0 else 0


def delivery_limit_body(deliveries: int, last_error: BaseException | None) -> dict[str, Any]:
    """The dead letter's error body for a poison message."""
    if last_error is None:
        detail = (
            f"Delivered {deliveries} times and never acknowledged: its consumer died or failed "
            "while processing it each time."
        )
    else:
        detail = (
            f"Processing it failed on each of its {deliveries} deliveries; the last: "
            f"{type(last_error).__name__}: {str(last_error)[:500]}"
        )
    return {"code": "delivery_limit", "detail": detail, "errors": []}


def amqp_url() -> str:
    """`DSPEX_AMQP_URL`, else the Celery broker's URL when that is AMQP."""
    if settings.DSPEX_AMQP_URL:
        return str(settings.DSPEX_AMQP_URL)
    if broker_is_amqp(str(settings.CELERY_BROKER_URL)):
        return str(settings.CELERY_BROKER_URL)
    raise ImproperlyConfigured(
        "dspex_consume needs RabbitMQ: set DSPEX_AMQP_URL (amqp://user:password@host:5672/vhost), "
        "or make CELERY_BROKER_URL an amqp:// URL."
    )


def principal_for(key: str) -> keys.Principal:
    """The principal messages run as; ValueError saying why a key cannot be used."""
    if not key:
        raise ValueError(
            "dspex_consume needs an API key with the `execute` scope: DSPEX_CONSUME_KEY or --key."
        )
    principal = keys.lookup(key)
    if principal is None:
        raise ValueError("DSPEX_CONSUME_KEY / --key is not a valid API key.")
    refused = keys.refusal(
        principal.api_key.revoked_at, principal.api_key.expires_at, principal.api_key.prefix
    )
    if refused is not None:
        raise ValueError(str(refused))
    if "execute" not in principal.api_key.scopes:
        raise ValueError(
            f"API key {principal.api_key.prefix}… lacks the `execute` scope dspex_consume needs."
        )
    if not principal.user.is_active:
        raise ValueError(f"API key {principal.api_key.prefix}…: its user is inactive.")
    return principal


class Refused(Exception):
    """A message that cannot run: its error body (the execute API's shape)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        super().__init__(body.get("detail", ""))


def _refused(code: str, detail: str, path: str | None = None) -> Refused:
    errors = [{"path": path, "message": detail}] if path is not None else []
    return Refused({"code": code, "detail": detail, "errors": errors})


def error_body(exc: Exception) -> dict[str, Any]:
    """The execute API's error body for a domain or validation error (dspex_site.api.handler)."""
    response = exception_handler(exc, {})
    assert response is not None, exc
    return dict(response.data)


@dataclass
class Reply:
    """What to publish for one message: a result or a dead letter."""

    body: dict[str, Any]
    dead: bool = False
    routing_key: str = ""  # the program's name, for the results exchange
    message_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)


def message_id_of(payload: dict[str, Any], properties: dict[str, Any]) -> str | None:
    value = payload.get("message_id", properties.get("message_id"))
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_MESSAGE_ID:
        raise _refused(
            "invalid", f"must be a non-empty string of at most {MAX_MESSAGE_ID} characters", "message_id"
        )
    return value


def find_program(ref: Any, user: Any) -> runner.RunnableProgram:
    """The program a message names (id, or name in the key's projects), as the execute API finds
    it: `not_found` for one the key cannot see, `permission_denied` for one its role cannot run."""
    if not isinstance(ref, str) or not ref:
        raise _refused("invalid", "This field is required: a program id or name.", "program")
    try:
        program = runner.runnable_program(ref)
    except CognitiveProgram.DoesNotExist:
        named = list(
            access.visible(CognitiveProgram.objects.filter(name=ref), user).values_list("id", flat=True)[:2]
        )
        if len(named) > 1:
            raise _refused(
                "invalid", f"Several projects have a program named '{ref}': give its id.", "program"
            ) from None
        if not named:
            raise _refused("not_found", f"No program named or with id '{ref}'.", "program") from None
        program = runner.runnable_program(named[0])
    if not access.sees(user, program.program.project_id):
        raise _refused("not_found", f"No program named or with id '{ref}'.", "program")
    if not access.allows(user, program.program.project_id, RUN):
        raise _refused("permission_denied", f"The consumer's key may not run program '{ref}'.", "program")
    return program


def process(body: bytes, properties: dict[str, Any], principal: keys.Principal) -> Reply:
    """Run one message's execution (or find the one a redelivery already started)."""
    try:
        return _process(body, properties, principal)
    except Refused as refused:
        return Reply(refused.body, dead=True)
    finally:
        close_old_connections()


def _process(body: bytes, properties: dict[str, Any], principal: keys.Principal) -> Reply:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(error_body(exceptions.ParseError(f"JSON parse error - {exc}"))) from None
    if not isinstance(payload, dict):
        raise _refused("invalid", "A message must be a JSON object.", "")
    message_id = message_id_of(payload, properties)
    if message_id is not None:
        known = _known(message_id)
        if known is not None:
            return known
    program = find_program(payload.get("program"), principal.user)
    try:
        keys.check(principal.api_key.pk)
        data = execute_body({k: v for k, v in payload.items() if k not in ("program", "message_id", "wait")})
    except (DomainError, exceptions.ValidationError) as exc:
        raise Refused(error_body(exc)) from None

    def record(execution: CognitiveExecution) -> None:
        if message_id is not None:
            IngestedMessage.objects.create(message_id=message_id, execution=execution)

    for attempt in range(RATE_LIMIT_TRIES):
        try:
            outcome = runner.run_now(
                program,
                data["input"],
                data["variables"],
                user=principal.user,
                priority=data["priority"],
                use_cache=data["cache"],
                on_created=record,
            )
            break
        except RateLimitExceeded as exc:  # the key's or project's per-minute limit: wait, as a client would
            if attempt == RATE_LIMIT_TRIES - 1:
                raise Refused(error_body(exc)) from None
            time.sleep(exc.retry_after or 1.0)
        except DomainError as exc:
            raise Refused(error_body(exc)) from None
        except IntegrityError:  # the same message_id, delivered twice at once: the other one's row
            known = _known(message_id) if message_id is not None else None
            if known is None:
                raise
            return known
    return Reply(execution_data(outcome.execution), routing_key=program.program.name, message_id=message_id)


def _known(message_id: str) -> Reply | None:
    """The result of the execution a message with this id already started, waited for (or run,
    when the reaper put it back to `pending` after the consumer running it died)."""
    link = IngestedMessage.objects.filter(pk=message_id).select_related("execution__program").first()
    if link is None:
        return None
    execution = link.execution
    deadline = time.monotonic() + REDELIVERED_WAIT_S
    while not execution.is_finished and time.monotonic() < deadline:
        if execution.status == CognitiveExecution.Status.PENDING:
            runner.run_execution(execution.id)
        else:
            time.sleep(0.5)
        execution = CognitiveExecution.objects.select_related("program").get(pk=execution.pk)
    logger.info("message %s was delivered again: its execution %s is re-published", message_id, execution.id)
    return Reply(execution_data(execution), routing_key=execution.program.name, message_id=message_id)
