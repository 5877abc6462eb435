"""`toolkit serve BUNDLE...` serves the demo pages with the named bundles: each bundle's
bundle.json and listed files under models/<folder>/ and nothing else, a link per demo
page, and the chat page verifies a real (fake-llama) bundle through it in Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.toolkit.bench.browser_skip import skip_without_browser


@pytest.fixture(scope="module")
def bundles(toolkit_cli, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "bündles here"
    folder.mkdir()
    for model, target, name in (("fake-llama", "onnx", "chat bot"),
                                ("fake-vmoe", "onnx", "vmoe"), ("fake-cnn", "tflite", "cnn")):
        result = toolkit_cli("export", target, "--model", model, "--bundle", folder / name,
                             "--max-context", "48", "--quiet")
        assert result.code == 0, result.err
    (folder / "chat bot" / "secret.txt").write_text("not listed", encoding="utf-8")
    return folder


@pytest.fixture()
def served(bundles):
    """A `toolkit serve` process (port picked by the system); its printed links."""
    skip_without_browser()  # the app's npm packages are needed to serve it
    child = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "serve", bundles / "chat bot", bundles / "vmoe",
         bundles / "cnn", "--port", "0", "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    links = {}
    for line in child.stdout:
        if line.startswith("serving"):
            break
        match = re.match(r"(.+?): (http://\S+)$", line.strip())
        if match:
            links[match.group(1)] = match.group(2)
    try:
        yield links
    finally:
        child.kill()
        child.wait()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_links_and_files(served, bundles):
    home = served["home"]
    assert set(served) == {"home", "chat-bot (llm)", "vmoe, cnn (image-classification)"}
    assert served["chat-bot (llm)"] == home + "chat.html?bundle=models/chat-bot/"
    assert served["vmoe, cnn (image-classification)"] == (
        home + "vmoe.html?bundles=models/vmoe/,models/cnn/")
    status, body = _get(home + "models/chat-bot/bundle.json")
    assert status == 200 and json.loads(body)["kind"] == "llm"
    status, body = _get(home + "models/cnn/model.tflite")
    assert status == 200 and body == (bundles / "cnn" / "model.tflite").read_bytes()
    for path in ("models/chat-bot/secret.txt", "models/chat-bot/../vmoe/bundle.json",
                 "models/other/bundle.json", "../pyproject.toml"):
        assert _get(home + path)[0] == 404, path


def test_the_chat_page_verifies_the_served_bundle(served):
    from toolkit.bench.device.browser import headless_page, wait_until

    with headless_page(served["chat-bot (llm)"] + "&verify=1") as (page, messages):
        assert wait_until(page, lambda: page.evaluate("document.body.dataset.state")
                          in ("done", "failed"), 60), messages
        result = page.evaluate("window.__lastOutput")
    assert result["mode"] == "verify" and result["matches"] is True, result


def test_a_folder_that_is_not_a_bundle_is_refused(toolkit_cli, tmp_path):
    skip_without_browser()
    result = toolkit_cli("serve", tmp_path, "--duration", "1")
    assert result.code == 2 and len(result.err_lines) == 1
    assert "is not a bundle folder" in result.err
