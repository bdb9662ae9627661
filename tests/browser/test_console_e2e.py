"""The operator console in a real browser: log in, fix a bad program, run it, read its trace."""

import os
import re

import pytest

from tests.factories import OperatorFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BAD = (
    '{"steps": [{"name": "answer", "module": "Predikt", "signature": "question -> answer",\n'
    '  "inputs": {"question": "$input.question"}}]}'
)
GOOD = '{"signature": "question -> answer"}'


@pytest.fixture
def console_settings(settings: object) -> None:
    # The live server speaks plain http; a priced simulated model makes the cost visible.
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = settings.SECURE_SSL_REDIRECT = False
    settings.SECURE_HSTS_SECONDS = 0
    settings.DSPEX_PRICES = {**settings.DSPEX_PRICES, "sim": {"prompt": 1.0, "completion": 2.0}}
    # Playwright's sync API runs an event loop in this thread; the test itself touches the
    # database only before the browser starts, the server thread does the rest.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def olga(console_settings: None) -> object:
    return OperatorFactory(username="olga", password="olga-console-pw")


def test_an_operator_fixes_runs_and_reads_a_program(olga, browser_page):
    page = browser_page
    page.goto("/admin/")
    page.fill("#id_username", "olga")
    page.fill("#id_password", "olga-console-pw")
    page.click("input[type=submit]")
    page.wait_for_selector("text=DSPex operator console")

    page.goto("/admin/programs/cognitiveprogram/add/")
    page.fill("#id_name", "capital-qa")
    page.select_option("#id_status", "active")
    page.fill("#id_pipeline", BAD)
    page.click("input[name=_save]")
    page.locator(".errorlist").first.wait_for()
    errors = page.locator(".errorlist").all_inner_texts()
    assert any("pipeline.steps[0].module" in text for text in errors), errors

    page.fill("#id_pipeline", GOOD)
    page.click("input[name=_save]")
    page.wait_for_selector("text=was added successfully")

    page.locator("tr", has_text="capital-qa").get_by_role("link", name="Run").click()
    page.fill("#id_input__question", "What is the capital of France?")
    page.click("input[name=_run]")
    page.locator("#run-output").wait_for()
    output = page.locator("#run-output").inner_text()
    assert '"answer"' in output
    run_cost = page.locator(".dspex-summary .dspex-cost").inner_text()
    assert re.fullmatch(r"\$0\.\d{6}", run_cost) and run_cost != "$0.000000", run_cost

    page.get_by_role("link", name=re.compile("open execution")).click()
    call = page.locator("li.dspex-lm").first
    call.wait_for()
    answer = call.locator(".dspex-answer pre").inner_text()
    assert "[[ ## answer ## ]]" in answer
    assert call.locator(".dspex-cost").inner_text() == run_cost
    assert call.locator(".dspex-role", has_text="system").count() == 1
    assert page.locator(".dspex-status-succeeded").first.is_visible()
    assert page.foreign_requests == []
