"""DSPex settings, read once from the environment (see README "Configuration").

Production (DJANGO_DEBUG off) never falls back silently: a missing secret key stops start-up.
The embedded single-process mode (SQLite, in-process cache, tasks in-process) is only entered
when DSPEX_EMBEDDED=1, which `make run` sets after it has probed Postgres and Redis and said so.
"""

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from dspex_site import redis_ha
from dspex_site.env import env_bool, env_float, env_int, env_json, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("DSPEX_VAR_DIR", str(BASE_DIR / "var")))

# DSPy/LiteLLM must never try to download a price map at import (5 s timeout behind a firewall).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off "
            "(set it, or DJANGO_SECRET_KEY_FILE, to a long random string)."
        )
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105 - DEBUG only
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

EMBEDDED = env_bool("DSPEX_EMBEDDED", False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "corsheaders",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    # Before the apps with models: post_migrate skips apps without models (monitoring.admin acts
    # on the last app that gets it).
    "dspex_site",
    "projects",
    "monitoring",
    "llm",
    "caching",
    "programs",
    "optimization",
    "executions",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # Before anything that can answer on its own (redirects, static files), so they get CORS headers.
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "monitoring.middleware.RequestContextMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "dspex_site.urls"
WSGI_APPLICATION = "dspex_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# Scale-out (README "Configuration" and "Database connections"): an in-process psycopg pool
# (DSPEX_DB_POOL_MAX > 0), PgBouncer in transaction mode in front (DSPEX_DB_POOLER), a direct
# URL for what needs a session (migrations, streaming reads), TLS from the URL's sslmode.
DB_POOLER = (env_str("DSPEX_DB_POOLER", "") or "").strip().lower()
if DB_POOLER not in ("", "pgbouncer"):
    raise ImproperlyConfigured(f"DSPEX_DB_POOLER must be empty or 'pgbouncer', not {DB_POOLER!r}")
DB_POOL_MIN = env_int("DSPEX_DB_POOL_MIN", 1)
DB_POOL_MAX = env_int("DSPEX_DB_POOL_MAX", 0)
DB_POOL_TIMEOUT_S = env_float("DSPEX_DB_POOL_TIMEOUT_S", 5.0)
if DB_POOL_MAX and not 0 <= DB_POOL_MIN <= DB_POOL_MAX:
    raise ImproperlyConfigured(
        f"DSPEX_DB_POOL_MIN ({DB_POOL_MIN}) must be between 0 and DSPEX_DB_POOL_MAX ({DB_POOL_MAX})"
    )
if DB_POOL_MAX < 0 or DB_POOL_TIMEOUT_S <= 0:
    raise ImproperlyConfigured(
        "DSPEX_DB_POOL_MAX must be 0 (no pool) or more; DSPEX_DB_POOL_TIMEOUT_S above 0"
    )


def _database_from(url: str, *, pooled: bool, pgbouncer: bool) -> dict[str, Any]:
    # A pooled connection goes back to the pool after each request or task: Django refuses
    # CONN_MAX_AGE > 0 with a pool, and the pool keeps the connections open instead.
    parsed: dict[str, Any] = dict(
        dj_database_url.parse(
            url,
            conn_max_age=0 if pooled else env_int("DATABASE_CONN_MAX_AGE", 60),
            conn_health_checks=True,
        )
    )
    # The URL's query (sslmode, sslrootcert, application_name, ...) is in OPTIONS already.
    options = parsed.setdefault("OPTIONS", {})
    options["connect_timeout"] = env_int("DATABASE_CONNECT_TIMEOUT", 5)
    if pooled:
        options["pool"] = {"min_size": DB_POOL_MIN, "max_size": DB_POOL_MAX, "timeout": DB_POOL_TIMEOUT_S}
    if pgbouncer:
        # Transaction pooling hands each transaction to any server connection: no cursor may
        # outlive its transaction (Django's iterator() opens WITH HOLD cursors in autocommit),
        # and no statement may be prepared server-side (PgBouncer before 1.21 cannot carry
        # them; `tests/datatier` shows the flow failing with them). Django's defaults for
        # psycopg 3 (client-side binding, prepare_threshold None), pinned against OPTIONS.
        parsed["DISABLE_SERVER_SIDE_CURSORS"] = True
        options["prepare_threshold"] = None
        options["server_side_binding"] = False
    return parsed


DATABASES: dict[str, Mapping[str, object]]
if EMBEDDED:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": VAR_DIR / "dspex.sqlite3"}}
else:
    _database = _database_from(
        env_str("DATABASE_URL", "postgres://localhost:5432/dspex"),
        pooled=DB_POOL_MAX > 0,
        pgbouncer=DB_POOLER == "pgbouncer",
    )
    _database["TEST"] = {"NAME": env_str("DATABASE_TEST_NAME", "test_dspex")}
    DATABASES = {"default": _database}
    # What needs a session while DATABASE_URL is a transaction pooler: migrations (dspex_site's
    # `migrate` defaults to it) and long streaming reads (dspex_site.db.session_alias()).
    _direct_url = env_str("DATABASE_DIRECT_URL")
    if _direct_url:
        _direct = _database_from(_direct_url, pooled=False, pgbouncer=False)
        _direct["CONN_MAX_AGE"] = 0  # opened for a migration or an export, not kept
        _direct["TEST"] = {"MIRROR": "default"}
        DATABASES["direct"] = _direct
    # A streaming replica for reads that tolerate lag (dspex_site.db.read_alias()).
    _replica_url = env_str("DATABASE_REPLICA_URL")
    if _replica_url:
        _replica = _database_from(_replica_url, pooled=DB_POOL_MAX > 0, pgbouncer=DB_POOLER == "pgbouncer")
        # A replica that is down must cost a list page little: it falls back to the primary.
        _replica["OPTIONS"]["connect_timeout"] = min(env_int("DATABASE_CONNECT_TIMEOUT", 5), 2)
        _replica["TEST"] = {"MIRROR": "default"}
        DATABASES["replica"] = _replica
DSPEX_REPLICA_MAX_LAG_S = env_float("DSPEX_REPLICA_MAX_LAG_S", 30.0)
DSPEX_REPLICA_CHECK_S = env_float("DSPEX_REPLICA_CHECK_S", 5.0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache and broker ----------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", redis_ha.DEFAULT_URL)
# A slow or dead Redis must never hang a request: every cache call is bounded.
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 0.5)
# High availability: REDIS_SENTINELS (host:port,...) + REDIS_SENTINEL_MASTER make every Redis
# user (caches, admission state, broker, heartbeats) reach the master Sentinel names instead of
# REDIS_URL (with REDIS_DB, REDIS_PASSWORD, REDIS_SENTINEL_PASSWORD); dspex_site/redis_ha.py.
REDIS_SENTINEL = redis_ha.SentinelConfig.from_env()


def _redis_cache(prefix: str) -> dict[str, Any]:
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": redis_ha.cache_location(REDIS_SENTINEL, REDIS_URL),
        "KEY_PREFIX": prefix,
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": REDIS_SOCKET_TIMEOUT,
            "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT,
            "CONNECTION_POOL_KWARGS": {"max_connections": env_int("REDIS_MAX_CONNECTIONS", 100)},
            **redis_ha.cache_options(REDIS_SENTINEL),
        },
    }


# Values per key differ (a backend path, an options dict, ...), as in Django's own declaration.
CACHES: dict[str, dict[str, Any]]
if EMBEDDED:
    CACHES = {
        name: {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": name}
        for name in ("default", "llm", "embeddings", "optimizations")
    }
else:
    CACHES = {
        "default": _redis_cache("dspex"),
        "llm": _redis_cache("dspex"),
        "embeddings": _redis_cache("dspex"),
        "optimizations": _redis_cache("dspex"),
    }

# --- Celery ---------------------------------------------------------------------------------
# Through Sentinel (REDIS_SENTINELS) unless CELERY_BROKER_URL names a broker of its own.
CELERY_BROKER_URL = env_str(
    "CELERY_BROKER_URL", redis_ha.broker_url(REDIS_SENTINEL) if REDIS_SENTINEL else REDIS_URL
)
# kombu's Redis transport with one client per channel, not one per publish (dspex_site/broker.py).
CELERY_BROKER_TRANSPORT = redis_ha.broker_transport(CELERY_BROKER_URL)
CELERY_RESULT_BACKEND = None
# No result backend: no task's return value is ever read (it is only logged).
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = EMBEDDED
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Time limits are per task, in dspex_site.celery.TASKS (a test checks every task has them).
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- AMQP ingestion (`manage.py dspex_consume`, executions.ingestion) ------------------------
# The RabbitMQ the consumer reads `dspex_executions` from; empty: the Celery broker when that is
# AMQP (the consumer refuses to start otherwise, naming this setting).
DSPEX_AMQP_URL = env_str("DSPEX_AMQP_URL", "")
# The API key messages run as (its project and scopes bound them); `--key` overrides it.
DSPEX_CONSUME_KEY = env_str("DSPEX_CONSUME_KEY", "")
# Executions run at once (threads); messages the broker may have handed over unacknowledged.
DSPEX_CONSUME_CONCURRENCY = env_int("DSPEX_CONSUME_CONCURRENCY", 8)
DSPEX_CONSUME_PREFETCH = env_int("DSPEX_CONSUME_PREFETCH", 0)  # 0: the concurrency
# Deliveries a message gets at most: one that raised (or whose consumer died) on each of them goes
# to `dspex_executions.dead` (the queue's `x-delivery-limit` is this minus one).
DSPEX_CONSUME_MAX_DELIVERIES = env_int("DSPEX_CONSUME_MAX_DELIVERIES", 5)

# --- Auth, sessions, security ---------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_BEHIND_TLS_PROXY") else None
# Production is HTTPS-only by default (`manage.py check --deploy` has no warnings); `make run`
# (dspex_site/launch.py) and the test suite set DJANGO_HTTPS=0 for plain http on 127.0.0.1.
HTTPS = env_bool("DJANGO_HTTPS", not DEBUG and not EMBEDDED)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", HTTPS)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", HTTPS)
# Probes and Prometheus scrape over plain http inside the cluster.
SECURE_REDIRECT_EXEMPT = [r"^health/", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", HTTPS)
# CORS for browser clients of the API only (token auth, no cookies): origins from the environment.
CORS_ALLOWED_ORIGINS = env_list("DJANGO_CORS_ALLOWED_ORIGINS", [])
CORS_URLS_REGEX = r"^/api/"
CORS_ALLOW_CREDENTIALS = False

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("DSPEX_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
if DEBUG:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "dspex_site.authentication.KeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Viewers read, operators run and edit, superusers everything (dspex_site/permissions.py).
    "DEFAULT_PERMISSION_CLASSES": ["dspex_site.permissions.RolePermission"],
    # Per user (one token each), counted in the default cache (Redis); fails open. An empty
    # DSPEX_API_THROTTLE_RATE turns throttling off (load benchmarks).
    "DEFAULT_THROTTLE_CLASSES": ["dspex_site.permissions.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": env_str("DSPEX_API_THROTTLE_RATE", "1200/min") or None},
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "dspex_site.api.schema.ErrorDocumentingSchema",
    "EXCEPTION_HANDLER": "dspex_site.api.handler.exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "dspex_site.api.renderers.ORJSONRenderer",
        *(["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    ],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
}

SPECTACULAR_SETTINGS = {
    "TITLE": "DSPex API",
    "DESCRIPTION": "Store, run, trace and optimize DSPy programs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # One named enum per choice set: several models have `status`/`priority` fields with different
    # choices (and `check --deploy` warns about ambiguous names otherwise).
    "ENUM_NAME_OVERRIDES": {
        "PriorityEnum": "executions.models.CognitiveExecution.Priority",
        "RequestedPriorityEnum": ["normal", "high"],
        "ExecutionStatusEnum": "executions.models.CognitiveExecution.Status",
        "OptimizationRunStatusEnum": "optimization.models.OptimizationRun.Status",
        "ProgramStatusEnum": "programs.models.CognitiveProgram.Status",
        "CorpusStatusEnum": "programs.models.Corpus.Status",
        "ProjectRoleEnum": "projects.models.Membership.Role",
        "ChatRoleEnum": ["system", "developer", "user", "assistant"],
    },
}

# Request bodies larger than this are refused with 413 before they are parsed.
DSPEX_MAX_INPUT_BYTES = env_int("DSPEX_MAX_INPUT_BYTES", 256 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(DSPEX_MAX_INPUT_BYTES * 4, 2_621_440)

# --- LLM gateway ----------------------------------------------------------------------------
DSPEX_LM = env_str("DSPEX_LM", "sim/default")
DSPEX_LM_API_BASE = env_str("DSPEX_LM_API_BASE")
# The key is read here and handed only to the engine that talks to the provider: it is never
# stored in the database, put in a cache key, traced or logged.
DSPEX_LM_API_KEY = env_str("DSPEX_LM_API_KEY") or env_str("OPENAI_API_KEY")
DSPEX_LM_TIMEOUT_S = env_float("DSPEX_LM_TIMEOUT_S", 30.0)
DSPEX_LM_MAX_TOKENS = env_int("DSPEX_LM_MAX_TOKENS", 1024)
# Open connections to one provider per process at most (lm15's pool; a call waits up to its
# timeout for a free one): every open stream, and every call in flight, holds one.
DSPEX_LM_MAX_CONNECTIONS = env_int("DSPEX_LM_MAX_CONNECTIONS", 1024)
if DSPEX_LM_MAX_CONNECTIONS < 1:
    raise ImproperlyConfigured(f"DSPEX_LM_MAX_CONNECTIONS must be 1 or more, not {DSPEX_LM_MAX_CONNECTIONS}")
# Prices per million tokens for models DSPy's table does not know, by model or provider prefix:
# {"openai/my-model": {"prompt": 0.15, "completion": 0.6}, "sim": {"prompt": 0, "completion": 0}}.
try:
    DSPEX_PRICES = json.loads(env_str("DSPEX_PRICES", "{}") or "{}")
except json.JSONDecodeError as exc:
    raise ImproperlyConfigured(f"DSPEX_PRICES must be a JSON object: {exc}") from exc
DSPEX_PRICES.setdefault(
    "sim",
    {
        "prompt": env_float("DSPEX_SIM_PRICE_PROMPT_PER_1M", 0.0),
        "completion": env_float("DSPEX_SIM_PRICE_COMPLETION_PER_1M", 0.0),
    },
)
# Local embedding models (`local/...`) run on our own CPU: free, not unknown.
DSPEX_PRICES.setdefault("local", {"prompt": 0.0, "completion": 0.0})

# Providers, deployments and fallbacks (llm.routing; README "Providers"). Keys come from the
# environment (`api_key_env`) or a file (`api_key_file`), never from these JSON documents or the
# database: {"openai": {"kind": "openai", "api_base": "https://api.openai.com/v1",
# "api_key_env": "OPENAI_API_KEY", "timeout_s": 30, "limits": {"rpm": 500}}}.
DSPEX_PROVIDERS = env_json("DSPEX_PROVIDERS", {})
# {"<model alias>": {"strategy": "weighted" | "least-busy", "deployments": [{"model": "<provider>/<model>",
# "weight": 3}, ...]}}
DSPEX_MODEL_DEPLOYMENTS = env_json("DSPEX_MODEL_DEPLOYMENTS", {})
# {"<model>": ["<model>", ...], "default": [...]}: tried in order within one execution attempt.
DSPEX_MODEL_FALLBACKS = env_json("DSPEX_MODEL_FALLBACKS", {})

# Provider resilience (llm.resilience), shared by every process through Redis. Limits per provider
# name, with "default" for all and "embeddings" for the embeddings backend; 0 = unlimited:
# {"openai": {"rpm": 500, "tpm": 200000, "max_concurrent": 20, "max_concurrent_optimization": 4,
#  "failure_threshold": 5, "reset_timeout_s": 60, "call_timeout_s": 30, "max_wait_s": 10}}.
try:
    DSPEX_PROVIDER_LIMITS = json.loads(env_str("DSPEX_PROVIDER_LIMITS", "{}") or "{}")
except json.JSONDecodeError as exc:
    raise ImproperlyConfigured(f"DSPEX_PROVIDER_LIMITS must be a JSON object: {exc}") from exc
DSPEX_BREAKER_FAILURES = env_int("DSPEX_BREAKER_FAILURES", 5)
DSPEX_BREAKER_RESET_S = env_float("DSPEX_BREAKER_RESET_S", 60.0)
# How long a call waits for a rate-limit token or a bulkhead slot before it is re-queued like a 429.
DSPEX_RATE_LIMIT_MAX_WAIT_S = env_float("DSPEX_RATE_LIMIT_MAX_WAIT_S", 10.0)
# Share of every rate-limit bucket only interactive traffic may take (served first when short).
DSPEX_RATE_LIMIT_RESERVE = env_float("DSPEX_RATE_LIMIT_RESERVE", 0.2)
# Spend limits in USD (llm.budgets; the admin's Budget rows add to these):
# {"providers": {"openai": {"daily": 10, "monthly": 200}}, "programs": {"<program uuid>": {"daily": 1}}}.
try:
    DSPEX_BUDGETS = json.loads(env_str("DSPEX_BUDGETS", "{}") or "{}")
except json.JSONDecodeError as exc:
    raise ImproperlyConfigured(f"DSPEX_BUDGETS must be a JSON object: {exc}") from exc

# Tools a ReAct step may name, and Custom modules a spec may use: settings are trusted code,
# a program spec only ever names entries of these lists.
DSPEX_TOOLS = {"calculator": "programs.tools.calculator", "clock": "programs.tools.clock"}
DSPEX_CUSTOM_MODULES = env_list("DSPEX_CUSTOM_MODULES", ["programs.custom_modules.KeywordExtract"])
# Dotted paths of custom metrics an optimization run may name (DSPy metric signature).
DSPEX_CUSTOM_METRICS = env_list("DSPEX_CUSTOM_METRICS", [])

# Optimization runs: heartbeat period, silence after which another worker takes a run over,
# and threads per evaluation (DSPy's num_threads).
DSPEX_OPTIMIZATION_HEARTBEAT_S = env_float("DSPEX_OPTIMIZATION_HEARTBEAT_S", 2.0)
DSPEX_OPTIMIZATION_STALE_S = env_float("DSPEX_OPTIMIZATION_STALE_S", 60.0)
DSPEX_OPTIMIZATION_THREADS = env_int("DSPEX_OPTIMIZATION_THREADS", 4)

# Per-process caches of the hot path's rows (tokens, programs): a change made elsewhere is seen
# by every process within this many seconds; 0 turns them off (dspex_site.local_cache).
DSPEX_LOCAL_CACHE_S = env_float("DSPEX_LOCAL_CACHE_S", 1.0)
# Streaming (executions.streaming, docs/streaming.md): how often `/executions/{id}/events/` reads
# the execution's row, and the idle time after which a stream sends a keep-alive comment.
DSPEX_STREAM_POLL_S = env_float("DSPEX_STREAM_POLL_S", 0.5)
DSPEX_STREAM_KEEPALIVE_S = env_float("DSPEX_STREAM_KEEPALIVE_S", 15.0)

DSPEX_EXECUTION_RETENTION_DAYS = env_int("DSPEX_EXECUTION_RETENTION_DAYS", 7)
DSPEX_EXECUTION_TIME_LIMIT_S = env_int("DSPEX_EXECUTION_TIME_LIMIT_S", 300)
# Background runs (executions.tasks, executions.reaper): retries, heartbeats, batches.
DSPEX_MAX_ATTEMPTS = env_int("DSPEX_MAX_ATTEMPTS", 5)
DSPEX_RETRY_BACKOFF_BASE_S = env_float("DSPEX_RETRY_BACKOFF_BASE_S", 1.0)  # retry n waits base * 2^n
DSPEX_RATE_LIMIT_DEFAULT_WAIT_S = env_float("DSPEX_RATE_LIMIT_DEFAULT_WAIT_S", 60.0)
DSPEX_MAX_RATE_LIMIT_REQUEUES = env_int("DSPEX_MAX_RATE_LIMIT_REQUEUES", 50)
DSPEX_HEARTBEAT_S = env_float("DSPEX_HEARTBEAT_S", 10.0)
DSPEX_HEARTBEAT_STALE_S = env_float("DSPEX_HEARTBEAT_STALE_S", 45.0)
DSPEX_REAP_INTERVAL_S = env_float("DSPEX_REAP_INTERVAL_S", 20.0)
# How often beat applies the running canaries' promote/abort rules (releases.evaluate_canaries).
DSPEX_CANARY_EVALUATE_S = env_float("DSPEX_CANARY_EVALUATE_S", 60.0)
DSPEX_PENDING_STALE_S = env_float("DSPEX_PENDING_STALE_S", 600.0)
DSPEX_PRUNE_BATCH_SIZE = env_int("DSPEX_PRUNE_BATCH_SIZE", 1000)
DSPEX_BATCH_MAX_INPUTS = env_int("DSPEX_BATCH_MAX_INPUTS", 10_000)
DSPEX_BATCH_MAX_BYTES = env_int("DSPEX_BATCH_MAX_BYTES", 32 * 1024 * 1024)
DSPEX_BATCH_CONCURRENCY = env_int("DSPEX_BATCH_CONCURRENCY", 20)
# Sessions (executions.sessions): the TTL a session gets when its body names none, the longest
# one it may ask for, and how many earlier turns at most go into a History input.
DSPEX_SESSION_TTL_S = env_int("DSPEX_SESSION_TTL_S", 86_400)
DSPEX_SESSION_MAX_TTL_S = env_int("DSPEX_SESSION_MAX_TTL_S", 30 * 86_400)
DSPEX_SESSION_HISTORY_TURNS = env_int("DSPEX_SESSION_HISTORY_TURNS", 50)

# --- Observability --------------------------------------------------------------------------
SENTRY_DSN = env_str("SENTRY_DSN")
DSPEX_ENVIRONMENT = env_str("DSPEX_ENVIRONMENT", "development" if DEBUG else "production")
DSPEX_RELEASE = env_str("DSPEX_RELEASE", "dspex@0.1.0")
# /metrics is open unless restricted by a bearer token and/or a list of client addresses.
DSPEX_METRICS_TOKEN = env_str("DSPEX_METRICS_TOKEN")
DSPEX_METRICS_ALLOWED_IPS = env_list("DSPEX_METRICS_ALLOWED_IPS", [])
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOG_JSON = env_bool("LOG_JSON", not DEBUG)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "monitoring.logs.ContextFilter"}},
    "formatters": {
        "json": {"()": "monitoring.logs.JsonFormatter"},
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s%(context)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_JSON else "plain",
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # dspy sets propagate=False at import, so it needs its own handler to be seen at all.
        "dspy": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "LiteLLM": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "django.db.backends": {"level": "INFO"},
    },
}

if SENTRY_DSN:
    from monitoring.sentry import init_sentry

    init_sentry(SENTRY_DSN, environment=DSPEX_ENVIRONMENT, release=DSPEX_RELEASE)

# --- Caches (limits; see caching/) -----------------------------------------------------------
DSPEX_LLM_CACHE_TTL_S = env_int("DSPEX_LLM_CACHE_TTL_S", 24 * 3600)
if not EMBEDDED:
    # LLM records are plain JSON: store them as JSON, never pickle (a poisoned cache must not run code).
    CACHES["llm"]["OPTIONS"]["SERIALIZER"] = "django_redis.serializers.json.JSONSerializer"
# Entry and size limits are enforced by caching.store on every write (an LRU index per cache in
# Redis), not by Redis' maxmemory policy: the same Redis holds the Celery broker's queues.
DSPEX_LLM_CACHE_MAX_ENTRIES = env_int("DSPEX_LLM_CACHE_MAX_ENTRIES", 10_000)
DSPEX_LLM_CACHE_MAX_BYTES = env_int("DSPEX_LLM_CACHE_MAX_BYTES", 1024**3)
DSPEX_EMBEDDING_CACHE_TTL_S = env_int("DSPEX_EMBEDDING_CACHE_TTL_S", 7 * 24 * 3600)
DSPEX_EMBEDDING_CACHE_MAX_ENTRIES = env_int("DSPEX_EMBEDDING_CACHE_MAX_ENTRIES", 50_000)
DSPEX_OPTIMIZATION_CACHE_TTL_S = env_int("DSPEX_OPTIMIZATION_CACHE_TTL_S", 3600)
# After a Redis error a process skips its caches for this long instead of waiting out one socket
# timeout per call: a dead or stalled Redis costs an execution at most one timeout.
DSPEX_CACHE_RETRY_AFTER_S = env_float("DSPEX_CACHE_RETRY_AFTER_S", 5.0)
# Embeddings: "sim/<name>" (simulated, in-process), "local/all-MiniLM-L6-v2" (sentence-transformers
# from disk, extra `local-embeddings`) or any LiteLLM embedding model served over HTTP.
DSPEX_EMBEDDING_MODEL = env_str("DSPEX_EMBEDDING_MODEL", "sim/embedding")
DSPEX_EMBEDDING_API_BASE = env_str("DSPEX_EMBEDDING_API_BASE") or DSPEX_LM_API_BASE
DSPEX_EMBEDDING_API_KEY = env_str("DSPEX_EMBEDDING_API_KEY") or DSPEX_LM_API_KEY
DSPEX_EMBEDDING_BATCH_SIZE = env_int("DSPEX_EMBEDDING_BATCH_SIZE", 64)
