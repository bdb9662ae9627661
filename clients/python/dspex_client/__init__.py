"""Python client of the DSPex API (README, "Python client")."""

from dspex_client.client import (
    BatchHandle,
    Client,
    ExecutionHandle,
    ProgramHandle,
    RunHandle,
    SessionHandle,
    StreamEvent,
)
from dspex_client.errors import (
    AuthenticationFailed,
    BadRequest,
    BudgetExceeded,
    Conflict,
    DSPexError,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unavailable,
)
from dspex_client.models import ApiKey, Batch, Dataset, Execution, OptimizationRun, Project, Session

__all__ = [
    "ApiKey",
    "AuthenticationFailed",
    "BadRequest",
    "Batch",
    "BatchHandle",
    "BudgetExceeded",
    "Client",
    "Conflict",
    "DSPexError",
    "Dataset",
    "Execution",
    "ExecutionHandle",
    "NotFound",
    "OptimizationRun",
    "PermissionDenied",
    "ProgramHandle",
    "Project",
    "RateLimited",
    "RunHandle",
    "Session",
    "SessionHandle",
    "StreamEvent",
    "Unavailable",
]
