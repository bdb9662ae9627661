"""The embedded mode of `make run` (SQLite, in-process tasks) runs queued executions too.

The worker's claim is one `UPDATE … RETURNING` inside a CTE on Postgres; SQLite has no such
statement, so there the claim and the read are two statements. This runs the real queued path —
publish, the task in-process, claim, run, record — in a subprocess on a SQLite database of its own.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
from programs.models import CognitiveProgram
from executions import runner
from executions.models import CognitiveExecution
spec = {"signature": "question -> answer"}
program = CognitiveProgram.objects.create(name="t", pipeline=spec, status="active")
execution = runner.create_execution(program, {"question": "What is 2 + 3?"})
execution.publish()  # eager in the embedded mode: the task runs here
execution.refresh_from_db()
print("RESULT", execution.status, execution.output, execution.attempts)
print("AGAIN", CognitiveExecution.objects.claim_row(execution.id))
"""


@pytest.mark.slow
def test_a_queued_execution_runs_in_the_embedded_mode(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "CELERY_"))}
    env.update(
        DSPEX_EMBEDDED="1",
        DJANGO_DEBUG="1",
        DSPEX_VAR_DIR=str(tmp_path),
        DJANGO_SETTINGS_MODULE="dspex_site.settings",
    )
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=ROOT, check=True, timeout=300)
    done = subprocess.run(
        [*manage, "shell", "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RESULT succeeded {'answer': '5'} 1" in done.stdout
    assert "AGAIN None" in done.stdout  # a redelivered message finds it claimed and does nothing
