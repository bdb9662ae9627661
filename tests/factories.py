"""factory_boy factories for every row the tests build: users and tokens, programs and versions,
executions and batches, datasets and examples, optimization runs, results and schedules,
corpora and documents.

Defaults make a valid, minimal row; tests pass only what they are about. Only models are
imported from production code, so factories never pull the execution path into a test.

    ProgramFactory(name="qa")                       # active, `question -> answer`
    ExecutionFactory(program=p)                     # pending, version = the program's
    ExecutionFactory(program=p, finished=True, trace=[lm_entry()])  # metrics summed from the trace
    DatasetFactory(examples=3)                      # with three examples
    OperatorFactory(), ViewerFactory(), UserFactory()  # role members (UserFactory: no role)
    OperatorFactory(project=ProjectFactory(name="b"))  # an operator of project b only
    ProgramFactory(project=project_b)               # rows go to the `default` project unless given
"""

from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from caching.models import ProgramCachePolicy
from executions.models import Batch, CognitiveExecution, Feedback
from optimization.models import (
    Dataset,
    Example,
    OptimizationResult,
    OptimizationRun,
    OptimizationSchedule,
)
from programs.models import CognitiveProgram, Corpus, Document, ProgramVersion
from projects.models import DEFAULT_PROJECT, ApiKey, Membership, Project

QA_PIPELINE = {"signature": "question -> answer"}

# --- people and projects ----------------------------------------------------------------------


class ProjectFactory(factory.django.DjangoModelFactory):
    """`ProjectFactory(name="team-b")`; rows built without a project go to `default`."""

    class Meta:
        model = Project
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"project-{n}")


def default_project() -> Project:
    return ProjectFactory(name=DEFAULT_PROJECT)


def _member(role: str | None) -> factory.PostGeneration:
    """Membership of a project with `role` (`project=<Project>` instead of `default`), as the
    data migration gives the members of the role's group."""

    def join(user: Any, create: bool, project: Any, **kwargs: Any) -> None:
        if not create or role is None:
            return
        Membership.objects.update_or_create(
            user=user, project=project or default_project(), defaults={"role": role}
        )

    return factory.PostGeneration(join)


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership
        django_get_or_create = ("user", "project")

    user = factory.SubFactory("tests.factories.UserFactory")
    project = factory.LazyFunction(default_project)
    role = Membership.Role.OPERATOR


def _role(group: str | None) -> factory.PostGeneration:
    """Membership of one of the real groups made by monitoring/0002 (`groups=[...]` overrides it)."""

    def join(user: Any, create: bool, names: list[str] | None, **kwargs: Any) -> None:
        names = [group] if names is None and group else names
        if create and names:
            user.groups.add(*Group.objects.filter(name__in=names))

    return factory.PostGeneration(join)


class UserFactory(factory.django.DjangoModelFactory):
    """A staff account in no group: authenticated, but no role (the "outsider").
    Its password is `pw-<username>-123456` unless given."""

    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password(factory.LazyAttribute(lambda u: f"pw-{u.username}-123456"))
    is_staff = True
    groups = _role(None)


class OperatorFactory(UserFactory):
    """A member of Operators and an operator of the `default` project (`project=<Project>`
    for another): reads, runs and edits there."""

    username = factory.Sequence(lambda n: f"operator{n}")
    groups = _role("Operators")
    project = _member(Membership.Role.OPERATOR)


class ViewerFactory(UserFactory):
    """A member of Viewers and a viewer of the `default` project (`project=` for another): reads only."""

    username = factory.Sequence(lambda n: f"viewer{n}")
    groups = _role("Viewers")
    project = _member(Membership.Role.VIEWER)


class SuperuserFactory(UserFactory):
    username = factory.Sequence(lambda n: f"admin{n}")
    is_superuser = True


class KeyFactory(factory.django.DjangoModelFactory):
    """An API key, issued as in production (`projects.keys.issue`): `KeyFactory(user=...)` is a key
    of that user in all their projects with every scope; `.key` is the secret (set on the built
    instance only, as the API shows it once). `project=`, `scopes=`, `expires_at=`, `service=True`."""

    class Meta:
        model = ApiKey

    name = factory.Sequence(lambda n: f"key-{n}")
    user = factory.SubFactory(UserFactory)

    @classmethod
    def _create(cls, model_class: type, *args: Any, **kwargs: Any) -> ApiKey:
        from projects import keys

        if kwargs.get("service"):
            kwargs.pop("user", None)
        issued = keys.issue(**kwargs)
        issued.api_key.key = issued.key  # type: ignore[attr-defined]
        return issued.api_key


TokenFactory = KeyFactory  # the API's keys work as `Token <key>` too, as DRF's tokens did


# --- programs ---------------------------------------------------------------------------------


class ProgramFactory(factory.django.DjangoModelFactory):
    """An active `question -> answer` program (its save snapshots version 1 itself)."""

    class Meta:
        model = CognitiveProgram

    name = factory.Sequence(lambda n: f"program-{n}")
    pipeline = factory.LazyFunction(lambda: dict(QA_PIPELINE))
    variables = factory.LazyFunction(dict)
    status = CognitiveProgram.Status.ACTIVE


class ProgramVersionFactory(factory.django.DjangoModelFactory):
    """An extra snapshot; a program's own saves already make one per version."""

    class Meta:
        model = ProgramVersion

    program = factory.SubFactory(ProgramFactory)
    version = factory.LazyAttribute(lambda v: v.program.version + 1)
    pipeline = factory.LazyAttribute(lambda v: v.program.pipeline)
    variables = factory.LazyAttribute(lambda v: v.program.variables)


class ProgramCachePolicyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ProgramCachePolicy

    program = factory.SubFactory(ProgramFactory)
    llm_cache = False


class CorpusFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Corpus

    name = factory.Sequence(lambda n: f"corpus-{n}")


class DocumentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Document

    corpus = factory.SubFactory(CorpusFactory)
    external_id = factory.Sequence(lambda n: f"doc-{n}")
    text = factory.Sequence(lambda n: f"Document {n} explains one thing.")


# --- executions -------------------------------------------------------------------------------


def trace_metrics(trace: list[dict]) -> dict[str, Any]:
    """The sums the runner stores in `metrics` for a trace (its `kind: lm` entries)."""
    lm = [e for e in trace if e.get("kind") == "lm"]
    return {
        "lm_calls": len(lm),
        "cache_hits": sum(1 for e in lm if e.get("cache_hit")),
        "prompt_tokens": sum(e.get("prompt_tokens", 0) for e in lm),
        "completion_tokens": sum(e.get("completion_tokens", 0) for e in lm),
        "cost_usd": round(sum(e.get("cost_usd") or 0 for e in lm), 10),
        "cost_complete": True,
    }


def usage_metrics(model: str = "sim/default", **sums: Any) -> dict[str, Any]:
    """`metrics` with per-model sums, as the hourly rollups read them."""
    return {**sums, "by_model": {model: sums}}


class ExecutionFactory(factory.django.DjangoModelFactory):
    """A pending execution of its program's current version.

    `finished=True`: succeeded with an output, a duration and `metrics` summed from `trace`, as
    the runner stores a finished run.
    """

    class Meta:
        model = CognitiveExecution

    class Params:
        finished = factory.Trait(
            status=CognitiveExecution.Status.SUCCEEDED,
            output=factory.LazyFunction(lambda: {"answer": "a"}),
            duration_ms=12,
            metrics=factory.LazyAttribute(lambda e: trace_metrics(e.trace)),
        )

    program = factory.SubFactory(ProgramFactory)
    program_version = factory.LazyAttribute(lambda e: e.program.version)
    input = factory.LazyFunction(lambda: {"question": "q"})
    trace = factory.LazyFunction(list)


class BatchFactory(factory.django.DjangoModelFactory):
    """A batch; `BatchFactory(items=3)` also writes three pending items in order."""

    class Meta:
        model = Batch
        skip_postgeneration_save = True

    program = factory.SubFactory(ProgramFactory)
    total = 0

    @factory.post_generation
    def items(self, create: bool, count: int | None, **kwargs: Any) -> None:
        if not (create and count):
            return
        for index in range(count):
            ExecutionFactory(program=self.program, batch=self, batch_index=index, **kwargs)
        Batch.objects.filter(pk=self.pk).update(total=count)
        self.total = count


# --- optimization -----------------------------------------------------------------------------


class DatasetFactory(factory.django.DjangoModelFactory):
    """A dataset; `DatasetFactory(examples=3)` also writes three examples."""

    class Meta:
        model = Dataset
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"dataset-{n}")

    @factory.post_generation
    def examples(self, create: bool, count: int | None, **kwargs: Any) -> None:
        if create and count:
            for position in range(count):
                ExampleFactory(dataset=self, position=position, **kwargs)


class ExampleFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Example

    dataset = factory.SubFactory(DatasetFactory)
    position = factory.Sequence(int)
    input = factory.Sequence(lambda n: {"question": f"What is {n} + {n}?"})
    output = factory.Sequence(lambda n: {"answer": str(2 * n)})


class OptimizationResultFactory(factory.django.DjangoModelFactory):
    """Stored parameters of one program version (`parameters`: a DSPy state, empty by default)."""

    class Meta:
        model = OptimizationResult

    program = factory.SubFactory(ProgramFactory)
    program_version = factory.LazyAttribute(lambda r: r.program.version)
    optimizer_type = "manual"
    parameters = factory.LazyFunction(dict)


class OptimizationRunFactory(factory.django.DjangoModelFactory):
    """A pending LabeledFewShot run with `exact_match` of the program's current version."""

    class Meta:
        model = OptimizationRun

    program = factory.SubFactory(ProgramFactory)
    program_version = factory.LazyAttribute(lambda r: r.program.version)
    dataset = factory.SubFactory(DatasetFactory, examples=4)  # enough to split into train and dev
    optimizer = "LabeledFewShot"
    metric = "exact_match"


class OptimizationScheduleFactory(factory.django.DjangoModelFactory):
    """An hourly schedule without its beat entry (optimization.schedules syncs that)."""

    class Meta:
        model = OptimizationSchedule

    name = factory.Sequence(lambda n: f"schedule-{n}")
    program = factory.SubFactory(ProgramFactory)
    dataset = factory.SubFactory(DatasetFactory, examples=4)
    optimizer = "LabeledFewShot"
    metric = "exact_match"
    interval_s = 3600


# --- sessions ---------------------------------------------------------------------------------

from datetime import timedelta  # noqa: E402  (appended section: the file's head is another engineer's)

from django.utils import timezone  # noqa: E402

from executions.models import Session  # noqa: E402

CHAT_PIPELINE = {"signature": "question, history: History -> answer"}


class SessionFactory(factory.django.DjangoModelFactory):
    """A live session (one day) of a chat program (`question, history: History -> answer`)."""

    class Meta:
        model = Session

    program = factory.SubFactory(ProgramFactory, pipeline=factory.LazyFunction(lambda: dict(CHAT_PIPELINE)))
    ttl_s = 86_400
    expires_at = factory.LazyFunction(lambda: timezone.now() + timedelta(days=1))


class FeedbackFactory(factory.django.DjangoModelFactory):
    """A current feedback entry on a finished execution, the execution's summary kept as
    executions.feedback keeps it (count and mean score of its current entries)."""

    class Meta:
        model = Feedback
        skip_postgeneration_save = True

    execution = factory.SubFactory(ExecutionFactory, finished=True)
    score = 0.5
    label = ""

    @factory.post_generation
    def summary(self, create: bool, extracted: Any, **kwargs: Any) -> None:
        if not create:
            return
        current = Feedback.objects.filter(execution=self.execution, current=True)
        scores = [s for s in current.values_list("score", flat=True) if s is not None]
        self.execution.feedback_count = current.count()
        self.execution.feedback_score = sum(scores) / len(scores) if scores else None
        CognitiveExecution.objects.filter(pk=self.execution.pk).update(
            feedback_count=self.execution.feedback_count, feedback_score=self.execution.feedback_score
        )
