"""The operator dashboards in a real browser: every chart draws (checked on a screenshot)."""

import io
import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from PIL import Image

from monitoring.charts import PALETTE, STATUS_COLORS
from monitoring.rollups import rollup_hours
from tests.factories import ExecutionFactory, OperatorFactory, usage_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path(os.environ.get("DSPEX_SCREENSHOT_DIR", "var/screenshots"))


@pytest.fixture
def operator_with_data(settings: object, make_program: object) -> object:
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = settings.SECURE_SSL_REDIRECT = False
    settings.SECURE_HSTS_SECONDS = 0
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    user = OperatorFactory(username="dana", password="dana-dash-pw")
    program = make_program(name="charted")
    now = timezone.now()
    for i in range(30):
        at = now - timedelta(hours=i % 20)
        status = "failed" if i % 7 == 0 else "succeeded"
        metrics = usage_metrics(
            lm_calls=2,
            cache_hits=i % 2,
            prompt_tokens=200,
            completion_tokens=40,
            cost_usd=0.002 * (1 + i % 3),
            saved_cost_usd=0.001 * (i % 2),
        )
        ExecutionFactory(
            program=program,
            status=status,
            duration_ms=40 + 30 * i,
            created_at=at,
            finished_at=at,
            metrics=metrics,
        )
    rollup_hours([now - timedelta(hours=h) for h in range(21)])
    yield user
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def chart_colors() -> set[tuple[int, int, int]]:
    return {tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in (*PALETTE, *STATUS_COLORS.values())}


def drawn_pixels(png: bytes) -> int:
    """How many pixels of a chart screenshot carry a series colour (bars, lines, dots)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colors = chart_colors()
    return sum(1 for pixel in image.get_flattened_data() if pixel in colors)


@pytest.mark.parametrize("dashboard", ["costs", "executions", "cache", "optimizations"])
def test_dashboard_charts_render(operator_with_data, browser_page, dashboard):
    page = browser_page
    page.goto("/admin/login/")
    page.fill("#id_username", "dana")
    page.fill("#id_password", "dana-dash-pw")
    page.click("input[type=submit]")
    page.goto(
        f"/admin/dashboards/{dashboard}/?start={(timezone.localdate() - timedelta(days=1)).isoformat()}"
    )
    charts = page.locator("svg.dspex-chart")
    assert charts.count() >= 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"dashboard-{dashboard}.png"), full_page=True)
    for index in range(charts.count()):
        chart = charts.nth(index)
        box = chart.bounding_box()
        assert box and box["width"] > 400 and box["height"] > 100, box
        if dashboard != "optimizations":  # no optimization results exist: an empty, framed chart
            assert drawn_pixels(chart.screenshot()) > 50, f"chart {index} of {dashboard} drew no series"
    assert not page.foreign_requests, page.foreign_requests
