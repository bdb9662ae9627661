"""A separate process that asks llm.resilience for admissions, for the cross-process tests.

    python -m tests.llm.resilience_probe <provider> <endpoint> <threads> <calls> <traffic> <start_at> [finish]

Waits until the wall-clock `start_at`, then `threads` threads each ask `calls` admissions and, with
`finish`, report each admitted call as a success. Prints a JSON summary of outcomes.
"""

import json
import os
import sys
import threading
import time
from collections import Counter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from llm import resilience  # noqa: E402


def main() -> None:
    provider, endpoint, threads, calls, traffic, start_at = sys.argv[1:7]
    finish = "finish" in sys.argv[7:]
    outcomes: Counter = Counter()
    lock = threading.Lock()

    def work() -> None:
        with resilience.traffic(traffic):
            for _ in range(int(calls)):
                try:
                    ticket = resilience.admit(provider, endpoint)
                    outcome = "trial" if ticket.trial else "granted"
                    if finish:
                        ticket.finish(failure=None)
                except resilience.AdmissionError as exc:
                    outcome = exc.reason
                with lock:
                    outcomes[outcome] += 1

    time.sleep(max(0.0, float(start_at) - time.time()))
    workers = [threading.Thread(target=work) for _ in range(int(threads))]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    print(json.dumps(dict(outcomes)))


if __name__ == "__main__":
    main()
