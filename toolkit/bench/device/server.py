"""The bench server: a small threaded HTTP(S) server that serves

    /                       the web app (apps/web and its npm packages), read-only
    /models/<i>/<name>      exactly the files of the models named on the command line
    /bench/job.json         the job (toolkit.bench.device.job)
    /bench/inputs/<i>/<k>.bin   the fixed inputs of model i
    /bench/certificate.pem  the self-signed certificate, for a phone to trust (https only)
    POST /bench/results     the page's results: size-capped, JSON, checked by `accept`

and nothing else: a model path is a dictionary lookup, never a path joined from the
request, and an app path that resolves outside apps/web (`..`, a symlink) is refused.
Every response carries the cross-origin isolation headers (COOP same-origin, COEP
require-corp) that give the page SharedArrayBuffer, hence onnxruntime-web's threads.
"""

from __future__ import annotations

import http.server
import json
import mimetypes
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path

MAX_RESULTS_BYTES = 32 << 20  # LLM logits for a few models fit; a runaway post does not
CHUNK = 1 << 20
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
         ".json": "application/json", ".webmanifest": "application/manifest+json",
         ".onnx": "application/octet-stream", ".tflite": "application/octet-stream",
         ".data": "application/octet-stream", ".bin": "application/octet-stream",
         ".html": "text/html; charset=utf-8", ".css": "text/css", ".svg": "image/svg+xml",
         ".png": "image/png", ".pem": "application/x-pem-file"}


class ResultsRejected(ValueError):
    """A results post the server refuses (HTTP 400 with this message)."""


class BenchServer:
    """`files`: URL path (no leading slash) -> file on disk; `blobs`: URL path -> bytes;
    `accept(document)` checks a results post (raising ResultsRejected) and returns True
    once the bench is complete."""

    def __init__(self, app_root: Path, files: dict[str, Path], blobs: dict[str, bytes],
                 accept: Callable[[dict], bool], host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None):
        self.app_root = app_root.resolve()
        self.files, self.blobs, self.accept = files, blobs, accept
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.requests: list[str] = []  # "METHOD path status", for diagnostics and tests
        self.sent: dict[str, int] = {}  # URL path -> body bytes sent (page weight)
        handler = _handler_class(self)
        self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def sent_by_kind(self) -> dict[str, int]:
        """Body bytes sent so far by what they were: the app's own files, the npm
        runtimes (node_modules), the models, and the bench's job and inputs."""
        kinds = dict.fromkeys(("app", "runtime", "models", "bench"), 0)
        with self.lock:
            for path, size in self.sent.items():
                key = path.lstrip("/")
                kind = ("models" if key.startswith("models/") else "bench"
                        if key.startswith("bench/") else "runtime"
                        if key.startswith("node_modules/") else "app")
                kinds[kind] += size
        return kinds

    def url(self, host: str, path: str = "") -> str:
        shown = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{shown}:{self.port}/{path}"

    def start(self) -> BenchServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="bench-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> BenchServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def resolve_app_path(self, path: str) -> Path | None:
        """The app file for a URL path, or None when it is not one (outside the app
        folder once resolved, hidden, or missing)."""
        relative = path.lstrip("/") or "index.html"
        if relative.endswith("/"):
            relative += "index.html"
        parts = Path(relative).parts
        if any(part in ("..", "") or part.startswith(".") for part in parts):
            return None
        target = (self.app_root / relative).resolve()
        if not target.is_relative_to(self.app_root) or not target.is_file():
            return None
        return target


class _BenchHandler(http.server.BaseHTTPRequestHandler):
    """One request to the bench server; `bench` is the BenchServer it serves for (set on a
    subclass per server by `_handler_class`, since the http.server base class builds a
    handler per request from a class)."""

    bench: BenchServer
    protocol_version = "HTTP/1.1"
    server_version = "EdgeToolkitBench"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # the CLI prints progress; request logs would bury it

    def _count(self, size: int) -> None:
        with self.bench.lock:
            key = urllib.parse.urlsplit(self.path).path
            self.bench.sent[key] = self.bench.sent.get(key, 0) + size

    def _headers(self, status: int, content_type: str, length: int,
                 no_store: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("X-Content-Type-Options", "nosniff")
        if no_store:
            self.send_header("Cache-Control", "no-store")
        self.end_headers()
        with self.bench.lock:
            self.bench.requests.append(f"{self.command} {self.path} {status}")

    def _text(self, status: int, text: str) -> None:
        body = text.encode("utf-8")
        self._headers(status, "text/plain; charset=utf-8", len(body), no_store=True)
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        self.do_GET()

    def do_GET(self):  # noqa: N802
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        key = path.lstrip("/")
        if key in self.bench.blobs:
            body = self.bench.blobs[key]
            self._headers(200, _type(key), len(body), no_store=True)
            if self.command != "HEAD":
                self.wfile.write(body)
                self._count(len(body))
            return
        target = self.bench.files.get(key)
        if target is None and not key.startswith(("models/", "bench/")):
            target = self.bench.resolve_app_path(path)
        if target is None:
            self._text(404, f"not served: {path}")
            return
        self._send_file(target, no_store=key.startswith("models/"))

    def _send_file(self, target: Path, no_store: bool) -> None:
        try:
            handle = target.open("rb")
        except OSError:
            self._text(404, "not readable")
            return
        with handle:
            size = target.stat().st_size
            self._headers(200, _type(target.name), size, no_store=no_store)
            if self.command == "HEAD":
                return
            while chunk := handle.read(CHUNK):
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                self._count(len(chunk))

    def do_POST(self):  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path
        if path != "/bench/results":
            self._text(404, f"nothing accepts a POST at {path}")
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._text(411, "a results post needs a Content-Length")
            return
        if int(length) > MAX_RESULTS_BYTES:
            self.close_connection = True
            self._text(413, f"results over {MAX_RESULTS_BYTES} bytes are refused")
            return
        raw = self.rfile.read(int(length))
        try:
            document = json.loads(raw)
            if not isinstance(document, dict):
                raise ResultsRejected("the results are not a JSON object")
            complete = self.bench.accept(document)
        except ValueError as exc:  # JSONDecodeError and ResultsRejected
            self._text(400, f"results refused: {exc}")
            return
        self._text(200, "ok")
        if complete:
            self.bench.done.set()



def _handler_class(server: BenchServer) -> type[_BenchHandler]:
    return type("Handler", (_BenchHandler,), {"bench": server})


def _type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
