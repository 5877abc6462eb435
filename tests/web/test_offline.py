"""The app offline: after one visit online (the service worker precaches the shell and
the runtimes, and keeps each model file whose sha256 matches its bundle.json), the
demo pages load and run with the server gone; a corrupt download is not kept. And
sw.js lists every file the app is made of, each of which exists, as do the files the
pages' import maps name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.web.conftest import served_files
from tests.web.reference import manifest, relative_error

CACHED = """async (name) => {
  const cache = await caches.open("edge-toolkit-models");
  return (await cache.keys()).map((r) => r.url).filter((u) => u.includes(name));
}"""


def _listed(text: str, name: str) -> list[str]:
    block = re.search(rf"const {name} = \[(.*?)\];", text, re.S).group(1)
    return re.findall(r'"([^"]+)"', block)


def test_sw_lists_every_app_file_and_each_listed_file_exists():
    root = Path(__file__).resolve().parents[2] / "apps" / "web"
    text = (root / "sw.js").read_text(encoding="utf-8")
    shell, runtime = _listed(text, "SHELL"), _listed(text, "RUNTIME")
    app_files = {p.relative_to(root).as_posix() for pattern in ("*.html", "*.js", "*.css",
                                                                "lib/*.js")
                 for p in root.glob(pattern)} - {"sw.js"}
    app_files |= {"manifest.webmanifest", "icon.svg"}
    assert app_files <= set(shell), f"sw.js does not precache {sorted(app_files - set(shell))}"
    assert all((root / p).is_file() for p in shell if p != "./")
    if (root / "node_modules").is_dir():
        missing = [p for p in runtime if not (root / p).is_file()]
        assert not missing, f"sw.js precaches files npm did not install: {missing}"
        for page in root.glob("*.html"):
            for target in re.findall(r'"@[^"]+": "\./([^"]+)"', page.read_text(encoding="utf-8")):
                assert (root / target).is_file(), f"{page.name} maps a module to {target}"


def test_pages_work_offline_after_one_visit(open_page, web_bundles, screenshots):
    from toolkit.bench.device.run import web_app_root
    from toolkit.bench.device.server import BenchServer

    bundles = {"portrait": web_bundles["portrait-onnx"], "llm": web_bundles["llm"],
               "bad": web_bundles["portrait-corrupt"]}
    server = BenchServer(web_app_root(), served_files(bundles), {}, lambda _d: False)
    # one request per connection: once stopped, nothing answers (a kept-alive connection
    # would go on serving after the listening socket closed)
    server.httpd.RequestHandlerClass.protocol_version = "HTTP/1.0"
    server.start()
    portrait = server.url("127.0.0.1", "portrait.html?bundle=models/portrait/&sample=1")
    chat = server.url("127.0.0.1", "chat.html?bundle=models/llm/&verify=1")
    try:
        page = open_page(server.url("127.0.0.1", ""), "Pixel 7", service_workers=True)
        assert page.settle(states=("offline-ready",)) == "offline-ready"
        page.page.goto(server.url("127.0.0.1", "portrait.html?bundle=models/bad/"))
        assert page.settle() == "failed" and "sha256" in page.text("#error")
        online = {}
        for url in (portrait, chat):
            page.page.goto(url)
            assert page.settle() == "done", page.text("#error")
            online[url] = page.output()
        for folder in ("portrait", "llm"):  # stored once its hash was checked (async)
            page.page.wait_for_function(
                f"({CACHED})('models/{folder}/model.onnx').then((keys) => keys.length > 0)")
    finally:
        server.stop()
    # its hash differs from bundle.json: not kept
    assert page.page.evaluate(f"({CACHED})('models/bad/model.onnx')") == []
    for folder in ("portrait", "llm"):
        bundle = bundles[folder]
        [key] = page.page.evaluate(f"({CACHED})('models/{folder}/model.onnx')")
        assert key.endswith("sha256=" + manifest(bundle)["files"]["model.onnx"]["sha256"])

    page.page.goto(portrait)  # the server is gone: everything comes from the cache
    assert page.settle() == "done", page.text("#error")
    offline = page.output()
    assert offline["sample"]["matches"] is True
    assert relative_error(offline["values"], online[portrait]["values"]) == 0
    page.screenshot(screenshots, "portrait-offline")
    page.page.goto(chat)
    assert page.settle() == "done", page.text("#error")
    assert page.output()["matches"] is True
    assert page.output()["tokens"] == online[chat]["tokens"]
    with pytest.raises(Exception, match="ERR_CONNECTION_REFUSED"):
        page.page.goto(server.url("127.0.0.1", "bench/job.json"))  # never cached
