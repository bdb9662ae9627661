"""Domain errors are plain exceptions mapped in one table to the API's answer; the schema lists
every error an operation can answer; uploads that are not text are a 400 naming the problem."""

import ast
import importlib
import io
import pkgutil
from pathlib import Path

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.exceptions import APIException

from dspex_site.api.handler import STATUS_BY_ERROR, domain_error_response, status_for
from dspex_site.errors import DomainError
from executions.models import Batch, CognitiveExecution
from llm import budgets
from llm.resilience import RateLimitedError
from optimization.models import Dataset

ROOT = Path(__file__).resolve().parents[2]
APPS = ["caching", "dspex_site", "executions", "llm", "monitoring", "optimization", "programs"]
ERROR_REF = "#/components/schemas/Error"


def all_subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    return found.union(*(all_subclasses(c) for c in found)) if found else found


@pytest.fixture(scope="module")
def schema() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)


def operations(schema: dict):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", operation


def test_every_domain_error_of_the_project_has_its_status_in_the_one_table():
    for app in APPS:
        package = importlib.import_module(app)
        for module in pkgutil.walk_packages(package.__path__, f"{app}."):
            # Entry points are left out: importing one sets its process up (dspex_site.asgi sets
            # the environment's database pool default, which would leak into later tests).
            entry_point = module.name.endswith(("wsgi", "asgi", "asgi_worker", "gunicorn_conf"))
            if ".migrations" not in module.name and not entry_point:
                importlib.import_module(module.name)
    errors = all_subclasses(DomainError)
    assert len(errors) >= 10
    for error in errors:
        assert not issubclass(error, APIException), f"{error.__name__} is a DRF exception"
        mapped = [cls for cls in error.__mro__ if cls in STATUS_BY_ERROR and cls is not DomainError]
        assert mapped, f"{error.__name__} has no status in STATUS_BY_ERROR"


def test_the_budget_module_knows_nothing_of_the_api():
    tree = ast.parse((ROOT / "llm" / "budgets.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert not {name for name in imported if name.startswith(("rest_framework", "dspex_site.api"))}
    assert status_for(budgets.BudgetExceeded) == 402


def test_a_refused_provider_call_answers_503_with_retry_after():
    response = domain_error_response(RateLimitedError("openai", 2.2))
    assert response.status_code == 503 and response["Retry-After"] == "3"
    assert response.data["code"] == "rate_limited" and "retry in 2.2 s" in response.data["detail"]


@pytest.mark.django_db
def test_a_dataset_upload_that_is_not_utf8_is_a_400_naming_the_file(api):
    dataset = api.post("/api/v1/datasets/", {"name": "d"}, format="json").json()
    upload = io.BytesIO(b'{"input": {"question": "caf\xe9"}, "output": {"answer": "x"}}\n')
    upload.name = "rows.jsonl"

    response = api.post(f"/api/v1/datasets/{dataset['id']}/import/", {"file": upload}, format="multipart")

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid_text"
    assert body["errors"] == [{"path": "file", "message": "is not UTF-8 text (byte 0xe9 at offset 27)"}]
    assert not Dataset.objects.get(id=dataset["id"]).examples.exists()


@pytest.mark.django_db
def test_a_batch_upload_that_is_not_utf8_is_a_400_naming_the_line(api, make_program):
    program = make_program()
    upload = io.BytesIO(b'{"question": "one"}\n{"question": "\xff"}\n')
    upload.name = "inputs.jsonl"

    response = api.post("/api/v1/batches/", {"program": str(program.id), "file": upload}, format="multipart")

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid_text" and body["errors"][0]["path"] == "inputs[line 2]"
    assert not Batch.objects.exists() and not CognitiveExecution.objects.exists()


@pytest.mark.django_db
def test_a_spent_budget_still_answers_402_budget_exceeded(api, make_program, settings):
    program = make_program()
    settings.DSPEX_BUDGETS = {"programs": {str(program.id): {"daily": 0}}}
    budgets.invalidate()
    try:
        for wait in (True, False):
            body = {"input": {"question": "q"}, "wait": wait}
            response = api.post(f"/api/v1/programs/{program.id}/execute/", body, format="json")
            assert response.status_code == 402
            assert response.json()["code"] == "budget_exceeded" and response.json()["errors"] == []
    finally:
        budgets.invalidate()
    assert not CognitiveExecution.objects.exists()


@pytest.mark.django_db
def test_an_unknown_api_url_answers_the_json_error_body(api):
    response = api.get("/api/v1/programs/not.a-uuid/")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_every_operation_documents_its_error_responses(schema):
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {"code", "detail", "errors"}
    for label, operation in operations(schema):
        responses = operation["responses"]
        expected = {"401", "403", "429"}
        if any(p["in"] == "path" for p in operation.get("parameters", [])):
            expected.add("404")
        if "requestBody" in operation:
            expected |= {"400", "413", "415"}
        assert expected <= set(responses), f"{label}: missing {sorted(expected - set(responses))}"
        # The OpenAI-compatible endpoint answers errors in OpenAI's shape (programs/openai_api.py).
        ref = "#/components/schemas/OpenAIError" if label.split()[1].startswith("/v1/") else ERROR_REF
        for code in expected:
            schemas = [c["schema"] for c in responses[code]["content"].values()]
            assert all(ref in str(s) for s in schemas), f"{label} {code}"
        assert "Retry-After" in responses["429"]["headers"]


def test_domain_refusals_are_documented_where_they_can_happen(schema):
    execute = schema["paths"]["/api/v1/programs/{id}/execute/"]["post"]["responses"]
    for code in ("402", "409", "503"):
        one_of = execute[code]["content"]["application/json"]["schema"]["oneOf"]
        assert {s["$ref"] for s in one_of} == {"#/components/schemas/Execution", ERROR_REF}
    assert "program_archived" in execute["409"]["description"]
    batch = schema["paths"]["/api/v1/batches/"]["post"]["responses"]
    assert {"402", "409"} <= set(batch)
    cancel = schema["paths"]["/api/v1/executions/{id}/cancel/"]["post"]["responses"]
    assert "already_finished" in cancel["409"]["description"]


@pytest.mark.django_db
def test_rollback_answers_what_its_schema_says(api, make_program, schema):
    program = make_program()
    documented = schema["paths"]["/api/v1/programs/{id}/rollback/"]["post"]["responses"]["200"]
    ref = documented["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    properties = schema["components"]["schemas"][ref]

    response = api.post(f"/api/v1/programs/{program.id}/rollback/", {"result": None}, format="json")

    assert response.status_code == 200
    assert set(response.json()) == set(properties["properties"]) == {"program", "active_result"}
