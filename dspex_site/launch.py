"""`make run`: set up and start the whole service on this machine, with demo data loaded.

It probes Postgres and Redis at the configured URLs. When both answer it runs the standard
mode (gunicorn + Celery worker); otherwise it says plainly what is missing and falls back to
the embedded single-process mode (SQLite under var/, in-process cache and tasks). Production
deployments do not use this script and never fall back.
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("DSPEX_VAR_DIR") or BASE_DIR / "var")  # as settings.VAR_DIR
PY = sys.executable


def say(message: str) -> None:
    print(f"[dspex] {message}", flush=True)


def secret_key_file() -> Path:
    """A per-checkout secret key kept under var/ (0600), so sessions survive restarts."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path


def postgres_problem(url: str) -> str | None:
    """None when the server answers and the database exists (created if missing)."""
    import psycopg

    parsed = urlparse(url)
    dbname = (parsed.path or "/dspex").lstrip("/") or "dspex"
    server = url.replace(parsed.path, "/postgres") if parsed.path else url + "/postgres"
    try:
        with psycopg.connect(server, connect_timeout=2, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{dbname}"')
                say(f"created database {dbname}")
    except Exception as exc:
        where = f"{parsed.hostname}:{parsed.port or 5432}"
        return f"PostgreSQL at {where} is not usable ({type(exc).__name__}: {exc})"
    return None


def redis_problem(url: str) -> str | None:
    """None when Redis answers: `url`'s server, or the master REDIS_SENTINELS names."""
    from dspex_site import redis_ha

    try:
        config = redis_ha.SentinelConfig.from_env()
        redis_ha.make_client(config, url, timeout=2).ping()
    except Exception as exc:
        where = "the Sentinel master (REDIS_SENTINELS)" if os.environ.get("REDIS_SENTINELS") else url
        return f"Redis at {where} is not usable ({type(exc).__name__})"
    return None


def manage(*args: str, env: dict) -> None:
    subprocess.run([PY, "manage.py", *args], cwd=BASE_DIR, env=env, check=True)


_print_lock = threading.Lock()


def pipe_output(name: str, proc: subprocess.Popen[str]) -> None:
    """Prefix every line with the process that said it (one lock: lines never interleave)."""
    assert proc.stdout is not None, "start() pipes every process's output"
    for line in proc.stdout:
        with _print_lock:
            sys.stdout.write(f"{name:>19} | {line}")
            sys.stdout.flush()
    with _print_lock:
        sys.stdout.write(f"{name:>19} | exited with status {proc.wait()}\n")
        sys.stdout.flush()


def worker_commands(env: dict) -> dict[str, list[str]]:
    """One Celery worker per queue group (as in the Procfile), plus beat."""
    from dspex_site.celery import WORKER_GROUPS

    commands = {}
    for group, (queues, pool, concurrency) in WORKER_GROUPS.items():
        count = env.get(f"{group.upper()}_CONCURRENCY", str(concurrency))
        commands[f"worker_{group}"] = [
            *(PY, "-m", "celery", "-A", "dspex_site", "worker", "-Q", ",".join(queues)),
            *("-P", pool, "-c", count, "-n", f"{group}@%h", "-l", "INFO"),
        ]
    commands["beat"] = [
        *(PY, "-m", "celery", "-A", "dspex_site", "beat", "-l", "INFO"),
        *("--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"),
        *("-s", str(VAR_DIR / "celerybeat-schedule")),
    ]
    if consume_wanted(env):
        if env.get("DSPEX_CONSUME_KEY") or env.get("DSPEX_CONSUME_KEY_FILE"):
            commands["consume"] = [PY, "manage.py", "dspex_consume"]
        else:  # it would exit at once without a key, and take `make run` down with it
            say("AMQP ingestion not started: set DSPEX_CONSUME_KEY (an API key with the execute scope)")
    return commands


def consume_wanted(env: dict) -> bool:
    """The AMQP consumer (manage.py dspex_consume) runs when there is a RabbitMQ to read from:
    `DSPEX_AMQP_URL` is set, or the Celery broker is AMQP."""
    from dspex_site.celery import broker_is_amqp

    return bool(env.get("DSPEX_AMQP_URL")) or broker_is_amqp(env.get("CELERY_BROKER_URL", ""))


def start(name: str, cmd: list[str], env: dict) -> subprocess.Popen[str]:
    # A session of its own: Ctrl-C in the terminal (or a TERM to the whole group) reaches this
    # launcher only, which then stops each process once. A second signal in the middle of a
    # Celery shutdown kills the worker outright or, seen with beat, hangs it.
    proc = subprocess.Popen(
        cmd,
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    threading.Thread(target=pipe_output, args=(name, proc), daemon=True).start()
    return proc


def main() -> int:
    env = dict(os.environ)
    env.setdefault("DJANGO_DEBUG", "0")
    env.setdefault("DJANGO_SECRET_KEY_FILE", str(secret_key_file()))
    env.setdefault("DJANGO_SECURE_COOKIES", "0")  # plain http on 127.0.0.1
    env.setdefault("DJANGO_HTTPS", "0")  # no TLS redirect or HSTS on a local plain-http run
    env.setdefault("LOG_JSON", "0")
    host, port = env.get("DSPEX_HOST", "127.0.0.1"), env.get("DSPEX_PORT", "8000")

    problems = [
        p
        for p in (
            postgres_problem(env.get("DATABASE_URL", "postgres://localhost:5432/dspex")),
            redis_problem(env.get("REDIS_URL", "redis://localhost:6379/0")),
        )
        if p
    ]
    if problems:
        for problem in problems:
            say(problem)
        say("EMBEDDED MODE: SQLite under var/, in-process cache, tasks run in-process. Not for production.")
        env["DSPEX_EMBEDDED"] = "1"
    else:
        say(
            "standard mode: PostgreSQL + Redis, gunicorn, Celery workers "
            "(llm, priority, background, optimization) and beat"
        )

    manage("migrate", "--noinput", env=env)
    manage("collectstatic", "--noinput", "--verbosity", "0", env=env)
    manage("dspex_demo", env=env)

    # One Prometheus multiprocess directory for web and workers, emptied at start (README "Monitoring").
    metrics_dir = VAR_DIR / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    env.setdefault("DSPEX_HOST", host)
    env.setdefault("PORT", port)
    procs = [start("web", [PY, "-m", "gunicorn", "-c", "dspex_site/gunicorn_conf.py"], env)]
    if "DSPEX_EMBEDDED" not in env:
        for name, command in worker_commands(env).items():
            procs.append(start(name, command, env))
    say(f"DSPex is serving on http://{host}:{port}/ (admin: /admin/, API docs: /api/docs/). Ctrl-C stops it.")

    stopping: set[int] = set()

    def stop(*_: object) -> None:
        for proc in procs:
            if proc.poll() is None and proc.pid not in stopping:
                stopping.add(proc.pid)
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(proc.poll() is None for proc in procs):
            time.sleep(1)
    finally:
        stop()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # Acknowledged-late tasks of a killed worker are recovered by the reaper.
                proc.kill()
                proc.wait()
    return max(proc.returncode or 0 for proc in procs)


if __name__ == "__main__":
    sys.exit(main())
