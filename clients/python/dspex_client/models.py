"""Typed answers of the API. Each keeps the whole answer in `raw`, so a field a newer server adds
is never lost; the attributes are the documented ones."""

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T", bound="Record")


@dataclass
class Record:
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls: type[T], data: dict[str, Any]) -> T:
        known = {f.name for f in fields(cls)} - {"raw"}
        return cls(raw=data, **{name: data.get(name) for name in known})


@dataclass
class Execution(Record):
    id: str | None = None
    status: str | None = None
    session: str | None = None
    turn: int | None = None
    program: str | None = None
    program_version: int | None = None
    optimization_result: str | None = None
    alias: str | None = None
    arm: str | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    trace: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    duration_ms: int | None = None
    created_at: str | None = None
    finished_at: str | None = None

    FINISHED = frozenset({"succeeded", "failed", "cancelled"})

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


@dataclass
class Batch(Record):
    id: str | None = None
    program: str | None = None
    status: str | None = None
    total: int | None = None
    finished: int | None = None
    progress: float | None = None
    counts: dict[str, int] | None = None
    created_at: str | None = None
    cancelled_at: str | None = None


@dataclass
class OptimizationRun(Record):
    id: str | None = None
    program: str | None = None
    dataset: str | None = None
    optimizer: str | None = None
    status: str | None = None
    progress: dict[str, Any] | None = None
    message: str | None = None
    error: Any = None
    result: str | None = None

    FINISHED = frozenset({"succeeded", "failed", "cancelled"})

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


@dataclass
class Dataset(Record):
    id: str | None = None
    name: str | None = None
    project: int | None = None
    description: str | None = None


@dataclass
class ApiKey(Record):
    id: int | None = None
    name: str | None = None
    prefix: str | None = None
    project: int | None = None
    scopes: list[str] | None = None
    service: bool | None = None
    user: str | None = None
    expires_at: str | None = None
    last_used_at: str | None = None
    revoked_at: str | None = None
    key: str | None = field(default=None, repr=False)  # the secret: in the creation's answer only


@dataclass
class Project(Record):
    id: int | None = None
    name: str | None = None
    role: str | None = None


@dataclass
class Session(Record):
    id: str | None = None
    program: str | None = None
    turns: int | None = None
    busy: bool | None = None
    metadata: dict[str, Any] | None = None
    ttl_s: int | None = None
    created_at: str | None = None
    expires_at: str | None = None
    history: list[dict[str, Any]] | None = (
        None  # in a session read: [{"turn", "input", "output", "execution"}]
    )
