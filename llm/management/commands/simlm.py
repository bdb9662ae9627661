"""`manage.py simlm`: serve the simulated provider over OpenAI-compatible HTTP until SIGTERM/SIGINT.

Point any OpenAI client (or DSPEX_LM_API_BASE) at the printed `/v1` URL. Fault injection can be
set here and changed at runtime with `POST /_sim/config` (see `llm.sim.server`).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from llm.sim.server import make_server

# (option, config key, type, help)
_FAULT_OPTIONS = (
    ("--latency-ms", "latency_ms", float, "added latency per request, in ms"),
    ("--token-delay-ms", "token_delay_ms", float, "stream: true: pause between streamed chunks, in ms"),
    ("--latency-jitter-ms", "latency_jitter_ms", float, "uniform random extra latency, up to this many ms"),
    ("--spike-rate", "spike_rate", float, "fraction of requests with a latency spike"),
    ("--spike-ms", "spike_ms", float, "length of a latency spike, in ms"),
    ("--error-rate", "error_rate", float, "fraction of requests answered HTTP 500/503"),
    ("--rate-limit-rpm", "rate_limit_rpm", int, "requests per minute (sliding window); 0 = unlimited"),
    ("--rate-limit-rate", "rate_limit_rate", float, "fraction of requests answered 429 regardless"),
    ("--timeout-rate", "timeout_rate", float, "fraction of requests that hang for --timeout-ms"),
    ("--timeout-ms", "timeout_ms", float, "how long a simulated timeout hangs, in ms (default 60000)"),
    ("--malformed-rate", "malformed_rate", float, "fraction of 200 replies with unparseable content"),
    ("--seed", "seed", int, "seed of the deterministic fault choices"),
)


class Command(BaseCommand):
    help = "Serve the simulated LLM provider (sim/<name> models) over OpenAI-compatible HTTP."
    requires_system_checks: list = []  # a provider process needs no database or app checks
    requires_migrations_checks = False

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
        parser.add_argument(
            "--port", type=int, default=8765, help="port to bind; 0 picks a free one (default 8765)"
        )
        parser.add_argument(
            "--api-key",
            default=None,
            help="answer 401 to any request without 'Authorization: Bearer <this key>' (default: any)",
        )
        for option, key, kind, text in _FAULT_OPTIONS:
            parser.add_argument(option, dest=key, type=kind, default=None, help=text)

    def handle(self, *args: Any, **options: Any) -> None:
        config = {key: options[key] for _, key, _, _ in _FAULT_OPTIONS if options.get(key) is not None}
        try:
            server = make_server(options["host"], options["port"], api_key=options["api_key"], **config)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {exc}") from exc
        self.stdout.write(f"Simulated LLM provider (sim) listening on {server.url}")
        self.stdout.flush()

        def stop(signum: int, frame: Any) -> None:
            # shutdown() waits for serve_forever() to return, so it must run off the main thread.
            server.stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            server.stopping.set()
            server.server_close()
        self.stdout.write("Simulated LLM provider stopped.")
