"""Small helpers shared by the benchmarks (they run outside pytest)."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def server_env(lm_base_url: str, model: str = "openai/gpt-4o-mini", **extra: str) -> dict:
    """Environment of the DSPex processes a benchmark starts: production settings on plain http
    over loopback, no per-token throttle (a load benchmark, not a deployment), the LM at
    `lm_base_url` (simlm)."""
    return {
        **os.environ,
        "DJANGO_DEBUG": "0",
        "DJANGO_HTTPS": "0",
        "DSPEX_API_THROTTLE_RATE": "",
        "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or "bench-" + "k" * 50,
        "DSPEX_LM": model,
        "DSPEX_LM_API_BASE": lm_base_url,
        "DSPEX_LM_API_KEY": "sk-bench",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def start_web(env: dict, workers: int = 1, threads: int = 4) -> tuple[subprocess.Popen, int]:
    """gunicorn (gthread) on a free loopback port, once it answers `/health/live`."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "dspex_site.wsgi", "-b", f"127.0.0.1:{port}"]
    command += ["-w", str(workers), "-k", "gthread", "--threads", str(threads)]
    web = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", timeout=60)
    except RuntimeError:
        web.kill()
        raise
    return web, port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def postgres_cpu_s() -> float:
    """CPU seconds of every Postgres backend process (they serve the web worker's queries)."""
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] and proc.info["name"].startswith("postgres"):
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    return total


def pg_backends(dbname: str) -> dict[int, float]:
    """CPU seconds of each Postgres backend connected to `dbname` (asked through Django's connection)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [dbname])
        pids = [row[0] for row in cursor.fetchall()]
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


class BackendCPU:
    """CPU seconds of every Postgres backend connected to `dbname` while it runs, including
    backends that connect and disconnect in between (a process that opens a connection per
    task): a thread polls `pg_stat_activity` every `every_s` through its own connection (not
    counted) and keeps each backend's last CPU reading. A backend living less than `every_s`
    can still be missed, and each one's last `every_s` of CPU is; `stop()` returns the total."""

    def __init__(self, dbname: str, every_s: float = 0.05) -> None:
        import psycopg

        self.dbname, self.every_s = dbname, every_s
        self.conn = psycopg.connect(dbname=dbname, host="localhost", autocommit=True)
        self.own = self.conn.info.backend_pid
        self.start_cpu: dict[int, float] = {}
        self.last_cpu: dict[int, float] = {}
        self.first = True
        self.stopped = threading.Event()
        self.sample()
        self.first = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        pids = [
            row[0]
            for row in self.conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [self.dbname])
        ]
        for pid in pids:
            if pid == self.own:
                continue
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            cpu = times.user + times.system
            # Backends alive at the start count from there; later ones from their first instant.
            self.start_cpu.setdefault(pid, cpu if self.first else 0.0)
            self.last_cpu[pid] = cpu

    def _loop(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.sample()

    def stop(self) -> float:
        self.stopped.set()
        self.thread.join()
        self.sample()
        self.conn.close()
        return sum(cpu - self.start_cpu[pid] for pid, cpu in self.last_cpu.items())


def tree_cpu_s(pid: int) -> float:
    parent = psutil.Process(pid)
    total = 0.0
    for proc in [parent, *parent.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def bench_direct(base_url: str, n: int, model: str, question: str = "What is question {i}?") -> dict:
    """`dspy.Predict("question -> answer")` called `n` times in this process against `base_url`
    (cache off, no retries): the floor any service running the same program adds to.
    `question` is formatted with the call's index `i`."""
    import dspy

    lm = dspy.LM(model, api_base=base_url, api_key="sk-bench", cache=False, num_retries=0)
    program = dspy.Predict("question -> answer")
    with dspy.context(lm=lm, disable_history=True):
        for i in range(50):
            program(question=f"warm up {i}?")
        latencies = []
        cpu0 = time.process_time()
        for i in range(n):
            started = time.perf_counter()
            program(question=question.format(i=i))
            latencies.append((time.perf_counter() - started) * 1000)
        cpu = time.process_time() - cpu0
    return {"latencies": latencies, "cpu_ms": cpu * 1000 / n}


def setup_program(name: str) -> tuple[str, str]:
    """Migrate the bench database and return (API token, program id) of a one-step `Predict`
    program `name` owned by the superuser `bench`, creating them if needed."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from programs.models import CognitiveProgram
    from projects import keys

    call_command("migrate", verbosity=0)
    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_superuser": True})
    token = keys.issue(name="bench", user=user)  # a fresh key per run: only its digest is stored
    program, _ = CognitiveProgram.objects.update_or_create(
        name=name, defaults={"pipeline": {"signature": "question -> answer"}, "status": "active"}
    )
    return token.key, str(program.id)


def start(cmd: list[str], env: dict, log: Path | None = None) -> subprocess.Popen:
    """A benchmark's server process, from the repository root, its output to `log` (or nowhere)."""
    out = log.open("w") if log else subprocess.DEVNULL
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_all(procs: "dict[str, subprocess.Popen]") -> None:
    """Stop every process a benchmark started: terminate all, then wait (killing what hangs)."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def redis_server_command(port: int, workdir: Path) -> list[str]:
    """A benchmark's private redis-server on loopback: nothing saved, its files in `workdir`."""
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)]


def start_stack(
    tmp: Path,
    program: str,
    *,
    web_workers: int,
    web_threads: int,
    workers: int,
    pool: str,
    concurrency: int,
    latency_ms: float,
    worker_name: str,
) -> tuple["dict[str, subprocess.Popen]", dict, str, str, int]:
    """The background benchmarks' deployment on loopback: a private redis-server (broker and
    caches), `simlm` with `latency_ms`, gunicorn (gthread) and `workers` Celery workers on
    `llm_calls,priority`; program `program` set up in the bench database. Returns the processes
    (for `stop_all`), the servers' environment, the API token, the program id and the web port,
    once simlm and the web answer (exits with simlm's log if it does not start)."""
    redis_port, sim_port, web_port = free_port(), free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    os.environ["REDIS_URL"] = redis_url
    procs: dict[str, subprocess.Popen] = {}
    procs["redis"] = start(redis_server_command(redis_port, tmp), {})
    token, program_id = setup_program(program)
    env = server_env(
        f"http://127.0.0.1:{sim_port}/v1", "openai/sim-default", REDIS_URL=redis_url, LOG_JSON="0"
    )
    py = sys.executable
    sim = [
        "manage.py",
        "simlm",
        "--host",
        "127.0.0.1",
        "--port",
        str(sim_port),
        "--latency-ms",
        str(latency_ms),
    ]
    procs["simlm"] = start([py, *sim], env, tmp / "simlm.log")
    web = [
        "-b",
        f"127.0.0.1:{web_port}",
        "-w",
        str(web_workers),
        "-k",
        "gthread",
        "--threads",
        str(web_threads),
    ]
    procs["web"] = start([py, "-m", "gunicorn", "dspex_site.wsgi", *web], env)
    worker = ["-P", pool, "-c", str(concurrency), "-l", "WARNING", "-Q", "llm_calls,priority"]
    quiet = ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    for i in range(workers):
        command = [
            py,
            "-m",
            "celery",
            "-A",
            "dspex_site",
            "worker",
            *worker,
            "-n",
            f"{worker_name}{i}@%h",
            *quiet,
        ]
        procs[f"worker {i}"] = start(command, env, tmp / f"worker{i}.log")
    try:
        try:
            wait_http(f"http://127.0.0.1:{sim_port}/health", timeout=90)
        except RuntimeError:
            sys.exit("simlm did not start: " + (tmp / "simlm.log").read_text()[-2000:])
        wait_http(f"http://127.0.0.1:{web_port}/health/live", timeout=90)
    except BaseException:
        stop_all(procs)
        raise
    return procs, env, token, program_id, web_port
