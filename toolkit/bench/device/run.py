"""`run_device_bench`: the bench protocol in a browser. Serve the web app and the named
files (server.py), let a headless Chromium (`browser`) or the user's phone (`phone`)
open the bench page, wait for its results, check them (results.py), and compare each
model's outputs with the same file in the host runtime (a bench worker, as `toolkit
bench` runs it)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path

from toolkit.bench.device.job import BenchJob, prepare_job
from toolkit.bench.device.results import check_results, report_models
from toolkit.bench.device.server import BenchServer, ResultsRejected
from toolkit.bench.session import BenchOptions
from toolkit.errors import UserError

APP_ENV = "EDGE_TOOLKIT_WEB_APP"
PAGE = "bench.html"


@dataclasses.dataclass
class DeviceOptions:
    device: str = "browser"  # browser | phone
    backend: str = "auto"  # auto | wasm | webgpu
    host: str = "127.0.0.1"
    port: int = 0
    tls: bool = False
    cert: Path | None = None
    key: Path | None = None
    timeout: float = 600.0  # seconds to wait for the page's results
    emulate: str | None = None  # Playwright device name for --device browser


def web_app_root() -> Path:
    """apps/web with its npm packages installed; a one-line refusal naming `make web`."""
    root = Path(os.environ.get(APP_ENV) or Path(__file__).resolve().parents[3] / "apps" / "web")
    if not (root / PAGE).is_file():
        raise UserError(f"the web app is not at {root} ({PAGE} missing): run from a clone of "
                        f"Edge Toolkit, or set {APP_ENV} to its apps/web folder")
    if not (root / "node_modules" / "onnxruntime-web").is_dir():
        raise UserError(f"the web app's npm packages are missing in {root}: run `make web` "
                        "(npm ci in apps/web)")
    return root


def run_device_bench(paths: list[str], options: BenchOptions, device: DeviceOptions,
                     say=print) -> dict:
    job = prepare_job(paths, options, device.backend)
    root = web_app_root()
    received: dict = {}

    def accept(document: dict) -> bool:
        received["results"] = check_results(document, job)
        return True

    files = {f"models/{i}/{name}": path for i, model in enumerate(job.models)
             for name, path in model.files.items()}
    blobs = {"bench/job.json": json.dumps(job.document()).encode("utf-8")}
    for i, model in enumerate(job.models):
        for k, array in enumerate(model.inputs):
            blobs[f"bench/inputs/{i}/{k}.bin"] = array["bytes"]
    tls, certificate = None, None
    if device.tls:
        from toolkit.bench.device.certificate import tls_context

        tls, certificate = tls_context(device.host, device.cert, device.key)
        blobs["bench/certificate.pem"] = certificate.read_bytes()
    try:
        server = BenchServer(root, files, blobs, accept, device.host, device.port, tls)
    except OSError as exc:
        raise UserError(f"cannot listen on {device.host}:{device.port} ({exc.strerror}): "
                        "choose another --host or --port") from None
    started = time.monotonic()
    with server:
        if device.device == "browser":
            _run_headless(server, device, job)
        else:
            _wait_for_phone(server, device, say)
        served = server.sent_by_kind()
    results = received["results"]
    if results.get("error"):
        raise UserError(f"the browser could not run the bench: {results['error']}")
    host_outputs = _host_outputs(job)
    return {"title": f"toolkit bench --device {device.device}",
            "environment": _environment(results, device, job),
            "options": {**dataclasses.asdict(options), "device": device.device,
                        "backend": device.backend},
            "wall_seconds": time.monotonic() - started,
            # what the page downloaded before it posted its results (page weight)
            "served_bytes": served,
            "models": report_models(results, job, host_outputs)}


def _run_headless(server: BenchServer, device: DeviceOptions, job: BenchJob) -> None:
    from toolkit.bench.device.browser import headless_page, wait_until

    url = server.url("localhost" if device.host in ("0.0.0.0", "::") else device.host, PAGE)
    with headless_page(url, device=device.emulate, ignore_https_errors=device.tls) as (page,
                                                                                    messages):
        if not wait_until(page, server.done.is_set, device.timeout):
            detail = "; ".join(messages[-3:]) or page.inner_text("#status")
            raise UserError(f"headless Chromium gave no results in {device.timeout:.0f} s "
                            f"({detail[:300]}): raise --timeout, or run fewer --runs")


def _wait_for_phone(server: BenchServer, device: DeviceOptions, say) -> None:
    from toolkit.bench.device.qr import terminal_qr

    host = device.host
    if host in ("0.0.0.0", "::"):
        host = lan_address()
    elif host in ("127.0.0.1", "localhost", "::1"):
        say("note: the server listens on loopback only, which a phone cannot reach: pass "
            "--host 0.0.0.0 (or this machine's LAN address) to open it from the phone")
    url = server.url(host, PAGE)
    say(f"open {url} on the phone (same network), or scan:")
    say(terminal_qr(url))
    if device.tls and device.cert is None:
        pem = server.url(host, "bench/certificate.pem")
        say(f"self-signed certificate: trust it once from {pem} (see `toolkit bench "
            "--help`), or accept the browser's warning")
    say(f"waiting up to {device.timeout:.0f} s for the results (Ctrl-C stops)")
    try:
        if not server.done.wait(device.timeout):
            raise UserError(f"no results from a phone in {device.timeout:.0f} s: open the URL "
                            "on the phone, or raise --timeout")
    except KeyboardInterrupt:
        raise UserError("stopped before a phone sent results") from None


def lan_address() -> str:
    """This machine's address on its default route (a UDP socket's chosen source address:
    connecting a UDP socket sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed beyond the choice
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _host_outputs(job: BenchJob) -> dict:
    """Each model's outputs in its host runtime (a bench worker on the same file)."""
    from toolkit.bench.session import bench_prompt
    from toolkit.bench.worker import Worker

    outputs = {}
    for model in job.models:
        spec = {"name": model.name, "path": os.fspath(model.model_path),
                "runtime": model.runtime, "threads": 1,
                "prompt": bench_prompt(job.options.prompt_tokens),
                "max_context": job.options.max_context}
        try:
            worker = Worker(spec)
        except RuntimeError:
            outputs[model.name] = None  # the host runtime cannot load it: no reference
            continue
        try:
            outputs[model.name] = worker.call("outputs")
        except RuntimeError:
            outputs[model.name] = None
        finally:
            worker.stop()
    return outputs


def _environment(results: dict, device: DeviceOptions, job: BenchJob) -> dict[str, str]:
    facts = results.get("device", {})
    env = {"device": device.device, "user agent": str(facts.get("user_agent")),
           "platform": str(facts.get("platform")),
           "logical cpus": str(facts.get("hardware_concurrency")),
           "memory GB (navigator.deviceMemory)": str(facts.get("device_memory_gb")),
           "cross-origin isolated": str(facts.get("cross_origin_isolated")),
           "WebGPU": str(facts.get("webgpu")), "GPU adapter": str(facts.get("gpu_adapter")),
           "threads per model": str(job.options.threads),
           "backend asked": device.backend, "python host": sys.platform}
    if device.emulate:
        env["emulated device"] = device.emulate
    return env


__all__ = ["DeviceOptions", "ResultsRejected", "run_device_bench", "web_app_root"]
