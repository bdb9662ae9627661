"""`Client(base_url, token=...)`: the DSPex API from Python.

    from dspex_client import Client

    c = Client("http://127.0.0.1:8000", token="dsx_...")
    qa = c.programs.create(name="qa", pipeline={"signature": "question -> answer"}, status="active")
    run = qa.execute({"question": "What is 12 * 7?"})      # waits; an Execution
    print(run.output, run.metrics["cost_usd"])

Every call authenticates with `Authorization: Bearer <token>`. An error answer raises a
`DSPexError` subclass carrying the API's `code` (`errors.py`). A 429 or 503 — refusals made
before anything ran or was stored — is retried up to `max_retries` times, waiting what
`Retry-After` says (else an exponential backoff with jitter, capped at `max_backoff_s`).
"""

import json
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from dspex_client.errors import DSPexError, error_for
from dspex_client.models import ApiKey, Batch, Dataset, Execution, OptimizationRun, Project, Session

RETRIED = frozenset({429, 503})


class Transport:
    """HTTP with the key, the error mapping and the retries."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        max_backoff_s: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.max_retries, self.max_backoff_s = max_retries, max_backoff_s
        self.http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.retries_made = 0  # for callers who want to know (and tests)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise DSPexError(0, "unreachable", f"{method} {path}: {exc}") from exc
            if response.status_code < 400:
                return response
            retry_after = _retry_after(response)
            if response.status_code in RETRIED and attempt < self.max_retries:
                attempt += 1
                self.retries_made += 1
                backoff = min(self.max_backoff_s, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                time.sleep(min(self.max_backoff_s, retry_after) if retry_after is not None else backoff)
                continue
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text
            raise error_for(response.status_code, body, retry_after)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def events(self, method: str, path: str, **kwargs: Any) -> Iterator["StreamEvent"]:
        """The server-sent events of a streaming endpoint, parsed, as they arrive. A refusal
        (answered before the stream) raises its `DSPexError`, as `request` does (not retried:
        a stream is consumed once)."""
        with self.http.stream(method, path, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                try:
                    body: Any = response.json()
                except ValueError:
                    body = response.text
                raise error_for(response.status_code, body, _retry_after(response))
            event, data = "message", list[str]()
            for line in response.iter_lines():
                if line == "":
                    if data:
                        yield StreamEvent(event, json.loads("\n".join(data)))
                    event, data = "message", []
                elif line.startswith(":"):
                    continue
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())

    def pages(
        self, path: str, params: dict[str, Any] | None = None, page: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every row of a list endpoint, following its pages."""
        offset = 0
        while True:
            body = self.json("GET", path, params={**(params or {}), "limit": page, "offset": offset})
            yield from body["results"]
            offset += len(body["results"])
            if not body.get("next") or not body["results"]:
                return


@dataclass(frozen=True)
class StreamEvent:
    """One event of a stream (`token`, `step`, `done`, `error`, `status`) and its parsed data;
    `execution` is the finished execution of a `done` event."""

    event: str
    data: Any

    @property
    def execution(self) -> "Execution | None":
        return Execution.from_api(self.data) if self.event == "done" else None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


# --- programs and executions ---------------------------------------------------------------------


class ProgramHandle:
    """A stored program: its fields (`raw`, and the common ones as attributes) and what it runs."""

    def __init__(self, api: Transport, data: dict[str, Any]) -> None:
        self._api, self.raw = api, data

    id = property(lambda self: self.raw["id"])
    name = property(lambda self: self.raw["name"])
    version = property(lambda self: self.raw.get("version"))
    status = property(lambda self: self.raw.get("status"))
    project = property(lambda self: self.raw.get("project"))
    input_fields = property(lambda self: self.raw.get("input_fields"))
    output_fields = property(lambda self: self.raw.get("output_fields"))

    def __repr__(self) -> str:
        return f"<Program {self.name} v{self.version} ({self.id})>"

    def refresh(self) -> "ProgramHandle":
        self.raw = self._api.json("GET", f"/api/v1/programs/{self.id}/")
        return self

    def update(self, **fields: Any) -> "ProgramHandle":
        """PATCH the given fields (`pipeline`, `variables`, `description`, `status`, ...)."""
        self.raw = self._api.json("PATCH", f"/api/v1/programs/{self.id}/", json=fields)
        return self

    def delete(self) -> None:
        self._api.request("DELETE", f"/api/v1/programs/{self.id}/")

    def execute(
        self,
        input: dict[str, Any],
        *,
        wait: bool = True,
        variables: dict[str, Any] | None = None,
        priority: str | None = None,
        cache: bool | None = None,
        timeout_s: float = 300.0,
        alias: str | None = None,
    ) -> Execution:
        """Run the program on `input`. `wait=True`: in the request, answered finished; `wait=False`:
        queued (202), then followed here until it finishes (or `timeout_s`) unless `follow=False`
        is wanted: use `submit`."""
        if not wait:
            return self.submit(input, variables=variables, priority=priority, cache=cache, alias=alias).wait(
                timeout_s
            )
        body = _without_none(
            {
                "input": input,
                "wait": True,
                "variables": variables,
                "priority": priority,
                "cache": cache,
                "alias": alias,
            }
        )
        return Execution.from_api(self._api.json("POST", f"/api/v1/programs/{self.id}/execute/", json=body))

    def stream(
        self,
        input: dict[str, Any],
        *,
        variables: dict[str, Any] | None = None,
        priority: str | None = None,
        cache: bool | None = None,
    ) -> Iterator[StreamEvent]:
        """Run the program on `input` with `"stream": true`: its events (`step`, `token`, then
        `done` with the finished execution or `error`) as they arrive."""
        body = _without_none(
            {"input": input, "stream": True, "variables": variables, "priority": priority, "cache": cache}
        )
        return self._api.events("POST", f"/api/v1/programs/{self.id}/execute/", json=body)

    def submit(
        self,
        input: dict[str, Any],
        *,
        variables: dict[str, Any] | None = None,
        priority: str | None = None,
        cache: bool | None = None,
        alias: str | None = None,
    ) -> "ExecutionHandle":
        """Queue an execution (202) and return a handle to follow it."""
        body = _without_none(
            {
                "input": input,
                "wait": False,
                "variables": variables,
                "priority": priority,
                "cache": cache,
                "alias": alias,
            }
        )
        data = self._api.json("POST", f"/api/v1/programs/{self.id}/execute/", json=body)
        return ExecutionHandle(self._api, data["id"])

    # --- releases (docs/releases.md) -------------------------------------------------------------
    def aliases(self) -> list[dict[str, Any]]:
        """The program's aliases: `name`, `version`, `optimization_result`, `updated_at`."""
        return list(self._api.json("GET", f"/api/v1/programs/{self.id}/aliases/"))

    def set_alias(self, name: str, version: int, optimization_result: str | None = None) -> dict[str, Any]:
        """Point alias `name` at a release (a version and an optimization result or none)."""
        body = {"version": version, "optimization_result": optimization_result}
        return dict(self._api.json("PUT", f"/api/v1/programs/{self.id}/aliases/{name}/", json=body))

    def start_canary(
        self,
        version: int,
        optimization_result: str | None = None,
        *,
        percent: float,
        sticky_by: str = "session",
        promote_when: dict[str, Any] | None = None,
        abort_when: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Serve the candidate release to `percent` % of the default traffic (409 if one runs)."""
        body = _without_none(
            {
                "candidate": {"version": version, "optimization_result": optimization_result},
                "percent": percent,
                "sticky_by": sticky_by,
                "promote_when": promote_when,
                "abort_when": abort_when,
            }
        )
        return dict(self._api.json("POST", f"/api/v1/programs/{self.id}/canary/", json=body))

    def canary(self) -> dict[str, Any]:
        """The running (else latest) canary with per-arm figures and its decision log."""
        return dict(self._api.json("GET", f"/api/v1/programs/{self.id}/canary/"))

    def promote_canary(self) -> dict[str, Any]:
        return dict(self._api.json("POST", f"/api/v1/programs/{self.id}/canary/promote/"))

    def abort_canary(self) -> dict[str, Any]:
        return dict(self._api.json("POST", f"/api/v1/programs/{self.id}/canary/abort/"))

    def schedule(
        self,
        name: str,
        *,
        optimizer: str,
        metric: str | dict[str, Any],
        dataset: Any = None,
        from_executions: dict[str, Any] | None = None,
        canary: dict[str, Any] | None = None,
        cron: str | None = None,
        interval_s: int | None = None,
        config: dict[str, Any] | None = None,
        split: dict[str, Any] | None = None,
        apply: bool = False,
        enabled: bool = True,
    ) -> dict[str, Any]:
        """A recurring optimization (`cron` or `interval_s`) on a `dataset`, or the unattended
        loop: `from_executions` builds each tick's examples from production executions, `canary`
        starts a canary of a result that beats the baseline instead of applying it
        (docs/releases.md, "The loop")."""
        body = _without_none(
            {
                "name": name,
                "program": self.id,
                "optimizer": optimizer,
                "metric": metric,
                "dataset": getattr(dataset, "id", dataset),
                "from_executions": from_executions,
                "canary": canary,
                "cron": cron,
                "interval_s": interval_s,
                "config": config,
                "split": split,
                "apply": apply,
                "enabled": enabled,
            }
        )
        return dict(self._api.json("POST", "/api/v1/schedules/", json=body))

    def batch(
        self,
        inputs: Iterable[dict[str, Any]] | str | Path,
        *,
        variables: dict[str, Any] | None = None,
        concurrency: int | None = None,
        priority: str | None = None,
    ) -> "BatchHandle":
        """Start a batch: `inputs` a list of input objects, or the path of a JSONL file (uploaded)."""
        fields = _without_none({"variables": variables, "concurrency": concurrency, "priority": priority})
        if isinstance(inputs, str | Path):
            data = {
                "program": self.id,
                **{k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in fields.items()},
            }
            with open(inputs, "rb") as handle:
                files = {"file": (Path(inputs).name, handle, "application/x-ndjson")}
                answer = self._api.json("POST", "/api/v1/batches/", data=data, files=files)
        else:
            answer = self._api.json(
                "POST", "/api/v1/batches/", json={"program": self.id, "inputs": list(inputs), **fields}
            )
        return BatchHandle(self._api, Batch.from_api(answer))

    def optimize(
        self,
        *,
        optimizer: str,
        dataset: "str | Dataset",
        metric: Any,
        config: dict[str, Any] | None = None,
        split: dict[str, Any] | None = None,
        apply: bool = False,
        time_limit_s: int | None = None,
        cost_budget_usd: float | None = None,
    ) -> "RunHandle":
        """Start an optimization run (202) and return a handle to follow, cancel or apply it."""
        body = _without_none(
            {
                "optimizer": optimizer,
                "dataset": dataset.id if isinstance(dataset, Dataset) else dataset,
                "metric": metric,
                "config": config,
                "split": split,
                "apply": apply,
                "time_limit_s": time_limit_s,
                "cost_budget_usd": cost_budget_usd,
            }
        )
        data = self._api.json("POST", f"/api/v1/programs/{self.id}/optimize/", json=body)
        return RunHandle(self._api, OptimizationRun.from_api(data))

    def executions(self, **filters: Any) -> Iterator[Execution]:
        return (
            Execution.from_api(row)
            for row in self._api.pages("/api/v1/executions/", {"program": self.id, **filters})
        )

    def import_state(self, state: "dict[str, Any] | str | Path") -> dict[str, Any]:
        """Store what plain DSPy's `module.save(path)` wrote (the dict, or the file's path) as an
        optimization result of this program (all or nothing); apply it with `apply_result`."""
        if isinstance(state, str | Path):
            state = json.loads(Path(state).read_text())
        return self._api.json("POST", f"/api/v1/programs/{self.id}/import-state/", json=state)

    def export_state(self, result_id: str, path: str | Path | None = None) -> dict[str, Any]:
        """A result's state as plain DSPy's `module.load(path)` reads it (written to `path` if given)."""
        state = self._api.json("GET", f"/api/v1/optimization-results/{result_id}/dspy-state/")
        if path is not None:
            Path(path).write_text(json.dumps(state, indent=2))
        return state

    def apply_result(self, result_id: str) -> dict[str, Any]:
        return self._api.json("POST", f"/api/v1/optimization-results/{result_id}/apply/")

    def session(self, *, metadata: dict[str, Any] | None = None, ttl_s: int | None = None) -> "SessionHandle":
        """A new conversation with this program: each `turn` gets the earlier ones as its history."""
        body = _without_none({"program": self.id, "metadata": metadata, "ttl_s": ttl_s})
        return SessionHandle(
            self._api, Session.from_api(self._api.json("POST", "/api/v1/sessions/", json=body))
        )


class SessionHandle:
    """A multi-turn session: the program's `History` input is filled from the earlier turns."""

    def __init__(self, api: Transport, session: Session) -> None:
        self._api, self.session = api, session

    @property
    def id(self) -> str:
        assert self.session.id is not None
        return self.session.id

    def turn(
        self, input: dict[str, Any], *, wait: bool = True, timeout_s: float = 300.0, **options: Any
    ) -> Execution:
        """One turn (an execution with `session` and `turn`). A turn while another one of this
        session runs raises `Conflict` with code `session_busy`."""
        body = {"input": input, "wait": wait, **_without_none(options)}
        data = self._api.json("POST", f"/api/v1/sessions/{self.id}/turns/", json=body)
        if wait:
            return Execution.from_api(data)
        return ExecutionHandle(self._api, data["id"]).wait(timeout_s)

    def stream(self, input: dict[str, Any], **options: Any) -> Iterator[StreamEvent]:
        """One turn with `"stream": true`: its events as they arrive (see `ProgramHandle.stream`)."""
        body = {"input": input, "stream": True, **_without_none(options)}
        return self._api.events("POST", f"/api/v1/sessions/{self.id}/turns/", json=body)

    def refresh(self) -> Session:
        """The session with its `history` (succeeded turns, oldest first)."""
        self.session = Session.from_api(self._api.json("GET", f"/api/v1/sessions/{self.id}/"))
        return self.session

    def delete(self) -> None:
        self._api.request("DELETE", f"/api/v1/sessions/{self.id}/")


class ExecutionHandle:
    def __init__(self, api: Transport, execution_id: str) -> None:
        self._api, self.id = api, execution_id

    def get(self) -> Execution:
        return Execution.from_api(self._api.json("GET", f"/api/v1/executions/{self.id}/"))

    def wait(self, timeout_s: float = 300.0, poll_s: float = 0.25) -> Execution:
        """Poll until the execution finished; TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            execution = self.get()
            if execution.is_finished:
                return execution
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution {self.id} still {execution.status} after {timeout_s:.0f} s")
            time.sleep(poll_s)
            poll_s = min(poll_s * 1.5, 2.0)

    def cancel(self) -> Execution:
        return Execution.from_api(self._api.json("POST", f"/api/v1/executions/{self.id}/cancel/"))

    def feedback(
        self,
        *,
        score: float | None = None,
        label: str | None = None,
        corrected_output: dict[str, Any] | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Give feedback on the (finished) execution; your new entry supersedes your earlier one."""
        body = _without_none(
            {"score": score, "label": label, "corrected_output": corrected_output, "comment": comment}
        )
        return self._api.json("POST", f"/api/v1/executions/{self.id}/feedback/", json=body)

    def feedback_entries(self) -> list[dict[str, Any]]:
        return self._api.json("GET", f"/api/v1/executions/{self.id}/feedback/")


class BatchHandle:
    def __init__(self, api: Transport, batch: Batch) -> None:
        self._api, self.batch = api, batch

    @property
    def id(self) -> str:
        assert self.batch.id is not None
        return self.batch.id

    def refresh(self) -> Batch:
        self.batch = Batch.from_api(self._api.json("GET", f"/api/v1/batches/{self.id}/"))
        return self.batch

    def follow(self, *, progress: bool = True, timeout_s: float = 3600.0, poll_s: float = 0.5) -> Batch:
        """Wait until every item finished (or the batch was cancelled), with a tqdm progress bar."""
        from tqdm import tqdm

        deadline = time.monotonic() + timeout_s
        with tqdm(total=self.batch.total, unit="exec", disable=not progress) as bar:
            while True:
                batch = self.refresh()
                bar.update((batch.finished or 0) - bar.n)
                counts = batch.counts or {}
                bar.set_postfix(failed=counts.get("failed", 0), running=counts.get("running", 0))
                if batch.status in ("finished", "cancelled"):
                    return batch
                if time.monotonic() > deadline:
                    raise TimeoutError(f"batch {self.id} not finished after {timeout_s:.0f} s")
                time.sleep(poll_s)

    def results(self) -> list[dict[str, Any]]:
        """One row per input, in input order: index, execution, input, output, status, error."""
        text = self._api.request("GET", f"/api/v1/batches/{self.id}/results/").text
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def download(self, path: str | Path) -> Path:
        """The results as a JSONL file."""
        target = Path(path)
        with self._api.http.stream("GET", f"/api/v1/batches/{self.id}/results/") as response:
            if response.status_code >= 400:
                response.read()
                raise error_for(response.status_code, response.json(), None)
            with target.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        return target

    def cancel(self) -> Batch:
        self.batch = Batch.from_api(self._api.json("POST", f"/api/v1/batches/{self.id}/cancel/"))
        return self.batch


class RunHandle:
    def __init__(self, api: Transport, run: OptimizationRun) -> None:
        self._api, self.run = api, run

    @property
    def id(self) -> str:
        assert self.run.id is not None
        return self.run.id

    def refresh(self) -> OptimizationRun:
        self.run = OptimizationRun.from_api(self._api.json("GET", f"/api/v1/optimizations/{self.id}/"))
        return self.run

    def follow(self, *, timeout_s: float = 4 * 3600.0, poll_s: float = 1.0) -> OptimizationRun:
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.refresh()
            if run.is_finished:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"optimization {self.id} still {run.status} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def cancel(self) -> OptimizationRun:
        self.run = OptimizationRun.from_api(
            self._api.json("POST", f"/api/v1/optimizations/{self.id}/cancel/")
        )
        return self.run

    def apply(self) -> dict[str, Any]:
        """Make the run's result the program's active parameters."""
        if self.run.result is None:
            self.refresh()
        if self.run.result is None:
            raise DSPexError(409, "no_result", f"optimization {self.id} has no result ({self.run.status})")
        return self._api.json("POST", f"/api/v1/optimization-results/{self.run.result}/apply/")


# --- collections ---------------------------------------------------------------------------------


class Programs:
    def __init__(self, api: Transport) -> None:
        self._api = api

    def get(self, program_id: str) -> ProgramHandle:
        return ProgramHandle(self._api, self._api.json("GET", f"/api/v1/programs/{program_id}/"))

    def by_name(self, name: str) -> ProgramHandle:
        for row in self._api.pages("/api/v1/programs/", {"name": name}):
            if row["name"] == name:
                return ProgramHandle(self._api, row)
        raise error_for(404, {"code": "not_found", "detail": f"No program named {name!r}."}, None)

    def create(self, *, name: str, pipeline: dict[str, Any], **fields: Any) -> ProgramHandle:
        body = {"name": name, "pipeline": pipeline, **fields}
        return ProgramHandle(self._api, self._api.json("POST", "/api/v1/programs/", json=body))

    def list(self, **filters: Any) -> list[ProgramHandle]:
        return [ProgramHandle(self._api, row) for row in self._api.pages("/api/v1/programs/", filters)]


class Executions:
    def __init__(self, api: Transport) -> None:
        self._api = api

    def get(self, execution_id: str) -> Execution:
        return ExecutionHandle(self._api, execution_id).get()

    def handle(self, execution_id: str) -> ExecutionHandle:
        return ExecutionHandle(self._api, execution_id)

    def list(self, **filters: Any) -> Iterator[Execution]:
        return (Execution.from_api(row) for row in self._api.pages("/api/v1/executions/", filters))


class Datasets:
    def __init__(self, api: Transport) -> None:
        self._api = api

    def create(self, *, name: str, **fields: Any) -> Dataset:
        return Dataset.from_api(self._api.json("POST", "/api/v1/datasets/", json={"name": name, **fields}))

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.from_api(self._api.json("GET", f"/api/v1/datasets/{dataset_id}/"))

    def from_executions(self, *, name: str, program: "str | ProgramHandle", **options: Any) -> dict[str, Any]:
        """A dataset built from a program's executions (`min_score`, `since`, `until`,
        `use_corrected_output`, `only_succeeded`, `limit`); the answer counts what was included
        and skipped."""
        program_id = program.id if isinstance(program, ProgramHandle) else program
        body = {"name": name, "program": program_id, **_without_none(options)}
        return self._api.json("POST", "/api/v1/datasets/from-executions/", json=body)

    def import_jsonl(
        self, dataset: "str | Dataset", path: str | Path, *, replace: bool = False
    ) -> dict[str, Any]:
        """Upload examples (`{"input": {...}, "output": {...}}` per line); all or nothing."""
        dataset_id = dataset.id if isinstance(dataset, Dataset) else dataset
        with open(path, "rb") as handle:
            files = {"file": (Path(path).name, handle, "application/x-ndjson")}
            return self._api.json(
                "POST",
                f"/api/v1/datasets/{dataset_id}/import/",
                data={"replace": str(replace).lower()},
                files=files,
            )


class Optimizations:
    def __init__(self, api: Transport) -> None:
        self._api = api

    def get(self, run_id: str) -> RunHandle:
        return RunHandle(
            self._api, OptimizationRun.from_api(self._api.json("GET", f"/api/v1/optimizations/{run_id}/"))
        )


class Keys:
    def __init__(self, api: Transport) -> None:
        self._api = api

    def create(
        self,
        name: str,
        *,
        project: int | None = None,
        scopes: list[str] | None = None,
        expires_at: str | None = None,
        service: bool = False,
    ) -> ApiKey:
        """A new key; its secret is in `.key` of this answer only."""
        body = _without_none({"name": name, "project": project, "scopes": scopes, "expires_at": expires_at})
        if service:
            body["service"] = True
        return ApiKey.from_api(self._api.json("POST", "/api/v1/keys/", json=body))

    def list(self) -> list[ApiKey]:
        return [ApiKey.from_api(row) for row in self._api.pages("/api/v1/keys/")]

    def revoke(self, key: "int | ApiKey") -> ApiKey:
        key_id = key.id if isinstance(key, ApiKey) else key
        return ApiKey.from_api(self._api.json("POST", f"/api/v1/keys/{key_id}/revoke/"))


class Client:
    """The API of one DSPex service, as one API key sees it."""

    def __init__(self, base_url: str, token: str, **transport: Any) -> None:
        self.api = Transport(base_url, token, **transport)
        self.programs = Programs(self.api)
        self.executions = Executions(self.api)
        self.datasets = Datasets(self.api)
        self.optimizations = Optimizations(self.api)
        self.keys = Keys(self.api)

    def projects(self) -> list[Project]:
        return [Project.from_api(row) for row in self.api.pages("/api/v1/projects/")]

    def session(self, session_id: str) -> SessionHandle:
        return SessionHandle(
            self.api, Session.from_api(self.api.json("GET", f"/api/v1/sessions/{session_id}/"))
        )

    def batch(self, batch_id: str) -> BatchHandle:
        return BatchHandle(self.api, Batch.from_api(self.api.json("GET", f"/api/v1/batches/{batch_id}/")))

    def close(self) -> None:
        self.api.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}
