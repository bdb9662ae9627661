"""The data migrations of projects on existing data: migrate back to before projects existed,
make rows with the historical models, migrate forward, check that everything is in `default`
and that group members became members with their group's role."""

from collections.abc import Iterator

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("projects", None)]  # unapplies programs 0003, optimization 0006, monitoring 0005 too


@pytest.fixture
def executor(transactional_db: None) -> Iterator[MigrationExecutor]:
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    yield executor
    executor = MigrationExecutor(connection)  # whatever the test did, leave the schema current
    executor.migrate(latest)


def test_existing_rows_and_group_members_move_into_the_default_project(executor: MigrationExecutor) -> None:
    executor.migrate(BEFORE)
    old = (
        MigrationExecutor(connection)
        .loader.project_state(
            [
                ("programs", "0002_corpus_document"),
                ("optimization", "0005_job_lifecycle_worker"),
                ("monitoring", "0004_rollup_schedule"),
            ]
        )
        .apps
    )
    Group, User = old.get_model("auth", "Group"), old.get_model("auth", "User")
    viewers, operators = Group.objects.get(name="Viewers"), Group.objects.get(name="Operators")
    viewer = User.objects.create(username="old-viewer")
    viewer.groups.add(viewers)
    operator = User.objects.create(username="old-operator")
    operator.groups.add(operators, viewers)  # both: the stronger role wins
    User.objects.create(username="old-root", is_superuser=True, is_staff=True)
    User.objects.create(username="old-nobody")
    program = old.get_model("programs", "CognitiveProgram").objects.create(
        name="old-program", pipeline={"signature": "q -> a"}
    )
    old.get_model("programs", "Corpus").objects.create(name="old-corpus")
    old.get_model("optimization", "Dataset").objects.create(name="old-dataset")
    old.get_model("monitoring", "AuditEvent").objects.create(
        action="create", object_type="programs.CognitiveProgram", object_id=str(program.id), channel="api"
    )
    old.get_model("monitoring", "AuditEvent").objects.create(
        action="purge", object_type="caching.NamedCache", object_id="llm", channel="api"
    )

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    from monitoring.models import AuditEvent
    from optimization.models import Dataset
    from programs.models import CognitiveProgram, Corpus
    from projects.models import Membership, Project

    default = Project.objects.get(name="default")
    assert CognitiveProgram.objects.get(name="old-program").project == default
    assert Corpus.objects.get(name="old-corpus").project == default
    assert Dataset.objects.get(name="old-dataset").project == default
    roles = dict(Membership.objects.filter(project=default).values_list("user__username", "role"))
    assert roles == {"old-viewer": "viewer", "old-operator": "operator"}  # superusers need none
    assert AuditEvent.objects.get(action="create").project == default
    assert AuditEvent.objects.get(action="purge").project is None  # site-wide


def test_the_migrations_run_on_an_empty_database_and_back(executor: MigrationExecutor) -> None:
    executor.migrate(BEFORE)
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    from projects.models import Project

    assert Project.objects.filter(name="default").exists()
