"""A real browser for the tests: Debian's Chromium driven by Playwright, kept on loopback.

Playwright's own browser downloads are never used (``playwright install`` cannot fetch anything
here): the browser is the ``chromium`` Debian package (tools/apt-packages.txt), and a missing one
fails the caller's test. Every request a page makes goes through :class:`LoopbackGuard`, which lets
through only requests to 127.0.0.1 and records (and aborts) any other, so a test can prove a page is
fully self-hosted.
"""

import os
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Schemes that never leave the page, so Playwright does not route them.
LOCAL_SCHEMES = {"data", "blob", "about"}


def launch_chromium(playwright, executable: str = CHROMIUM):
    """Headless Debian Chromium with a fresh temporary profile (Playwright's default for ``launch``)."""
    if not os.access(executable, os.X_OK):
        raise AssertionError(
            f"{executable} is missing: install the Debian package 'chromium' "
            "(tools/apt-packages.txt, tools/setup-test-deps.sh); never 'playwright install'"
        )
    return playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)


class LoopbackGuard:
    """Routes every request of ``context``: 127.0.0.1 goes through, anything else is aborted and
    kept in ``blocked``. Also keeps every request and response seen, and the pages' uncaught
    JavaScript errors."""

    def __init__(self, context):
        self.blocked: list[str] = []
        self.requests: list[str] = []
        self.responses = []
        self.page_errors: list[str] = []
        context.route("**/*", self._route)
        context.on("request", lambda request: self.requests.append(request.url))
        context.on("response", lambda response: self.responses.append(response))
        context.on("page", self.watch)
        for page in context.pages:
            self.watch(page)

    def watch(self, page) -> None:
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    @staticmethod
    def is_loopback(url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme in LOCAL_SCHEMES or (
            parts.scheme in {"http", "https", "ws", "wss"} and parts.hostname == "127.0.0.1"
        )

    def _route(self, route) -> None:
        url = route.request.url
        if self.is_loopback(url):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("blockedbyclient")

    def assert_loopback_only(self) -> None:
        """No request left loopback (nor was attempted), and no page threw an uncaught error."""
        assert self.blocked == [], f"the page tried to reach other hosts: {self.blocked}"
        off_loopback = [url for url in self.requests if not self.is_loopback(url)]
        assert off_loopback == [], f"requests to other hosts: {off_loopback}"
        assert self.page_errors == [], f"uncaught JavaScript errors: {self.page_errors}"

    def responses_under(self, path_prefix: str, resource_type: str | None = None) -> dict[str, int]:
        """{path: status} of the responses whose path starts with ``path_prefix``."""
        return {
            urlsplit(r.url).path: r.status
            for r in self.responses
            if urlsplit(r.url).path.startswith(path_prefix)
            and (resource_type is None or r.request.resource_type == resource_type)
        }
