"""One-line skips for tests that need a real browser: the system's Chromium, Playwright
and the web app's npm packages (`make web`)."""

from __future__ import annotations

import pytest


def skip_without_browser() -> None:
    pytest.importorskip("playwright", reason="Playwright is not installed: make install")
    from toolkit.bench.device.browser import chromium_path
    from toolkit.bench.device.run import web_app_root
    from toolkit.errors import UserError

    try:
        chromium_path()
        web_app_root()
    except UserError as exc:
        pytest.skip(str(exc))
