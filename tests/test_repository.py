"""The repository explains itself: nothing points at notes outside it, nothing generated is tracked."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Spelled in pieces so that this file does not match itself.
OUTSIDE_NOTES = ("../" + "shared", "DESIGN" + ".md", "DSPY_" + "NOTES")
GENERATED = (".egg-info/", "__pycache__/", ".mypy_cache/", ".pytest_cache/", "staticfiles/")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_nothing_points_at_notes_outside_the_repository():
    offenders = []
    for name in tracked_files():
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        offenders += [f"{name}: {note}" for note in OUTSIDE_NOTES if note in text]
    assert offenders == []


def test_no_generated_file_is_tracked():
    assert [name for name in tracked_files() if any(part in name for part in GENERATED)] == []


def test_the_docs_the_readme_links_exist():
    readme = (ROOT / "README.md").read_text()
    for doc in ("docs/architecture.md", "docs/dspy.md"):
        assert doc in readme and (ROOT / doc).is_file()
