"""OpenAI-compatible HTTP server for the simulated provider, with fault injection.

Endpoints (also accepted without the `/v1` prefix):

* `POST /v1/chat/completions` — answers from `llm.sim.chat.simulate_chat`; `n` > 1 gives n
  choices, `stream: true` an SSE stream (one delta per word; sent in one piece, or with
  `token_delay_ms` one chunk at a time with that pause between them, chunked encoding);
* `POST /v1/embeddings` — `llm.sim.embeddings.simulate_embeddings` (`dimensions`, base64 encoding);
* `GET /v1/models`, `GET /health`;
* `GET /_sim/config`, `POST /_sim/config` (a JSON object of changes), `GET /_sim/stats`
  (request counts by outcome; `marks`: chat requests per `[mark:<name>]` found in their body),
  `POST /_sim/reset` (clears stats, the request counter and the rate-limit window).

Marks let a test count provider calls per execution: an input carrying `[mark:run-17]` makes
every chat request of that execution count once under `run-17` (whatever its fault outcome), so
a run made twice shows as 2. At most `MAX_MARKS` distinct names are kept.

Faults (`llm.sim.faults`), applied to chat and embedding requests only:

* `latency_ms` (+ uniform `latency_jitter_ms`; with probability `spike_rate` an extra `spike_ms`);
* `error_rate`: HTTP 500 or 503 (`error_status` forces one) with an OpenAI-style error body;
* `rate_limit_rpm`: a real sliding window of `rate_limit_window_s` (60 s) over admitted requests;
  past it, HTTP 429 with `Retry-After` (whole seconds until a slot frees);
* `rate_limit_rate`: that fraction of requests is answered 429 regardless (`Retry-After:
  retry_after_s`);
* `timeout_rate`: the server waits `timeout_ms` (60 s) before answering, so clients time out;
* `malformed_rate`: HTTP 200 whose content is neither the adapter's format nor a usable JSON
  object, so DSPy raises `AdapterParseError`.

Each fault-eligible request takes the next value of a request counter; whether it gets a fault
is a pure function of (`seed`, counter, fault kind), so a run is reproducible. Any
`Authorization: Bearer ...` header is accepted and never logged (`require_auth` makes a missing
one a 401); a server made with `api_key` (`manage.py simlm --api-key K`) answers 401
`invalid_api_key` (OpenAI's error shape) to any request without exactly `Bearer K`, so tests
can prove which key each provider receives. The key is never shown by `/_sim/config`. The
server is a stdlib `ThreadingHTTPServer` speaking HTTP/1.1 keep-alive.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hmac
import itertools
import json
import math
import re
import struct
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypedDict

from llm.sim.chat import simulate_chat
from llm.sim.embeddings import simulate_embeddings
from llm.sim.faults import Decision, FaultConfig, decide
from llm.sim.text import count_tokens

__all__ = ["FaultConfig", "SimServer", "make_server", "serve_in_thread"]

MODELS = ("sim-default", "sim-fast", "sim-embedding")
_MAX_BODY = 32 * 1024 * 1024
_MARK = re.compile(rb"\[mark:([A-Za-z0-9_.-]{1,80})\]")
MAX_MARKS = 100_000


class SimServer(ThreadingHTTPServer):
    """The simulated provider's HTTP server: fault state, stats and the request counter."""

    # Bound from a (host, port) pair on an AF_INET socket, whose getsockname() is (str, int) too.
    server_address: tuple[str, int]

    daemon_threads = True  # a stuck keep-alive connection never blocks shutdown
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], config: FaultConfig, api_key: str | None = None):
        super().__init__(address, SimHandler)
        # Kept off FaultConfig: GET /_sim/config shows the config, and a key is never shown.
        self.api_key = api_key
        self._config = config
        self._config_lock = threading.Lock()
        self._counter = itertools.count()
        self._window: collections.deque[float] = collections.deque()
        self._window_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._outcomes: collections.Counter[str] = collections.Counter()
        self._endpoints: collections.Counter[str] = collections.Counter()
        self._marks: collections.Counter[str] = collections.Counter()
        self.stopping = threading.Event()
        self.started_at = time.time()
        self._thread: threading.Thread | None = None

    # -- configuration and state -----------------------------------------------------------

    @property
    def config(self) -> FaultConfig:
        return self._config

    def update_config(self, **changes: Any) -> FaultConfig:
        with self._config_lock:
            self._config = self._config.updated(changes)
            return self._config

    def reset(self) -> None:
        """Forget stats, the request counter and the rate-limit window."""
        with self._stats_lock:
            self._outcomes.clear()
            self._endpoints.clear()
            self._marks.clear()
        with self._window_lock:
            self._window.clear()
        self._counter = itertools.count()

    def record(self, endpoint: str, outcome: str) -> None:
        with self._stats_lock:
            self._endpoints[endpoint] += 1
            self._outcomes[outcome] += 1

    def record_marks(self, raw: bytes) -> None:
        """Count one request under each distinct `[mark:<name>]` of its body."""
        names = {match.decode() for match in _MARK.findall(raw)}
        if not names:
            return
        with self._stats_lock:
            for name in names:
                if name in self._marks or len(self._marks) < MAX_MARKS:
                    self._marks[name] += 1

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return {
                "requests": sum(self._endpoints.values()),
                "outcomes": dict(self._outcomes),
                "endpoints": dict(self._endpoints),
                "marks": dict(self._marks),
                "uptime_s": round(time.time() - self.started_at, 3),
            }

    @property
    def url(self) -> str:
        """Base URL for OpenAI clients, e.g. http://127.0.0.1:8765/v1."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def port(self) -> int:
        return self.server_address[1]

    # -- faults ----------------------------------------------------------------------------

    def decide(self) -> Decision:
        """Fault decision for the next chat/embedding request (deterministic per seed + counter)."""
        return decide(self._config, next(self._counter), self._admit)

    def _admit(self, limit: int, window_s: float) -> float | None:
        """Sliding-window admission: None if admitted, else seconds until a slot frees."""
        now = time.monotonic()
        with self._window_lock:
            window = self._window
            while window and window[0] <= now - window_s:
                window.popleft()
            if len(window) >= limit:
                return max(window[0] + window_s - now, 0.001)
            window.append(now)
            return None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> SimServer:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"sim-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, wake requests sleeping in a simulated timeout, release the socket."""
        self.stopping.set()
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()

    def __enter__(self) -> SimServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_server(
    host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None, **config: Any
) -> SimServer:
    """A bound, not yet serving SimServer (port 0 picks a free port). Call serve_forever() or start()."""
    return SimServer((host, port), FaultConfig().updated(config), api_key=api_key)


def serve_in_thread(
    host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None, **config: Any
) -> SimServer:
    """A SimServer already serving in a daemon thread; `server.url` is its /v1 base URL."""
    return make_server(host, port, api_key=api_key, **config).start()


# ---------------------------------------------------------------------------------------------
# Request handling

_JSON = "application/json"
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_MALFORMED = (
    "I'm sorry, I can't answer in the requested format right now. Please try again later.",
    '{"status": "incomplete", "partial_outp',
    "[[ ## output ## ]]\nThe answer could not be produced.\n\n[[ ## completed ## ]]",
    "",
)


def _error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


class SimHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # else every keep-alive response waits ~40 ms for delayed ACKs
    server_version = "dspex-sim/1.0"
    sys_version = ""
    server: SimServer
    # Set by the stdlib's handle_one_request before it calls parse_request; typeshed omits it.
    raw_requestline: bytes

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no access log (and so never a header or key)."""

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = _JSON, headers: dict | None = None) -> None:
        """Write status line, headers and body in one syscall."""
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Server: dspex-sim/1.0",
        ]
        if headers:
            head.extend(f"{k}: {v}" for k, v in headers.items())
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def _send_chunked(self, frames: list[str], delay_s: float) -> None:
        """A 200 event stream written one frame per chunk, `delay_s` between them."""
        head = [
            "HTTP/1.1 200 OK",
            "Content-Type: text/event-stream",
            "Cache-Control: no-cache",
            "Transfer-Encoding: chunked",
            "Server: dspex-sim/1.0",
        ]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        for position, frame in enumerate(frames):
            if position and self.server.stopping.wait(delay_s):
                self.close_connection = True
                return
            data = frame.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _json(self, status: int, payload: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers=headers)

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            size = int(length)
            if size > _MAX_BODY:
                raise ValueError("request body too large")
            return self.rfile.read(size) if size else b""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def _route(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/")
        return path[3:] if path.startswith("/v1/") else path

    def parse_request(self) -> bool:
        """Request line and headers, without the stdlib's email parser (~40% of a request's CPU)."""
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = requestline
        self.request_version = version = "HTTP/1.0"  # what send_error assumes until we know better
        parts = requestline.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self.close_connection = True
            self.send_error(HTTPStatus.BAD_REQUEST, "Bad request line")
            return False
        self.command, self.path, version = parts
        self.request_version = version
        headers = _Headers()
        while True:
            line = self.rfile.readline(65537)
            if len(line) > 65536 or len(headers) > 100:
                self.close_connection = True
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("iso-8859-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        self.headers = headers  # type: ignore[assignment]
        connection = headers.get("connection", "").lower()
        self.close_connection = connection == "close" or (
            version == "HTTP/1.0" and connection != "keep-alive"
        )
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client went away (often during a simulated timeout)

    # -- routes ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        route = self._route()
        if route == "/health":
            self._json(200, {"status": "ok", "provider": "sim"})
        elif route == "/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "dspex-sim"} for m in MODELS]
            self._json(200, {"object": "list", "data": data})
        elif route == "/_sim/config":
            self._json(200, dataclasses.asdict(self.server.config))
        elif route == "/_sim/stats":
            self._json(200, self.server.stats())
        else:
            self._send(404, _error_body(f"Unknown path {route}", "invalid_request_error", "not_found"))

    def do_POST(self) -> None:
        route = self._route()
        try:
            raw = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            self._send(413, _error_body(str(exc), "invalid_request_error"))
            return
        if route == "/chat/completions":
            self._api("chat", raw, self._chat)
        elif route == "/embeddings":
            self._api("embeddings", raw, self._embeddings)
        elif route == "/_sim/config":
            self._set_config(raw)
        elif route == "/_sim/reset":
            self.server.reset()
            self._json(200, {"status": "reset"})
        else:
            self._send(404, _error_body(f"Unknown path {route}", "invalid_request_error", "not_found"))

    def _set_config(self, raw: bytes) -> None:
        try:
            changes = json.loads(raw or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("config must be a JSON object")
            config = self.server.update_config(**changes)
        except ValueError as exc:
            self._send(400, _error_body(str(exc), "invalid_request_error"))
            return
        self._json(200, dataclasses.asdict(config))

    def _api(self, endpoint: str, raw: bytes, answer: Any) -> None:
        """Shared path of the model endpoints: auth, JSON, fault decision, then the answer."""
        server = self.server
        authorization = self.headers.get("Authorization") or ""
        if server.api_key is not None:
            if not hmac.compare_digest(authorization.encode(), f"Bearer {server.api_key}".encode()):
                server.record(endpoint, "unauthorized")
                # OpenAI's wording, without echoing any part of the key that was sent.
                message = "Incorrect API key provided." if authorization else "Missing bearer token."
                self._send(401, _error_body(message, "invalid_request_error", "invalid_api_key"))
                return
        elif server.config.require_auth and not authorization.startswith("Bearer "):
            server.record(endpoint, "unauthorized")
            self._send(
                401,
                _error_body("Missing bearer token (simulated).", "invalid_request_error", "invalid_api_key"),
            )
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError:
            server.record(endpoint, "bad_request")
            self._send(400, _error_body("Request body is not a JSON object.", "invalid_request_error"))
            return
        decision = server.decide()
        if endpoint == "chat":
            server.record_marks(raw)
        server.record(endpoint, decision.kind)  # before the wait: stats show a timeout while it hangs
        if decision.delay_s > 0 and server.stopping.wait(decision.delay_s):
            self.close_connection = True
            return  # shutting down: drop the request as a dying server would
        if decision.kind == "rate_limited":
            self._rate_limited(decision)
        elif decision.kind == "error":
            self._server_error(decision)
        else:
            try:
                answer(body, decision)
            except _BadRequest as exc:
                self._send(400, _error_body(str(exc), "invalid_request_error", param=exc.param))

    def _rate_limited(self, decision: Decision) -> None:
        config = self.server.config
        seconds = max(1, math.ceil(decision.retry_after))
        headers = {"Retry-After": str(seconds), "retry-after-ms": str(int(decision.retry_after * 1000))}
        if config.rate_limit_rpm:
            headers["x-ratelimit-limit-requests"] = str(config.rate_limit_rpm)
            headers["x-ratelimit-remaining-requests"] = "0"
            headers["x-ratelimit-reset-requests"] = f"{seconds}s"
        body = _error_body(
            f"Rate limit reached for requests (simulated). Please try again in {seconds}s.",
            "requests",
            "rate_limit_exceeded",
        )
        self._send(429, body, headers=headers)

    def _server_error(self, decision: Decision) -> None:
        if decision.status == 503:
            message = "The server is overloaded or not ready yet (simulated)."
        else:
            message = "The server had an error while processing your request (simulated)."
        self._send(decision.status, _error_body(message, "server_error"))

    # -- model endpoints -------------------------------------------------------------------

    def _chat(self, body: dict, decision: Decision) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise _BadRequest("'messages' must be a non-empty list of message objects.", "messages")
        model = str(body.get("model") or "sim-default")
        n = body.get("n")
        n = 1 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 16:
            raise _BadRequest("'n' must be an integer between 1 and 16.", "n")
        params = {
            k: body[k]
            for k in ("temperature", "max_tokens", "max_completion_tokens", "response_format", "seed")
            if body.get(k) is not None
        }
        replies = [simulate_chat(model, messages, params, choice=i) for i in range(n)]
        malformed = decision.kind == "malformed"
        choices: list[_Choice] = []
        for i, reply in enumerate(replies):
            content = _MALFORMED[(decision.index + i) % len(_MALFORMED)] if malformed else reply.content
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            )
        prompt_tokens = replies[0].prompt_tokens
        completion_tokens = sum(count_tokens(c["message"]["content"]) for c in choices)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        ident = f"chatcmpl-sim{decision.index:x}{int(time.time() * 1000) & 0xFFFFFF:x}"
        created = int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(ident, created, model, choices, usage if include_usage else None)
            return
        self._json(
            200,
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_dspex_sim",
                "choices": choices,
                "usage": usage,
            },
        )

    def _stream(
        self, ident: str, created: int, model: str, choices: list[_Choice], usage: dict | None
    ) -> None:
        """Server-sent events for `stream: true`: assembled and sent with a Content-Length, or with
        `token_delay_ms` one event per chunk of a chunked response, that pause between them."""
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
        events: list[dict[str, object]] = []
        for choice in choices:
            index = choice["index"]
            content = choice["message"]["content"]
            # One delta per word (with its trailing whitespace), so stream listeners see the
            # field markers and the values arrive piece by piece.
            deltas = [{"role": "assistant", "content": ""}] + [
                {"content": p} for p in re.findall(r"\s+|\S+\s*", content)
            ]
            events.extend(
                {**base, "choices": [{"index": index, "delta": d, "finish_reason": None}]} for d in deltas
            )
            events.append(
                {**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}]}
            )
        if usage is not None:
            events.append({**base, "choices": [], "usage": usage})
        frames = [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]
        delay_s = self.server.config.token_delay_ms / 1000.0
        if delay_s > 0:
            self._send_chunked(frames, delay_s)
            return
        payload = "".join(frames)
        self._send(
            200, payload.encode(), content_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    def _embeddings(self, body: dict, decision: Decision) -> None:
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            texts = [raw_input]
        elif isinstance(raw_input, list) and raw_input:
            # Token-id arrays are embedded as their text form: deterministic, if not meaningful.
            texts = [
                item
                if isinstance(item, str)
                else " ".join(map(str, item))
                if isinstance(item, list)
                else str(item)
                for item in raw_input
            ]
        else:
            raise _BadRequest("'input' must be a string or a non-empty list.", "input")
        dim = body.get("dimensions") or 256
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 4096:
            raise _BadRequest("'dimensions' must be an integer between 1 and 4096.", "dimensions")
        model = str(body.get("model") or "sim-embedding")
        vectors = simulate_embeddings(model, texts, dim)
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(struct.pack(f"<{dim}f", *v)).decode() if as_base64 else v,
            }
            for i, v in enumerate(vectors)
        ]
        tokens = sum(count_tokens(t) for t in texts)
        self._json(
            200,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


class _Message(TypedDict):
    role: str
    content: str
    refusal: None


class _Choice(TypedDict):
    """One choice of a chat completion as the server sends it."""

    index: int
    message: _Message
    logprobs: None
    finish_reason: str


class _Headers(dict):
    """Request headers keyed by lower-case name; `get` is case-insensitive like the stdlib's."""

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self, key.lower(), default)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param
