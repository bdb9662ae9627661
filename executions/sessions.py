"""Sessions: multi-turn conversations with one program (README "Sessions", docs/architecture.md).

A session is a row with a program, metadata and a TTL; its turns are ordinary executions with
`session` and `turn` set, run by the one runner path (`runner.run_now` for `wait=true`,
`runner.create_execution` + the worker for queued turns). Everything a client sees about the
turns is read from those executions, so it can never disagree with them:

- **history**: the session's *succeeded* turns in turn order. A program input of type `History`
  gets the last `DSPEX_SESSION_HISTORY_TURNS` of them as
  `{"messages": [{<turn's inputs>, <turn's outputs>}, ...]}`, written into the new execution's
  stored input when the turn is created, so a queued turn and a waited one see the same history,
  the answer cache keys on it, and the execution shows exactly what the program was given;
- **numbering**: a new turn is number (last succeeded turn) + 1. A failed or cancelled turn is
  kept as an execution with its number, but does not advance the conversation: the next turn
  takes the same number again;
- **busy**: a session is busy while one of its turns is pending or running. Creating a turn
  locks the session row (the UPDATE of its expiry, in the transaction that inserts the execution),
  checks that no other turn is unfinished and that no turn finished since the history was read,
  and pushes `expires_at` (sliding TTL); a second concurrent turn therefore gets 409
  `session_busy` (refused, not queued). Postgres is the only state: any web process or worker
  can serve any turn;
- **a process killed mid-turn** leaves a `running` execution whose heartbeat stops: the
  executions' reaper (`executions.reap`) re-queues it to a worker (or fails it once its
  attempts are spent) like any other execution, and the session is free again as soon as the
  turn finishes either way. Nothing of the session is to be repaired.
"""

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone

from dspex_site.errors import DomainError
from executions.models import CognitiveExecution, Session
from programs.spec import ProgramSpecError, SpecError, program_input_fields

Status = CognitiveExecution.Status
UNFINISHED = (Status.PENDING, Status.RUNNING)


class SessionBusy(DomainError):
    """Another turn of this session is pending or running (`session_busy`)."""

    code = "session_busy"


class SessionExpired(DomainError):
    """The session's TTL passed without a turn (`session_expired`); it is pruned soon."""

    code = "session_expired"


def history_fields(program: Any) -> tuple[str, ...]:
    """The program's inputs of type History: what a session fills. A program without one may
    have sessions too; its turns are recorded, and nothing is injected."""
    return tuple(name for name, text in program_input_fields(program.pipeline).items() if text == "History")


def create_session(program: Any, *, metadata: dict, ttl_s: int, user: Any = None) -> Session:
    now = timezone.now()
    return Session.objects.create(
        program=program,
        metadata=metadata,
        ttl_s=ttl_s,
        created_by=user if getattr(user, "is_authenticated", False) else None,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )


def with_turn_state(queryset: "models.QuerySet[Session]") -> "models.QuerySet[Session]":
    """Sessions annotated with `turns` (the last succeeded turn, 0 without one) and `busy` (a turn
    is pending or running): one query for a whole list page."""
    turns = CognitiveExecution.objects.filter(session=models.OuterRef("pk"), status=Status.SUCCEEDED)
    running = CognitiveExecution.objects.filter(session=models.OuterRef("pk"), status__in=UNFINISHED)
    return queryset.annotate(
        turns=Coalesce(
            models.Subquery(turns.order_by("-turn").values("turn")[:1]), 0, output_field=models.IntegerField()
        ),
        busy=models.Exists(running),
    )


def history(
    session: Session, limit: int | None = None, fields: tuple[str, ...] | None = None
) -> list[dict[str, Any]]:
    """The session's succeeded turns, oldest first (the last `limit` of them): `turn`, `input`
    (as the client sent it: without the History `fields` the session filled), `output`, `execution`."""
    if fields is None:
        fields = history_fields(session.program)
    rows = CognitiveExecution.objects.filter(session=session, status=Status.SUCCEEDED).order_by("-turn")
    if limit is not None:
        rows = rows[:limit]
    return [
        {
            "turn": turn,
            "input": {k: v for k, v in (input_data or {}).items() if k not in fields},
            "output": output,
            "execution": str(execution_id),
        }
        for turn, input_data, output, execution_id in reversed(
            list(rows.values_list("turn", "input", "output", "id"))
        )
    ]


@dataclass
class Turn:
    """A turn about to be stored: its number, the input the program gets (History fields filled)
    and what it was prepared from (checked again when the turn claims the session)."""

    session: Session
    number: int
    input: Any
    fields: tuple[str, ...] = field(default=())

    def claim(self, execution: CognitiveExecution) -> None:
        """In the transaction that inserts `execution`: make it the session's one unfinished turn,
        or raise SessionBusy / SessionExpired (rolling the insert back).

        The UPDATE that pushes `expires_at` back (sliding TTL) is also the lock: it holds the
        session row (`FOR NO KEY UPDATE`, which foreign-key checks of rows pointing at it do not
        wait on) until the transaction ends, so concurrent claims of one session run one after
        the other and the second sees the first's turn."""
        now, session = timezone.now(), self.session
        expires_at = now + timedelta(seconds=session.ttl_s)
        if not Session.objects.filter(id=session.id, expires_at__gt=now).update(expires_at=expires_at):
            if Session.objects.filter(id=session.id).exists():
                raise SessionExpired(f"Session {session.id} expired.")
            raise Session.DoesNotExist(f"No session {session.id}.")
        others = CognitiveExecution.objects.filter(session_id=session.id).exclude(id=execution.id)
        state = others.aggregate(
            running=models.Count("id", filter=models.Q(status__in=UNFINISHED)),
            last=models.Max("turn", filter=models.Q(status=Status.SUCCEEDED)),
        )
        if state["running"]:
            running = others.filter(status__in=UNFINISHED).values_list("id", flat=True).first()
            raise SessionBusy(
                f"Session {session.id} has a turn running (execution {running}); retry after it."
            )
        last = state["last"] or 0
        if last != self.number - 1:  # a turn finished between reading the history and now
            raise SessionBusy(f"Session {session.id} moved on to turn {last + 1} meanwhile; retry.")
        session.expires_at = expires_at


def prepare_turn(session: Session, program: Any, input_data: Any) -> Turn:
    """The next turn of `session` (of `program`) on the client's input: ProgramSpecError when the
    input sets a History field itself (the session fills it), SessionExpired past the TTL."""
    if session.is_expired:
        raise SessionExpired(f"Session {session.id} expired at {session.expires_at.isoformat()}.")
    fields = history_fields(program)
    if isinstance(input_data, dict):
        given = [name for name in fields if name in input_data]
        if given:
            raise ProgramSpecError(
                [
                    SpecError(
                        f"input.{name}", "is filled by the session from its earlier turns; leave it out"
                    )
                    for name in given
                ]
            )
    earlier = history(session, settings.DSPEX_SESSION_HISTORY_TURNS, fields)
    number = (earlier[-1]["turn"] if earlier else 0) + 1
    if fields and isinstance(input_data, dict):
        messages = [{**turn["input"], **(turn["output"] or {})} for turn in earlier]
        input_data = {**input_data, **{name: {"messages": messages} for name in fields}}
    return Turn(session, number, input_data, fields)


def prune(now: Any = None) -> tuple[int, bool]:
    """Delete expired sessions, one bounded chunk per call: (deleted, more left). Their turns stay
    as plain executions (`session` set to null), kept and pruned like any other execution."""
    now = now or timezone.now()
    size = settings.DSPEX_PRUNE_BATCH_SIZE
    ids = list(
        Session.objects.filter(expires_at__lte=now).order_by("expires_at").values_list("id", flat=True)[:size]
    )
    deleted = Session.objects.filter(id__in=ids).delete()[1].get(Session._meta.label, 0) if ids else 0
    return deleted, len(ids) == size
