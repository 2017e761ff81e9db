"""Headless Chromium for tests: render a local HTML file offline and collect everything that went wrong.

The browser is Debian's /usr/bin/chromium, which `make test` installs; playwright only drives it (never run
`playwright install`: it downloads browsers from a CDN). A page may load only file:, data: and blob: URLs.
Any other request is aborted and recorded, so a report that needs a CDN fails its test instead of passing
with half a page.

    with browser.launch() as chromium:                      # one per test module is enough
        with browser.render(chromium, html, browser.artifact_path("report.png")) as shown:
            assert shown.page.locator("svg.chart").count() > 0
            assert not shown.errors, shown.errors
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]

# Chromium runs as root in CI, without a GPU, and must not phone home (without the networking flags
# it floods the log with refused connections).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


class Viewport(NamedTuple):
    width: int
    height: int
    mobile: bool = False  # honour <meta name="viewport">, touch events


LAPTOP = Viewport(1280, 900)
PHONE = Viewport(390, 844, mobile=True)


@dataclass
class Rendered:
    """A loaded page (still open inside `render`'s with-block) and what went wrong while loading it."""

    page: Page
    screenshot: Path | None
    console_errors: list[str] = field(default_factory=list)   # console messages of type "error"
    page_errors: list[str] = field(default_factory=list)      # uncaught exceptions
    failed_loads: list[str] = field(default_factory=list)     # local files that failed, images that did not decode
    requests_blocked: list[str] = field(default_factory=list)  # non-local URLs the page asked for (aborted)

    @property
    def errors(self) -> list[str]:
        """All of the above in one list: a clean page has none. Chromium's console line "Failed to load
        resource" for a URL already listed as a failed load or a blocked request is left out."""
        known = [url for url, _ in (e.split(": ", 1) for e in self.failed_loads)] + self.requests_blocked
        console = [e for e in self.console_errors
                   if not (e.startswith("Failed to load resource") and any(f"({url}:" in e for url in known))]
        return ([f"console: {e}" for e in console] + [f"page error: {e}" for e in self.page_errors]
                + [f"failed load: {e}" for e in self.failed_loads]
                + [f"blocked request: {e}" for e in self.requests_blocked])


def artifact_path(name: str) -> Path:
    """Where a test keeps a file worth looking at afterwards: build/test-artifacts/<name>, or under
    $EDGEPIPE_TEST_ARTIFACTS. The folder is created; an existing file of that name is overwritten."""
    path = Path(os.environ.get("EDGEPIPE_TEST_ARTIFACTS") or REPO / "build" / "test-artifacts") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def launch() -> Iterator[Browser]:
    """Start Debian's headless Chromium; fails (never skips) the test when it is not installed."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make test`, which installs Debian's chromium", pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@contextmanager
def render(chromium: Browser, html: Path, screenshot: Path | None = None,
           viewport: Viewport = LAPTOP) -> Iterator[Rendered]:
    """Open `html` in a fresh browser context, wait for it to load, take a full-page screenshot (when
    `screenshot` is given) and yield what happened. The page closes when the with-block ends."""
    context = chromium.new_context(
        viewport={"width": viewport.width, "height": viewport.height},
        is_mobile=viewport.mobile, has_touch=viewport.mobile, device_scale_factor=1,
        service_workers="block")
    page = context.new_page()
    page.set_default_timeout(15_000)
    shown = Rendered(page=page, screenshot=screenshot)

    def route(route: Route) -> None:
        if route.request.url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            shown.requests_blocked.append(route.request.url)
            route.abort("blockedbyclient")

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location
            shown.console_errors.append(f"{message.text} ({where['url']}:{where['lineNumber']})"
                                        if where.get("url") else message.text)

    def request_failed(request: Request) -> None:
        if request.url not in shown.requests_blocked:
            shown.failed_loads.append(f"{request.url}: {request.failure}")

    context.route("**/*", route)
    page.on("console", console)
    page.on("pageerror", lambda error: shown.page_errors.append(f"{error.name}: {error.message}"))
    page.on("requestfailed", request_failed)
    try:
        page.goto(Path(html).resolve().as_uri(), wait_until="load")
        page.evaluate("document.fonts.ready.then(() => undefined)")
        # An <img> can load and still not decode (corrupt data: URL, wrong type): the request did not fail.
        for src in page.evaluate("[...document.images].filter(i => i.getAttribute('src') && i.complete"
                                 " && i.naturalWidth === 0).map(i => i.currentSrc || i.src)"):
            if src not in shown.requests_blocked and not any(src in failed for failed in shown.failed_loads):
                shown.failed_loads.append(f"{src[:100]}: image did not decode")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=screenshot, full_page=True)
        yield shown
    finally:
        context.close()
