"""GET /docs in Debian's headless chromium (driven by Playwright, as tests/test_page.py does).

The page must render the gateway's OpenAPI document with the /predict operation visible, run a
"Try it out" call, and load everything from the gateway itself: every request the browser makes is
recorded, and any that would leave 127.0.0.1 is aborted and fails the test. The page's
Content-Security-Policy must not be violated. A screenshot goes to tests/artifacts/docs-page.png.
"""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from test_page import browser, new_page, screenshot  # noqa: F401  (fixtures: Debian's chromium)

from conftest import make_config

try:
    from playwright.sync_api import expect
except ImportError as exc:  # a missing driver is a broken setup, not a reason to skip
    raise ImportError("the page tests need Playwright: pip install -r requirements-dev.txt") from exc


@pytest.fixture
def docs_page(redis_url, gateway_factory, new_page):  # noqa: F811
    web, _ = gateway_factory(make_config(redis_url))
    page = new_page()
    requests_seen: list[str] = []
    console: list[str] = []

    def only_local(route):
        requests_seen.append(route.request.url)
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            route.abort()

    page.route("**/*", only_local)
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.goto(web.url + "/docs")
    return web, page, requests_seen, console


def test_docs_render_the_api_from_the_gateway_alone(docs_page):
    web, page, requests_seen, console = docs_page
    predict = page.locator(".opblock-post .opblock-summary-path[data-path='/predict']")
    expect(predict).to_be_visible(timeout=20_000)
    expect(page.locator(".info .title")).to_contain_text("Image-recognition gateway")
    for path in ("/v1/models/{name}/predict", "/v2/models/{name}/infer", "/v1/tasks"):
        expect(page.locator(f".opblock-summary-path[data-path='{path}']").first).to_be_visible()

    predict.click()                                     # the operation opens: its request body is documented
    expect(page.locator(".opblock.is-open .opblock-section-request-body")).to_be_visible()
    screenshot(page, "docs-page.png")

    models = page.locator(".opblock-get:has(.opblock-summary-path[data-path='/v1/models'])")
    models.locator(".opblock-summary").click()          # Try it out: GET /v1/models from the page
    models.get_by_role("button", name="Try it out").click()
    models.get_by_role("button", name="Execute").click()
    status = models.locator(".live-responses-table tbody td.response-col_status").first
    expect(status).to_have_text("200", timeout=15_000)

    hosts = {urlsplit(url).hostname for url in requests_seen}
    assert hosts == {"127.0.0.1"}, sorted(url for url in requests_seen if "127.0.0.1" not in url)
    assert any(url.endswith("/openapi.json") for url in requests_seen)
    assert not [line for line in console if "Content Security Policy" in line or line.startswith("error")], console
