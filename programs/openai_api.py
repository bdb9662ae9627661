"""An OpenAI-compatible endpoint (README, "OpenAI-compatible endpoint"): `POST /v1/chat/completions`
runs the program `dspex/<name>` and `GET /v1/models` lists the programs the API key may run, so
a client written for OpenAI (the official `openai` package included) calls DSPy programs.

Messages map to the program's inputs: the last `user` message fills its one input that is not a
`History` (a program with several such inputs takes a JSON object of them as that message's
content); the earlier `user`/`assistant` pairs fill its `History` input, as a session's turns do
(`{<input>: user content, <output>: assistant content}`; a program without a History input gets
the last user message only); `system` and `developer` messages are no input of a DSPy program
(its signature's instructions are): they are ignored, and the answer counts them in
`dspex.ignored_messages`. The run is `execute` with `wait=true`
(`runner.run_now`): the same admission, budgets, rate limits, cache, trace and cost. Errors come
back in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status the
API would answer.
"""

import json
import time
from collections.abc import Iterator
from typing import Any

from django.http.response import HttpResponseBase
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from dspex_site.api.handler import exception_handler as dspex_exception_handler
from dspex_site.api.parsers import LimitedJSONParser
from dspex_site.api.schema import ErrorDocumentingSchema
from dspex_site.roles import RUN
from executions import runner, streaming
from executions.sessions import history_fields
from programs import releases
from programs.api import http_status_for
from programs.models import CognitiveProgram
from programs.spec.introspect import program_input_fields, program_output_fields
from projects import access

MODEL_PREFIX = "dspex/"
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIError(serializers.Serializer):
    class Body(serializers.Serializer):
        message = serializers.CharField()
        type = serializers.CharField(
            help_text="invalid_request_error, authentication_error, rate_limit_error, ..."
        )
        param = serializers.CharField(allow_null=True, help_text="The offending field, when one is")
        code = serializers.CharField(help_text="DSPex's stable code (`budget_exceeded`, `not_found`, ...)")

    error = Body()


class OpenAISchema(ErrorDocumentingSchema):
    """Error responses documented in OpenAI's shape, as these views answer them."""

    error_serializer = OpenAIError


def openai_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DSPex's one error mapping (`dspex_site.api.handler`), re-shaped as OpenAI's error body."""
    response = dspex_exception_handler(exc, context)
    if response is None:
        return None
    response.data = openai_error(response.status_code, response.data)
    return response


def openai_error(status_code: int, body: Any) -> dict[str, Any]:
    body = body if isinstance(body, dict) else {"code": "error", "detail": str(body), "errors": []}
    errors = body.get("errors") or []
    return {
        "error": {
            "message": str(body.get("detail", "")),
            "type": ERROR_TYPES.get(status_code, "api_error"),
            "param": errors[0]["path"] if errors else None,
            "code": str(body.get("code", "error")),
        }
    }


class Message(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant"])
    content = serializers.CharField(allow_blank=True, trim_whitespace=False)


class ChatRequest(serializers.Serializer):
    model = serializers.CharField(help_text="`dspex/<program name>` (GET /v1/models lists them)")
    messages = Message(many=True, allow_empty=False)
    stream = serializers.BooleanField(
        default=False, help_text="`chat.completion.chunk` server-sent events ending `data: [DONE]`"
    )
    stream_options = serializers.DictField(
        required=False, help_text="`include_usage: true`: usage in a last chunk with no choices"
    )
    # Accepted for compatibility and ignored: sampling belongs to the program's LM settings.
    temperature = serializers.FloatField(required=False)
    max_tokens = serializers.IntegerField(required=False)
    user = serializers.CharField(required=False)

    def validate_model(self, value: str) -> str:
        if not value.startswith(MODEL_PREFIX) or len(value) == len(MODEL_PREFIX):
            raise serializers.ValidationError("Must be `dspex/<program name>` (GET /v1/models lists them).")
        return value[len(MODEL_PREFIX) :]


class ChatCompletionsView(APIView):
    """`POST /v1/chat/completions`: run a program as a chat model."""

    parser_classes = [LimitedJSONParser]
    schema = OpenAISchema()
    required_kinds = {None: RUN}  # dspex_site.permissions: running, `execute` scope for keys

    def get_exception_handler(self) -> Any:
        return openai_exception_handler

    @extend_schema(
        request=ChatRequest,
        responses={
            (200, "application/json"): dict,
            (200, "text/event-stream"): streaming.SSE_RESPONSE,
        },
    )
    def post(self, request: Request) -> HttpResponseBase:
        body = ChatRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        # `dspex/<name>@<alias>` runs the alias's release (docs/releases.md).
        name, _, alias = data["model"].partition("@")
        program = self._program(request, name)
        inputs, ignored = chat_inputs(program, data["messages"])
        try:
            release = releases.for_request(program, alias, user=request.user, input_data=inputs)
        except releases.ReleaseInvalid as exc:
            raise ValidationError({"model": [exc.message]}) from None
        if data["stream"]:  # refusals raise here, as OpenAI errors, before the stream starts
            started = runner.start_now(program, inputs, user=request.user, release=release)
            usage = bool((data.get("stream_options") or {}).get("include_usage"))
            return streaming.stream_response(
                request,
                started,
                lambda outcome: {"execution": outcome.execution},
                _ChunkRenderer(program, started.execution, usage),
            )
        outcome = runner.run_now(program, inputs, user=request.user, release=release)
        execution = outcome.execution
        code = http_status_for(outcome)
        if code != status.HTTP_200_OK:
            error = execution.error or {}
            detail = {
                "code": error.get("type", "execution_failed"),
                "detail": error.get("message", ""),
                "errors": [],
            }
            answer = openai_error(code, detail)
            answer["error"]["execution"] = str(execution.id)
            return Response(answer, status=code)
        metrics = execution.metrics or {}
        prompt, completion = int(metrics.get("prompt_tokens", 0)), int(metrics.get("completion_tokens", 0))
        return Response(
            {
                "id": f"chatcmpl-{execution.id}",
                "object": "chat.completion",
                "created": int(execution.created_at.timestamp())
                if execution.created_at
                else int(time.time()),
                "model": MODEL_PREFIX + program.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer_text(program, execution.output)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
                "dspex": {
                    "execution": str(execution.id),
                    "cost_usd": metrics.get("cost_usd", 0.0),
                    "output": execution.output,
                    "ignored_messages": ignored,
                },
            }
        )

    def _program(self, request: Request, name: str) -> CognitiveProgram:
        programs = list(access.visible(CognitiveProgram.objects.filter(name=name), request.user)[:2])
        if not programs:
            raise ValidationError(
                {"model": [f"No program named {name!r} (GET /v1/models lists the ones you may run)."]}
            )
        if len(programs) > 1:
            raise ValidationError(
                {"model": [f"Several of your projects have a program {name!r}: use a key of one project."]}
            )
        program = programs[0]
        self.check_object_permissions(request, program)  # 403 for a role that may only read
        return program


def chat_inputs(program: CognitiveProgram, messages: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """The program's input from a chat (see the module docstring) and how many messages were
    ignored (system/developer ones). 400 naming `messages[i]` when they cannot be mapped."""
    fields = program_input_fields(program.pipeline)
    histories = history_fields(program)
    text_fields = [name for name in fields if name not in histories]
    outputs = program_output_fields(program.pipeline)
    chat = [(i, m) for i, m in enumerate(messages) if m["role"] in ("user", "assistant")]
    ignored = len(messages) - len(chat)
    if not chat or chat[-1][1]["role"] != "user":
        raise ValidationError({"messages": ["The last message (system ones aside) must be the user's."]})
    last_index, last = chat[-1]
    inputs = _user_inputs(last["content"], text_fields, f"messages[{last_index}].content")
    if histories:
        turns: list[dict[str, Any]] = []
        pending: dict[str, Any] | None = None
        for index, message in chat[:-1]:
            path = f"messages[{index}].content"
            if message["role"] == "user":
                if pending is not None:
                    turns.append(pending)
                pending = _user_inputs(message["content"], text_fields, path)
            else:
                answer = _assistant_outputs(message["content"], outputs, path)
                turns.append({**(pending or {}), **answer})
                pending = None
        if pending is not None:
            turns.append(pending)
        for name in histories:
            inputs[name] = {"messages": turns}
    return inputs, ignored


def _user_inputs(content: str, fields: list[str], path: str) -> dict[str, Any]:
    if len(fields) == 1:
        return {fields[0]: content}
    try:
        value = json.loads(content)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ValidationError(
            {path: [f"This program takes several inputs ({', '.join(fields)}): send them as a JSON object."]}
        )
    return value


def _assistant_outputs(content: str, outputs: list[str], path: str) -> dict[str, Any]:
    if len(outputs) == 1:
        return {outputs[0]: content}
    try:
        value = json.loads(content)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {outputs[0] if outputs else "answer": content}


class _ChunkRenderer:
    """A streamed run's events as OpenAI `chat.completion.chunk`s: the role first, the one output
    field's tokens as content deltas (a program with several outputs sends its JSON object in one
    delta at the end), `finish_reason: stop`, usage when asked, then `data: [DONE]`; a failed run
    an OpenAI error object, then `[DONE]`."""

    def __init__(self, program: CognitiveProgram, execution: Any, include_usage: bool):
        outputs = list(program_output_fields(program.pipeline))
        self.field = outputs[0] if len(outputs) == 1 else None
        self.program, self.include_usage, self.sent = program, include_usage, False
        self.base = {
            "id": f"chatcmpl-{execution.id}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": MODEL_PREFIX + program.name,
        }

    def _chunk(self, delta: dict | None, finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return f"data: {json.dumps({**self.base, 'choices': choices, **extra})}\n\n".encode()

    def __call__(self, event: str, data: Any) -> Iterator[bytes]:
        if not self.sent:
            self.sent = True
            yield self._chunk({"role": "assistant", "content": ""})
        if event == "token" and self.field is not None and data["field"] == self.field:
            yield self._chunk({"content": data["chunk"]})
        elif event == "done":
            execution = data["execution"]
            if self.field is None:
                yield self._chunk({"content": answer_text(self.program, execution.output)})
            yield self._chunk({}, "stop")
            if self.include_usage:
                metrics = execution.metrics or {}
                prompt = int(metrics.get("prompt_tokens", 0))
                completion = int(metrics.get("completion_tokens", 0))
                usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                }
                yield self._chunk(None, usage=usage)
            yield b"data: [DONE]\n\n"
        elif event == "error":
            body = openai_error(status.HTTP_502_BAD_GATEWAY, {**data, "errors": []})
            yield f"data: {json.dumps(body)}\n\n".encode()
            yield b"data: [DONE]\n\n"


def answer_text(program: CognitiveProgram, output: dict[str, Any] | None) -> str:
    """The assistant message: the one output's text, else the outputs as a JSON object."""
    output = output or {}
    if len(output) == 1:
        value = next(iter(output.values()))
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return json.dumps(output, ensure_ascii=False)


class ModelsView(APIView):
    """`GET /v1/models`: `dspex/<name>` of every active program the key may run."""

    schema = OpenAISchema()
    required_kinds = {None: RUN}

    def get_exception_handler(self) -> Any:
        return openai_exception_handler

    @extend_schema(responses={200: dict})
    def get(self, request: Request) -> Response:
        programs = access.visible(
            CognitiveProgram.objects.filter(status__in=[CognitiveProgram.Status.ACTIVE, "optimizing"]),
            request.user,
        ).select_related("project")
        data = [
            {
                "id": MODEL_PREFIX + program.name,
                "object": "model",
                "created": int(program.created_at.timestamp()),
                "owned_by": program.project.name,
            }
            for program in programs
            if access.allows(request.user, program.project_id, RUN)
        ]
        return Response({"object": "list", "data": data})
