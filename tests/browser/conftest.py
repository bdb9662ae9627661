"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, against pytest-django's live server.

Playwright's bundled browsers are never downloaded: `.ci/run` installs the distribution's chromium.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("DSPEX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page(live_server: object) -> Iterator[object]:
    """A fresh page; every request it makes must go to the live server (no CDN, no phoning home)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    foreign: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(base_url=live_server.url)
        context.set_default_timeout(20_000)
        page = context.new_page()
        page.on(
            "request",
            lambda request: None if request.url.startswith(live_server.url) else foreign.append(request.url),
        )
        page.foreign_requests = foreign
        yield page
        context.close()
        browser.close()
