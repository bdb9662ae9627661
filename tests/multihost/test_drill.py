"""The multi-host deployment drill (issue 19, docs/operations.md "Multi-host deployment").

Three hosts of the test's own (network namespaces on a bridge): a data host (Postgres, Redis,
simlm, beat) and two application hosts (gunicorn and the Celery worker groups each), HAProxy in
front of the two webs. Under steady load through HAProxy (synchronous executions from a few
client threads, queued executions, two batches) every process of one application host is
killed at once (SIGKILL of every pid in its namespace). Then:

- nothing is lost: every execution the API accepted ends `succeeded`; a synchronous (or queued)
  request in flight on the dead web at the kill may fail, with HAProxy's JSON error, and its
  stored execution still succeeds (re-run by the reaper on the survivor); so may one sent to the
  dead web in HAProxy's detection window (before it marked the web down: its connection may
  die in the dying gunicorn's backlog), and no request at any other time. Each failed request
  gets an HTTP answer in DSPex's error shape (`502 upstream_lost`, ...), never a dropped
  connection, and has its line in HAProxy's log;
- nothing runs twice: one row per submitted input, each row's provider calls (counted by simlm
  per `[mark:...]`) at most its attempts, and its trace is one run's (one LM call);
- every batch finishes; the survivor's workers finish the dead host's work within the
  documented bound (< 2 min); HAProxy marks the dead web down;
- the host comes back: HAProxy marks it up and work spreads over both hosts again.

The figures (time to detect, to recover, lost / duplicated / failed in flight) are printed.
Needs root (network namespaces), iproute2 and HAProxy; without them the test is skipped, except
when DSPEX_REQUIRE_MULTIHOST=1 (CI) makes that a failure.
The processes' output (and HAProxy's request log) is printed when the test fails, and copied to
the directory DSPEX_DRILL_LOGS names, when set.
"""

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import pytest
import requests

from dspex_site.beat import sync_schedules
from tests.factories import TokenFactory
from tests.multihost.drill import FAILOVER, Deployment
from tests.support import database_url_of_tests, wait_for

pytestmark = [pytest.mark.multihost, pytest.mark.e2e, pytest.mark.slow]

SLOT = int(os.environ.get("DSPEX_TEST_SLOT", "0"))
RECOVERY_BOUND_S = 120  # the documented bound
MARK = re.compile(r"\[mark:([A-Za-z0-9_.-]+)\]")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "haproxy", "unshare"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed"
    return None


@pytest.fixture
def drill_program(transactional_db: None, make_program, operator) -> tuple[str, str]:
    """The program and API token of the drill's clients, committed before the data host copies
    the test database."""
    return str(make_program().id), TokenFactory(user=operator).key


@pytest.fixture
def deployment(drill_program: tuple[str, str], settings: pytest.FixtureRequest) -> Iterator[Deployment]:
    problem = _missing()
    if problem:
        if os.environ.get("DSPEX_REQUIRE_MULTIHOST") == "1":
            pytest.fail(f"the multi-host drill cannot run: {problem}")
        pytest.skip(f"the multi-host drill cannot run: {problem}")
    # The beat rows the data host's beat reads, with the drill's reap interval.
    settings.DSPEX_REAP_INTERVAL_S = float(FAILOVER["DSPEX_REAP_INTERVAL_S"])
    sync_schedules()
    drill = Deployment(SLOT, database_url_of_tests())
    try:
        drill.start()
        yield drill
    finally:
        # Shown by pytest when the test (or the bring-up) failed: every process's last output.
        print("\n".join(host.log_tail() for host in drill.network.hosts.values()))
        print(drill.haproxy_log())
        drill.close()


@dataclass
class Submission:
    mark: str
    kind: str  # sync, queued, batch
    sent: float
    done: float = 0.0
    status: int = 0  # HTTP status; 0: no answer (connection error)
    body: dict = field(default_factory=dict)


class Load:
    """Steady load through HAProxy: `sync_clients` threads of wait=true executions, one thread
    of queued executions (about `queued_per_s`), and batches submitted with `batch()`."""

    def __init__(self, base: str, token: str, program: str, sync_clients: int = 3, queued_per_s: float = 3):
        self.base, self.program = base, program
        self.headers = {"Authorization": f"Token {token}"}
        self.sync_clients, self.queued_per_s = sync_clients, queued_per_s
        self.submissions: list[Submission] = []
        self.batches: list[str] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.sync_clients):
            self.threads.append(threading.Thread(target=self._sync, args=(n,), daemon=True))
        self.threads.append(threading.Thread(target=self._queued, daemon=True))
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _post(self, session: requests.Session, kind: str, mark: str, wait: bool) -> None:
        sub = Submission(mark, kind, time.monotonic())
        with self.lock:
            self.submissions.append(sub)
        body = {"input": {"question": f"drill question [mark:{mark}]?"}, "wait": wait, "cache": False}
        try:
            response = session.post(
                f"{self.base}/api/v1/programs/{self.program}/execute/", json=body, timeout=60
            )
            sub.status = response.status_code
            try:
                sub.body = response.json()
            except ValueError:
                sub.body = {"text": response.text[:300]}
        except requests.RequestException as exc:
            sub.body = {"exception": repr(exc)[:300]}
        sub.done = time.monotonic()

    def _sync(self, n: int) -> None:
        session = requests.Session()
        session.headers.update(self.headers)
        i = 0
        while not self.stopping.is_set():
            i += 1
            self._post(session, "sync", f"s{n}-{i}", wait=True)
            time.sleep(0.1)

    def _queued(self) -> None:
        session = requests.Session()
        session.headers.update(self.headers)
        i = 0
        while not self.stopping.wait(1 / self.queued_per_s):
            i += 1
            self._post(session, "queued", f"q-{i}", wait=False)

    def batch(self, name: str, size: int, concurrency: int) -> str:
        inputs = [{"question": f"drill question [mark:{name}-{i}]?"} for i in range(size)]
        response = requests.post(
            f"{self.base}/api/v1/batches/",
            json={"program": self.program, "inputs": inputs, "concurrency": concurrency, "cache": False},
            headers=self.headers,
            timeout=30,
        )
        assert response.status_code == 202, response.text
        batch_id = response.json()["id"]
        self.batches.append(batch_id)
        return batch_id

    def batch_state(self, batch_id: str) -> dict:
        response = requests.get(f"{self.base}/api/v1/batches/{batch_id}/", headers=self.headers, timeout=10)
        response.raise_for_status()
        return response.json()


def rows_by_mark(drill: Deployment) -> dict[str, list[dict]]:
    """Every execution of the drill by the mark of its input."""
    rows = drill.sql(
        "SELECT id, input, status, attempts, worker, errors, trace, batch_id, started_at, finished_at "
        "FROM cognitive_executions"
    )
    names = ("id", "input", "status", "attempts", "worker", "errors", "trace", "batch", "started", "finished")
    by_mark: dict[str, list[dict]] = {}
    for row in rows:
        record = dict(zip(names, row, strict=True))
        found = MARK.search(json.dumps(record["input"]))
        if found:
            by_mark.setdefault(found.group(1), []).append(record)
    return by_mark


def host_of(worker: str) -> str:
    return worker.split(":", 1)[0]


def seen_hosts(
    drill: Deployment, since: datetime, kinds: tuple[str, ...] = ("s", "q", "b")
) -> dict[str, set]:
    """{"s"/"q"/"b": hosts whose processes finished executions of that kind started after `since`}."""
    seen: dict[str, set] = {kind: set() for kind in kinds}
    rows = drill.sql(
        "SELECT input->>'question', worker FROM cognitive_executions "
        "WHERE status = 'succeeded' AND started_at > %s",
        [since],
    )
    for question, worker in rows:
        found = MARK.search(question or "")
        if found and found.group(1)[0] in seen:
            seen[found.group(1)[0]].add(host_of(worker))
    return seen


class Watch(threading.Thread):
    """Polls `probe()` every `every_s` from `start()`; `at` is the first time it was true."""

    def __init__(self, probe, every_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.probe, self.every_s, self.at = probe, every_s, 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.probe():
                    self.at = time.monotonic()
                    return
            except Exception:  # noqa: S110 - a probe failing (socket, DB) is retried
                pass
            self.stopping.wait(self.every_s)


def test_losing_an_application_host_loses_nothing_and_runs_nothing_twice(
    deployment: Deployment, drill_program: tuple[str, str], capsys: pytest.CaptureFixture
) -> None:
    drill = deployment
    program, token = drill_program
    victim, survivor = drill.apps["app1"], drill.apps["app2"]
    names = {victim.name, survivor.name}
    started_at = drill.sql("SELECT now()")[0][0]
    load = Load(drill.base_url, token, program)
    load.start()
    batch_sizes = {"b1": 50, "b2": 50}
    batches = {load.batch(name, size, concurrency=4): size for name, size in batch_sizes.items()}

    # Steady state: both hosts run work (their webs the synchronous runs, their workers the rest).
    wait_for(
        lambda: all(hosts >= names for hosts in seen_hosts(drill, started_at).values()),
        60,
        "both hosts to run synchronous, queued and batch executions",
        interval=0.5,
    )

    # --- the kill ---------------------------------------------------------------------------------
    lb_down = Watch(lambda: drill.lb_states().get("web1") == "down")
    kill_wall = drill.sql("SELECT now()")[0][0]
    t_kill = time.monotonic()
    killed = victim.kill_all()
    lb_down.start()
    assert not victim.pids(), "every process of the killed host is gone"
    held = [
        row[0]
        for row in drill.sql(
            "SELECT id FROM cognitive_executions WHERE status = 'running' AND worker LIKE %s",
            [victim.name + ":%"],
        )
    ]
    reaped = Watch(
        lambda: (
            not drill.sql(
                "SELECT 1 FROM cognitive_executions WHERE status = 'running' AND worker LIKE %s",
                [victim.name + ":%"],
            )
        ),
        every_s=0.25,
    )
    reaped.start()
    # Recovered: every execution in flight at the kill (running anywhere, or published and
    # waiting: some of those were prefetched by the dead workers) has succeeded.
    in_flight = [
        row[0]
        for row in drill.sql(
            "SELECT id FROM cognitive_executions WHERE status = 'running' "
            "OR (status = 'pending' AND queued_at IS NOT NULL AND queued_at < %s)",
            [kill_wall],
        )
    ]
    recovered = Watch(
        lambda: (
            not drill.sql(
                "SELECT 1 FROM cognitive_executions WHERE id = ANY(%s) AND status <> 'succeeded'", [in_flight]
            )
        ),
        every_s=0.25,
    )
    recovered.start()
    held_done = Watch(
        lambda: (
            not drill.sql(
                "SELECT 1 FROM cognitive_executions WHERE id = ANY(%s) AND status <> 'succeeded'", [held]
            )
        ),
        every_s=0.25,
    )
    held_done.start()
    for watch, what in (
        (lb_down, "HAProxy to mark the dead web down"),
        (reaped, "the reaper"),
        (held_done, "the dead host's running executions to succeed on the survivor"),
        (recovered, "the survivor to finish the dead host's work"),
    ):
        watch.join(timeout=RECOVERY_BOUND_S - (time.monotonic() - t_kill))
        if not watch.at:
            watch.stopping.set()
            raise AssertionError(f"timed out waiting for {what} ({RECOVERY_BOUND_S} s bound)")
    time.sleep(3)  # load on the survivor alone for a moment

    # --- the host comes back -----------------------------------------------------------------------
    t_restart = time.monotonic()
    drill.start_app(victim)
    drill.wait_app(victim)
    wait_for(
        lambda: drill.lb_states().get("web1") == "up", 30, "HAProxy to mark the web back up", interval=0.1
    )
    t_back = time.monotonic()
    back_wall = drill.sql("SELECT now()")[0][0]
    wait_for(
        lambda: all(hosts >= names for hosts in seen_hosts(drill, back_wall, ("s", "q")).values()),
        60,
        "work to spread over both hosts again",
        interval=0.5,
    )
    spread = seen_hosts(drill, back_wall)
    load.stop()
    batch_states = {
        batch: wait_for(
            lambda batch=batch: (state := load.batch_state(batch))["status"] == "finished" and state,
            90,
            f"batch {batch} to finish",
            interval=0.5,
        )
        for batch in batches
    }
    wait_for(
        lambda: not drill.sql("SELECT 1 FROM cognitive_executions WHERE status IN ('pending', 'running')"),
        60,
        "every execution to finish",
        interval=0.5,
    )

    # --- the books ---------------------------------------------------------------------------------
    by_mark = rows_by_mark(drill)
    calls = drill.simlm.stats()["marks"]
    lost, duplicated, failed_in_flight, failed_in_window, failed_late = [], [], [], [], []
    # Sent after the kill but before HAProxy took the dead web out: its connection may land in
    # the dying gunicorn's listen backlog and die with it. HAProxy cannot tell that gunicorn
    # never read it, so it does not retry it: the client gets `502 upstream_lost`.
    window_end = lb_down.at + 1.0
    expected = {sub.mark: sub for sub in load.submissions}
    batch_marks = {f"{name}-{i}" for name, size in batch_sizes.items() for i in range(size)}
    for mark, sub in expected.items():
        rows = by_mark.get(mark, [])
        if sub.status in (200, 202):
            if len(rows) != 1 or rows[0]["status"] != "succeeded":
                lost.append((mark, sub.status, [(r["status"], r["errors"]) for r in rows]))
        elif sub.sent <= t_kill <= sub.done + 1.0 or t_kill <= sub.sent <= window_end:
            (failed_in_flight if sub.sent <= t_kill else failed_in_window).append(sub)
            if rows and rows[0]["status"] != "succeeded":
                lost.append((mark, sub.status, [(r["status"], r["errors"]) for r in rows]))
        else:
            failed_late.append((mark, sub.status, sub.body))
    for mark in batch_marks:
        rows = by_mark.get(mark, [])
        if len(rows) != 1 or rows[0]["status"] != "succeeded":
            lost.append((mark, "batch", [(r["status"], r["errors"]) for r in rows]))
    # Every execution here called the provider (cache off, unique inputs): a mark simlm never saw
    # would make the provider-call check below vacuous.
    uncounted = [
        mark for mark, rows in by_mark.items() if rows[0]["status"] == "succeeded" and not calls.get(mark)
    ]
    for mark, rows in by_mark.items():
        lm_events = [e for e in rows[0]["trace"] if e.get("kind") == "lm"]
        if len(rows) > 1 or calls.get(mark, 0) > rows[0]["attempts"] or len(lm_events) != 1:
            duplicated.append((mark, len(rows), calls.get(mark, 0), rows[0]["attempts"], len(lm_events)))
    reran = {r["id"]: r for rows in by_mark.values() for r in rows if str(r["id"]) in {str(h) for h in held}}

    # The dead host's messages stay unacknowledged in Redis (the broker gives them back only after
    # its 5 h visibility timeout); the rows they carried were recovered by the reaper.
    stranded = drill.unacked_messages()
    lb_failed = [line for line in drill.haproxy_requests() if line["status"] >= 500]
    stranded_rows = {args[0] for task, args in stranded if task == "executions.run"}
    figures = {
        "processes killed on the host": len(killed),
        "executions running on it at the kill": len(held),
        "HAProxy marks its web down (s)": round(lb_down.at - t_kill, 2),
        "reaper re-queued all its running rows (s)": round(reaped.at - t_kill, 2),
        "its running executions succeeded on the survivor (s)": round(held_done.at - t_kill, 2),
        "executions in flight anywhere at the kill": len(in_flight),
        "all of them succeeded (s)": round(recovered.at - t_kill, 2),
        "messages left unacknowledged by the dead workers": len(stranded),
        "of them for executions not running there (held, not started)": len(
            stranded_rows - {str(h) for h in held}
        ),
        "restarted host back in HAProxy (s from restart)": round(t_back - t_restart, 2),
        "submissions (sync + queued)": len(expected),
        "batch items": len(batch_marks),
        "lost": len(lost),
        "run twice": len(duplicated),
        "failed requests in flight at the kill": len(failed_in_flight),
        "of them with no stored execution (died before its INSERT)": sum(
            1 for sub in failed_in_flight if not by_mark.get(sub.mark)
        ),
        "failed requests sent to the dead web before HAProxy marked it down": len(failed_in_window),
        "of them with no stored execution": sum(1 for sub in failed_in_window if not by_mark.get(sub.mark)),
        "statuses of the failed requests (in flight / window)": [
            sorted(sub.status for sub in failed_in_flight),
            sorted(sub.status for sub in failed_in_window),
        ],
        "HAProxy's log of the failed requests (status, termination state, ms)": [
            (line["status"], line["state"], line["total_ms"]) for line in lb_failed
        ],
        "failed requests at any other time": len(failed_late),
        "hosts after the restart (sync/queued/batch)": {k: sorted(v) for k, v in spread.items()},
        "settings": FAILOVER,
    }
    with capsys.disabled():
        print("\nmulti-host drill figures:\n" + json.dumps(figures, indent=2, default=str))

    assert held, "the kill hit executions in flight (otherwise the drill proves nothing)"
    assert not lost, f"executions lost: {lost[:10]}"
    assert not uncounted, f"simlm counted no provider call for {uncounted[:10]}"
    assert not duplicated, (
        f"executions run twice (mark, rows, provider calls, attempts, LM events): {duplicated[:10]}"
    )
    assert not failed_late, f"requests failed outside the kill: {failed_late[:10]}"
    assert len(failed_in_flight) <= load.sync_clients + 1, "at most the requests in flight on the dead web"
    assert len(failed_in_window) <= 2 * (load.sync_clients + 1), "a few requests of the detection window"
    # Every one of them answered by HAProxy in DSPex's error shape: status 0 (the connection
    # closed without an answer) is what HAProxy 2.6 does without `option httpclose` to a request
    # that is not the first of its client connection (docker/haproxy/haproxy.cfg).
    codes = {502: "upstream_lost", 503: "no_web_server", 504: "upstream_timeout"}
    for subs, allowed in ((failed_in_flight, (502, 504)), (failed_in_window, (502, 503))):
        for sub in subs:
            assert sub.status in allowed, f"{sub.kind} {sub.mark}: {sub.status} {sub.body}"
            assert sub.body.get("code") == codes[sub.status], sub.body
    assert len(lb_failed) == len(failed_in_flight + failed_in_window), (
        f"HAProxy logged {len(lb_failed)} failed requests (5xx), the clients saw "
        f"{len(failed_in_flight + failed_in_window)}: {lb_failed}"
    )
    for row in reran.values():
        assert row["attempts"] == 2 and [e["type"] for e in row["errors"]] == ["worker_lost"], row
        assert host_of(row["worker"]) == survivor.name, row["worker"]
    for batch, size in batches.items():
        counts = {status: n for status, n in batch_states[batch]["counts"].items() if n}
        assert counts == {"succeeded": size}, batch_states[batch]
    assert recovered.at - t_kill < RECOVERY_BOUND_S
    assert lb_down.at - t_kill < 15, "HAProxy checks every second and needs 2 failures"
    for kind in ("s", "q"):
        assert spread[kind] >= names, f"after the restart, {kind} work ran on {spread[kind]} only"
