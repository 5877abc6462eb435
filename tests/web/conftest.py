"""The web app's demo pages in a real browser: the system's Chromium driven by Playwright
(one browser per test session, a fresh context per page so the phone emulation and the
service worker start clean), the pages served by the device bench's own server
(toolkit.bench.device.server.BenchServer: COOP/COEP headers, exactly the named model
files) with tiny fake bundles from tests/web_fixtures.py mapped under models/<name>/.

The browser is launched here instead of through toolkit.bench.device.browser.headless_page
(which opens one browser per page) so a module pays Chromium's start once; the
executable is the one `--device browser` uses (chromium_path)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.web_fixtures import llm_bundle, vision_bundle

DEVICES = ("iPhone 15", "Pixel 7")
PAGE_TIMEOUT_S = 60


def _skip_without_browser() -> None:
    pytest.importorskip("playwright", reason="Playwright is not installed: make install")
    from toolkit.bench.device.browser import chromium_path
    from toolkit.bench.device.run import web_app_root
    from toolkit.errors import UserError

    try:
        chromium_path()
        web_app_root()
    except UserError as exc:
        pytest.skip(str(exc))


def corrupt_copy(bundle: Path, dest: Path, name: str) -> Path:
    """A copy of `bundle` whose file `name` has one byte flipped (same size, so only the
    sha256 check can catch it)."""
    shutil.copytree(bundle, dest)
    data = bytearray((dest / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dest / name).write_bytes(bytes(data))
    return dest


@pytest.fixture(scope="session")
def web_bundles(tmp_path_factory) -> dict[str, Path]:
    """name -> bundle folder: the fake portrait and V-MoE as ONNX and .tflite, the fake
    Llama as ONNX, and a portrait bundle with a corrupt model file."""
    _skip_without_browser()
    root = tmp_path_factory.mktemp("web-demo-bundles")
    bundles = {
        "portrait-onnx": vision_bundle(root, "fake-portrait", "onnx"),
        "portrait-tflite": vision_bundle(root, "fake-portrait", "tflite"),
        "vmoe-onnx": vision_bundle(root, "fake-vmoe", "onnx"),
        "vmoe-tflite": vision_bundle(root, "fake-vmoe", "tflite"),
        "llm": llm_bundle(root),
    }
    bundles["portrait-corrupt"] = corrupt_copy(bundles["portrait-onnx"],
                                               root / "portrait-corrupt", "model.onnx")
    bundles["llm-corrupt"] = corrupt_copy(bundles["llm"], root / "llm-corrupt", "model.onnx")
    return bundles


def served_files(bundles: dict[str, Path]) -> dict[str, Path]:
    return {f"models/{name}/{path.name}": path
            for name, folder in bundles.items() for path in sorted(folder.iterdir())
            if path.is_file()}


@pytest.fixture(scope="module")
def web_server(web_bundles):
    """The app and every bundle's files on a local port (plain http: 127.0.0.1 is a
    secure context, so WebCrypto and service workers work)."""
    from toolkit.bench.device.run import web_app_root
    from toolkit.bench.device.server import BenchServer

    server = BenchServer(web_app_root(), served_files(web_bundles), {}, lambda _doc: False)
    with server:
        yield server


@pytest.fixture(scope="session")
def browser():
    _skip_without_browser()
    from playwright.sync_api import sync_playwright

    from toolkit.bench.device.browser import chromium_path

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True,
            args=["--no-sandbox", "--use-fake-ui-for-media-stream",
                  "--use-fake-device-for-media-stream"])
        try:
            yield SimpleNamespace(browser=launched, devices=playwright.devices)
        finally:
            launched.close()


class OpenedPage:
    """A page in its own context, its uncaught errors and console errors collected."""

    def __init__(self, browser, device: str | None, service_workers: bool = False):
        settings = dict(browser.devices[device]) if device else {}
        settings.pop("default_browser_type", None)
        # the service worker precaches ~45 MB of runtimes: only the offline test wants it
        self.context = browser.browser.new_context(
            service_workers="allow" if service_workers else "block", **settings)
        self.page = self.context.new_page()
        self.messages: list[str] = []
        self.page.on("pageerror", lambda e: self.messages.append(f"page error: {e}"))
        self.page.on("console", lambda m: self.messages.append(f"console: {m.text}")
                     if m.type == "error" else None)

    def goto(self, url: str) -> OpenedPage:
        self.page.goto(url)
        return self

    def settle(self, timeout_s: float = PAGE_TIMEOUT_S, states=("done", "failed")) -> str:
        """Waits for body[data-state] to reach one of `states`; the state."""
        selector = ", ".join(f"body[data-state={s}]" for s in states)
        try:
            self.page.wait_for_selector(selector, state="attached", timeout=timeout_s * 1000)
        except Exception as exc:  # Playwright's TimeoutError: say what the page showed
            raise AssertionError(f"the page did not reach {states} in {timeout_s} s: "
                                 f"status {self.text('#status')!r}, error "
                                 f"{self.text('#error')!r}, messages {self.messages}") from exc
        return self.page.evaluate("document.body.dataset.state")

    def text(self, selector: str) -> str | None:
        found = self.page.query_selector(selector)
        return found.text_content() if found else None

    def output(self) -> dict:
        return self.page.evaluate("window.__lastOutput")

    def screenshot(self, folder: Path, name: str) -> Path:
        path = folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser, web_server, tmp_path):
    """open_page(path, device) -> OpenedPage at the served app's `path`."""
    opened: list[OpenedPage] = []

    def make(path: str, device: str | None = None, service_workers: bool = False) -> OpenedPage:
        """`path` on the module's server, or a full URL (a test's own server)."""
        page = OpenedPage(browser, device, service_workers)
        opened.append(page)
        return page.goto(path if path.startswith("http") else web_server.url("127.0.0.1", path))

    yield make
    for page in opened:
        page.close()


ARTIFACTS_ENV = "EDGE_TOOLKIT_TEST_ARTIFACTS"


@pytest.fixture
def screenshots(request) -> Path:
    """Where a test's screenshots go, kept after the run as test artifacts:
    $EDGE_TOOLKIT_TEST_ARTIFACTS/web/<test>/, by default test-artifacts/ in the repository
    (gitignored), one folder per test, emptied when the test starts."""
    root = Path(os.environ.get(ARTIFACTS_ENV) or Path(__file__).resolve().parents[2]
                / "test-artifacts")
    folder = root / "web" / re.sub(r"[^A-Za-z0-9._-]+", "_", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder
