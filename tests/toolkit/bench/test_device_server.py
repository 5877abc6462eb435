"""The bench server serves the app, exactly the named model files and the job, refuses
path traversal (`..`, encoded `..`, a symlink out of the app), caps and checks results
posts, sends the cross-origin isolation headers, and speaks https with the self-signed
certificate it makes."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import ssl
import stat

import pytest

from toolkit.bench.device import server as server_module
from toolkit.bench.device.server import BenchServer, ResultsRejected


@pytest.fixture()
def app(tmp_path):
    root = tmp_path / "app dir é"
    (root / "lib").mkdir(parents=True)
    (root / "index.html").write_text("<p>home</p>", encoding="utf-8")
    (root / "lib" / "x.mjs").write_text("export const x = 1;", encoding="utf-8")
    (root / ".secret").write_text("hidden", encoding="utf-8")
    outside = tmp_path / "outside.txt"
    outside.write_text("private", encoding="utf-8")
    (root / "link.txt").symlink_to(outside)
    model = tmp_path / "bundle" / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(b"\x08\x01model-bytes")
    (tmp_path / "bundle" / "notes.txt").write_text("not listed", encoding="utf-8")
    return root, model


def _serve(app, accept=lambda doc: True, tls=None):
    root, model = app
    return BenchServer(root, {"models/0/model.onnx": model}, {"bench/job.json": b"{}"},
                       accept, tls=tls)


def _get(server, path, method="GET", body=None, headers=None, context=None):
    if context is None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    else:
        connection = http.client.HTTPSConnection("localhost", server.port, timeout=10,
                                                 context=context)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response, data


def test_serves_the_app_the_named_files_and_the_job_with_isolation_headers(app):
    with _serve(app) as server:
        response, body = _get(server, "/")
        assert response.status == 200 and body == b"<p>home</p>"
        response, body = _get(server, "/lib/x.mjs")
        assert response.getheader("Content-Type") == "text/javascript"
        assert response.getheader("Cross-Origin-Opener-Policy") == "same-origin"
        assert response.getheader("Cross-Origin-Embedder-Policy") == "require-corp"
        response, body = _get(server, "/models/0/model.onnx")
        assert response.status == 200 and body == b"\x08\x01model-bytes"
        assert response.getheader("Cache-Control") == "no-store"
        response, body = _get(server, "/bench/job.json")
        assert response.status == 200 and body == b"{}"


@pytest.mark.parametrize("path", [
    "/../outside.txt", "/%2e%2e/outside.txt", "/lib/../../outside.txt", "/link.txt",
    "/.secret", "/models/0/notes.txt", "/models/0/../bundle/notes.txt", "/models/1/model.onnx",
    "/bench/other.json", "/models/0/%2e%2e%2fnotes.txt", "//etc/passwd"])
def test_refuses_what_was_not_named(app, path):
    with _serve(app) as server:
        response, body = _get(server, path)
    assert response.status == 404, (path, body)
    assert b"private" not in body and b"not listed" not in body


def test_results_posts_are_capped_parsed_and_checked(app, monkeypatch):
    monkeypatch.setattr(server_module, "MAX_RESULTS_BYTES", 64)
    seen = []

    def accept(document):
        if document.get("job") != "abc":
            raise ResultsRejected("the results answer another job")
        seen.append(document)
        return True

    with _serve(app, accept) as server:
        response, body = _get(server, "/bench/results", "POST", b"x" * 65)
        assert response.status == 413
        response, body = _get(server, "/bench/results", "POST", b"{not json")
        assert response.status == 400 and body.startswith(b"results refused")
        response, body = _get(server, "/bench/results", "POST", b"[1, 2]")
        assert response.status == 400
        response, body = _get(server, "/bench/results", "POST", json.dumps({"job": "x"}))
        assert response.status == 400 and b"another job" in body
        assert not server.done.is_set()
        response, body = _get(server, "/bench/results", "POST", json.dumps({"job": "abc"}))
        # the server answers "ok" before it flags completion, so the page hears the
        # answer before the run shuts the server down: wait for the flag, briefly
        assert response.status == 200 and server.done.wait(timeout=10)
        response, _ = _get(server, "/index.html", "POST", b"{}")
        assert response.status == 404
    assert seen == [{"job": "abc"}]


def test_https_with_the_self_signed_certificate(app, tmp_path):
    from cryptography import x509

    from toolkit.bench.device.certificate import self_signed, tls_context

    folder = tmp_path / "tls"
    cert, key = self_signed("192.168.7.9", folder)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    names = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1",
                                                                           "192.168.7.9"}
    assert loaded.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    left = loaded.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=29) < left <= datetime.timedelta(days=30)
    assert self_signed("192.168.7.9", folder) == (cert, key)  # reused, not remade
    context, _ = tls_context("127.0.0.1", cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    with _serve(app, tls=context) as server:
        assert server.url("localhost", "bench.html").startswith("https://localhost:")
        response, body = _get(server, "/", context=client)
    assert response.status == 200 and body == b"<p>home</p>"


def test_a_certificate_without_its_key_is_refused(tmp_path):
    from toolkit.bench.device.certificate import tls_context
    from toolkit.errors import UserError

    with pytest.raises(UserError, match="--cert and --key go together"):
        tls_context("127.0.0.1", tmp_path / "c.pem", None)
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    with pytest.raises(UserError, match="cannot be loaded"):
        tls_context("127.0.0.1", tmp_path / "c.pem", tmp_path / "k.pem")
