"""What our users do, in a real browser: DRF's browsable API and Swagger UI at /docs/.

Debian's Chromium (tools/apt-packages.txt) driven by Playwright (requirements/test.txt), headless,
against fresh services on loopback. Every request the pages make is routed: anything not for
127.0.0.1 is aborted and fails the test, so both front ends are proven fully self-hosted. One
screenshot of each page lands in the test's tmp_path.
"""

import json
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect, sync_playwright

from testsupport.browser import LoopbackGuard, launch_chromium

WAIT_MS = 15_000  # the longest any single wait may take; each normally takes milliseconds
ADA = {"name": "Ada Lovelace", "email": "ada@example.com"}
ITEMS = [{"sku": "BOOK-42", "quantity": 2, "unit_price": "12.50"}, {"sku": "PEN", "quantity": 3, "unit_price": "0.10"}]
BOOTSTRAP_PRIMARY = "rgb(51, 122, 183)"  # Bootstrap 3's .btn-primary: proof its CSS was applied


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture
def guarded(browser, start):
    """A fresh context (no cookies, no cache, no service workers) whose every request is routed.

    It depends on ``start`` so that it closes before any service stops: the browser's keep-alive
    connections would otherwise hold up each service's graceful shutdown."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    context.set_default_timeout(WAIT_MS)
    guard = LoopbackGuard(context)
    page = context.new_page()
    yield page, guard
    context.close()


def test_the_guard_stops_and_reports_a_request_to_another_host(guarded):
    """What makes the "self-hosted" assertions below mean something: an off-loopback request is
    aborted before it leaves the browser, and reported."""
    page, guard = guarded
    page.set_content('<img id="remote" src="http://192.0.2.1/pixel.png">')  # TEST-NET-1: never routable
    page.wait_for_function("() => document.getElementById('remote').complete")
    assert guard.blocked == ["http://192.0.2.1/pixel.png"]
    with pytest.raises(AssertionError, match=r"192\.0\.2\.1"):
        guard.assert_loopback_only()


def posted_to(path):
    return lambda response: response.request.method == "POST" and urlsplit(response.url).path == path


def response_info(page) -> tuple[str, dict]:
    """The status line and the JSON body the browsable API shows in its response panel."""
    text = page.locator(".response-info pre").inner_text()
    return text.splitlines()[0], json.loads(text[text.index("{") :])


def post_raw_form(page, path: str, body: dict) -> dict:
    """Fill the raw-data form's content with ``body``, press POST; the shown 201's JSON body."""
    form = page.locator("#post-generic-content-form form[method=POST]")
    expect(form.locator("select#id__content_type")).to_have_value("application/json")
    form.locator("textarea#id__content").fill(json.dumps(body, indent=4))
    with page.expect_response(posted_to(path)) as posted:
        form.get_by_role("button", name="POST").click()
    assert posted.value.status == 201, posted.value.text()
    # DRF's ajax-form.js writes the answer's page over the current document.
    expect(page.locator(".request-info")).to_contain_text(f"POST {path}")
    expect(page.locator(".response-info")).to_contain_text("HTTP 201 Created")
    status, shown = response_info(page)
    assert status == "HTTP 201 Created"
    # The form asked for HTML (the page); the resource's own URL is in the real header too.
    assert posted.value.headers["location"] == f"{path}/{shown['id']}"
    expect(page.locator(".response-info")).to_contain_text(f"Location: {path}/{shown['id']}")
    return shown


def open_browsable(page, guard, url: str, title: str) -> None:
    response = page.goto(url)
    assert response.status == 200
    expect(page).to_have_title(f"{title} – Django REST framework")
    expect(page.locator("h1")).to_have_text(title)
    css = guard.responses_under("/static/rest_framework/", resource_type="stylesheet")
    assert css.get("/static/rest_framework/css/bootstrap.min.css") == 200, css
    assert set(css.values()) == {200}, css


def test_browsable_api_creates_a_user_and_an_order(guarded, user_service, order_service, tmp_path):
    page, guard = guarded

    open_browsable(page, guard, f"{user_service.url}/users", "User List")
    expect(page.get_by_role("button", name="POST")).to_have_css("background-color", BOOTSTRAP_PRIMARY)
    expect(page.locator("#post-generic-content-form textarea#id__content")).to_be_visible()
    user = post_raw_form(page, "/users", ADA)
    assert user == {"id": 1, **ADA}
    page.screenshot(path=tmp_path / "users-post-201.png", full_page=True)

    open_browsable(page, guard, f"{user_service.url}/users/1", "User Instance")
    assert response_info(page) == ("HTTP 200 OK", user)
    page.screenshot(path=tmp_path / "user-1.png", full_page=True)

    open_browsable(page, guard, f"{order_service.url}/orders", "Order List")
    # The form's template carries "total": null; a user who leaves it so gets the computed total.
    order = post_raw_form(page, "/orders", {"user_id": user["id"], "items": ITEMS, "total": None})
    assert order["total"] == "25.30"
    assert (order["id"], order["user_id"], order["items"]) == (1, user["id"], ITEMS)
    page.screenshot(path=tmp_path / "orders-post-201.png", full_page=True)

    open_browsable(page, guard, f"{order_service.url}/orders/1", "Order Instance")
    assert response_info(page) == ("HTTP 200 OK", order)
    page.screenshot(path=tmp_path / "order-1.png", full_page=True)

    guard.assert_loopback_only()


def execute(page, operation, body: str, status: int):
    """Put ``body`` in the expanded operation's request body, press Execute, wait for ``status``;
    the live response's JSON body."""
    operation.locator("textarea.body-param__text").fill(body)
    with page.expect_response(posted_to("/users")) as posted:
        operation.locator("button.execute").click()
    assert posted.value.status == status, posted.value.text()
    live = operation.locator(".live-responses-table tbody .response")
    expect(live.locator(".response-col_status")).to_have_text(str(status))
    shown = live.locator(".response-col_description pre").first
    expect(shown).not_to_be_empty()
    assert json.loads(shown.inner_text()) == posted.value.json()
    return posted.value.json()


def test_swagger_ui_creates_a_user_and_shows_a_400(guarded, user_service, tmp_path):
    page, guard = guarded

    assert page.goto(f"{user_service.url}/docs/").status == 200
    expect(page).to_have_title("User service API")
    summaries = page.locator(".opblock .opblock-summary")
    expect(summaries).to_have_count(3)  # rendered from /schema/ once the operation blocks are there
    assert [" ".join(s.split()) for s in summaries.all_inner_texts()] == [
        "GET /users",
        "POST /users",
        "GET /users/{id}",
    ]
    assets = {
        path.rsplit("/", 1)[1]: status
        for path, status in guard.responses_under("/static/drf_spectacular_sidecar/swagger-ui-dist/").items()
    }
    assert {"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"} <= assets.keys(), assets
    assert set(assets.values()) == {200}, assets  # the favicon too, if it came in already

    operation = page.locator("#operations-users-users_create")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    created = execute(page, operation, json.dumps(ADA), 201)
    assert created == {"id": 1, **ADA}
    operation.screenshot(path=tmp_path / "swagger-post-201.png")

    errors = execute(page, operation, json.dumps({"name": "Ada", "email": "not-an-email"}), 400)
    assert list(errors) == ["email"], errors
    operation.screenshot(path=tmp_path / "swagger-post-400.png")
    page.screenshot(path=tmp_path / "swagger-page.png", full_page=True)

    guard.assert_loopback_only()
