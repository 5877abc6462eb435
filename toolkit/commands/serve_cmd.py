"""`toolkit serve BUNDLE...`: the web app's demo pages (apps/web) with these bundles, on
this machine or the local network (a phone opens the printed URL or scans the QR code),
from the same server as `toolkit bench --device` (cross-origin isolation headers, only
the named files, optional https with the self-signed certificate)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from toolkit.errors import UserError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve the web app's demo pages with your bundles (for a browser or "
                      "a phone)",
        description="Serve apps/web (`make web` installs its npm packages) with each BUNDLE "
                    "folder under models/<folder name>/ and print the demo pages to open: "
                    "chat for an LLM bundle, portrait for a segmenter, vmoe for classifiers "
                    "side by side. Only the app and the bundles' listed files are served, "
                    "with the cross-origin isolation headers WASM threads need.")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE",
                   help="a folder written by `toolkit export ... --bundle DIR`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; 0.0.0.0 for a phone on the same network "
                        "(default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    p.add_argument("--tls", action=argparse.BooleanOptionalAction, default=False,
                   help="https with a self-signed certificate (WebGPU, service workers and "
                        "the pages' sha256 checks need a secure context off localhost; see "
                        "`toolkit bench --help` for trusting it on a phone)")
    p.add_argument("--cert", type=Path, help="PEM certificate for --tls (with --key)")
    p.add_argument("--key", type=Path, help="PEM private key of --cert")
    p.add_argument("--duration", type=float, metavar="S",
                   help="stop after S seconds (default: until Ctrl-C)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from toolkit.bench.device.demo_site import demo_links, served_bundles
    from toolkit.bench.device.qr import terminal_qr
    from toolkit.bench.device.run import lan_address, web_app_root
    from toolkit.bench.device.server import BenchServer

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} must be 0..65535")
    if args.duration is not None and not args.duration > 0:
        raise UserError(f"--duration {args.duration} must be > 0 seconds")
    if (args.cert or args.key) and not args.tls:
        raise UserError("--cert/--key are for https: add --tls")
    bundles = served_bundles(args.bundles)
    root = web_app_root()
    files = {url: path for bundle in bundles for url, path in bundle.files.items()}
    tls, blobs = None, {}
    if args.tls:
        from toolkit.bench.device.certificate import tls_context

        tls, certificate = tls_context(args.host, args.cert, args.key)
        blobs["bench/certificate.pem"] = certificate.read_bytes()
    try:
        server = BenchServer(root, files, blobs, lambda document: False, args.host,
                             args.port, tls)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({exc.strerror}): choose "
                        "another --host or --port") from None
    shown_host = lan_address() if args.host in ("0.0.0.0", "::") else args.host
    with server:
        for what, link in demo_links(bundles):
            print(f"{what}: {server.url(shown_host, link)}", flush=True)
        print(terminal_qr(server.url(shown_host, "")), flush=True)
        print("serving; Ctrl-C stops", flush=True)
        try:
            if args.duration is not None:
                time.sleep(args.duration)
            else:
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0
