"""A private network of "hosts" for the multi-host drill: one network namespace per host, each
with a veth pair whose other end is on a bridge in the root namespace (which holds the
network's .1 address, so the test process, HAProxy and the hosts reach each other).

Every name starts with the slot's prefix (`dspex<slot>-` for namespaces, `dx<slot>` for links:
interface names have at most 15 characters), so suites of different slots never meet, and the
leftovers of a crashed earlier run of the same slot are found and removed before a new run.
Each host also gets its own hostname (a UTS namespace per process), because a job's `worker`
column is `hostname:pid` (dspex_site.jobs.worker_name) and Celery's `%h` is the hostname too.
"""

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import ROOT


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def netns_pids(netns: str) -> list[int]:
    """Every process inside network namespace `netns` (`ip netns pids`)."""
    out = ip("netns", "pids", netns, check=False).stdout
    return [int(pid) for pid in out.split()]


def kill_all(netns: str) -> list[int]:
    """SIGKILL every process of `netns` at once, as a host losing power would; the pids killed."""
    pids = netns_pids(netns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while netns_pids(netns) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


@dataclass
class Host:
    """One host of the network: a namespace, its address and its hostname. `start` runs a
    process there (its own session, output in `logs/<name>.log`)."""

    name: str
    netns: str
    address: str
    logs: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def command(self, argv: list[str]) -> list[str]:
        # `ip netns exec` and `unshare` exec; the shell sets the hostname and execs the process.
        return [
            *("ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c"),
            'hostname "$0" && exec "$@"',
            self.name,
            *argv,
        ]

    def start(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        log = (self.logs / f"{self.name}-{name}.log").open("ab")
        proc = subprocess.Popen(
            self.command(argv),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def pids(self) -> list[int]:
        return netns_pids(self.netns)

    def kill_all(self) -> list[int]:
        """Every process of this host killed at once (SIGKILL); the Popen objects reaped."""
        pids = kill_all(self.netns)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs.clear()
        return pids

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for path in sorted(self.logs.glob(f"{self.name}-*.log")):
            text = path.read_text(errors="replace")
            alarms = [line for line in text.splitlines() if re.search(r"CRITICAL|ERROR|Traceback", line)]
            parts.append(f"--- {path.name}\n" + "\n".join(alarms[-20:]) + f"\n(last lines)\n{text[-chars:]}")
        return "\n".join(parts)


class Network:
    """The bridge `dx<slot>br` at 10.231.<slot>.1/24 and one namespace per host."""

    def __init__(self, slot: int, logs: Path) -> None:
        self.slot, self.logs = slot, logs
        self.prefix = f"dspex{slot}-"
        self.link_prefix = f"dx{slot}"
        self.bridge = f"{self.link_prefix}br"
        self.subnet = f"10.231.{slot}"
        self.gateway = f"{self.subnet}.1"
        self.cidr = f"{self.subnet}.0/24"
        self.hosts: dict[str, Host] = {}

    def clean(self) -> None:
        """Remove this slot's namespaces (their processes killed first) and links, whether
        this run made them or a crashed earlier one did."""
        for line in ip("netns", "list", check=False).stdout.splitlines():
            netns = line.split()[0] if line.split() else ""
            if netns.startswith(self.prefix):
                kill_all(netns)
                ip("netns", "del", netns, check=False)
        for line in ip("-o", "link", "show", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(self.link_prefix):
                ip("link", "del", name, check=False)

    def create(self) -> None:
        self.clean()
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_host(self, name: str, number: int) -> Host:
        netns, veth, address = f"{self.prefix}{name}", f"{self.link_prefix}{name}", f"{self.subnet}.{number}"
        ip("netns", "add", netns)
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("link", "set", veth, "master", self.bridge, "up")
        ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        ip("-n", netns, "link", "set", "lo", "up")
        host = Host(f"{self.prefix}{name}", netns, address, self.logs)
        self.hosts[name] = host
        return host
