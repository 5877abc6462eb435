"""Headless Chromium for `--device browser` and the web app's tests: the system's own
browser (Debian's `chromium` package, or EDGE_TOOLKIT_CHROMIUM) driven by Playwright,
which downloads no browser of its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator

from toolkit.errors import UserError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ENV = "EDGE_TOOLKIT_CHROMIUM"


def chromium_path() -> str:
    """The Chromium executable, or a one-line refusal naming how to install one."""
    given = os.environ.get(ENV)
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            raise UserError(f"{ENV}={given} is not an executable file: point it at a Chromium "
                            "or Chrome binary")
        return given
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise UserError("no Chromium found for --device browser: install it (`apt-get install "
                    f"chromium`) or set {ENV} to a Chromium or Chrome binary")


@contextlib.contextmanager
def headless_page(url: str, *, device: str | None = None, ignore_https_errors: bool = False
                  ) -> Iterator[tuple[object, list[str]]]:
    """(page, messages) with `url` loaded in headless Chromium, under Playwright's
    emulation of `device` ("iPhone 15", "Pixel 7", ...) when given; `messages` collects
    the page's uncaught errors and console errors as they come."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise UserError("--device browser needs Playwright: pip install -e '.[web]' "
                        "(or `make install`)") from None
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True,
            args=["--no-sandbox", "--enable-unsafe-webgpu"])
        try:
            settings = dict(playwright.devices[device]) if device else {}
            settings.pop("default_browser_type", None)
            context = browser.new_context(ignore_https_errors=ignore_https_errors, **settings)
            page = context.new_page()
            messages: list[str] = []
            page.on("pageerror", lambda error: messages.append(f"page error: {error}"))
            page.on("console", lambda m: messages.append(f"console: {m.text}")
                    if m.type == "error" else None)
            page.goto(url)
            yield page, messages
        finally:
            browser.close()


def wait_until(page, done: Callable[[], bool], timeout: float, poll_ms: int = 250) -> bool:
    """Lets the page run (Playwright's event loop turns while waiting) until `done()` or
    `timeout` seconds; whether it finished."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        page.wait_for_timeout(poll_ms)
    return True
