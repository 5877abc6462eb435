"""A self-signed certificate for the bench server's https: WebGPU and service workers run
only in a secure context, and a phone reaches this machine by its LAN address, not
localhost.

The certificate is its own CA (basicConstraints CA:true) and names every address the
server is reached by (subjectAltName: localhost, 127.0.0.1, ::1 and the --host
address), so a phone can trust it once:

- iOS: open https://HOST:PORT/bench/certificate.pem in Safari, install the profile
  (Settings > General > VPN & Device Management), then enable full trust in Settings >
  General > About > Certificate Trust Settings.
- Android: download the same file, then Settings > Security > Encryption & credentials >
  Install a certificate > CA certificate.

Without that the browser shows a warning that can be passed, but then service workers
do not register. Kept in the user's cache folder and reused while it covers the
address and has more than a day left; the key file is readable by the owner only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from toolkit.errors import UserError

VALID_DAYS = 30


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edge-toolkit" / "bench-tls"


def tls_context(host: str, cert: Path | None = None, key: Path | None = None
                ) -> tuple[ssl.SSLContext, Path]:
    """A server context with the given certificate, or the cached self-signed one for
    `host` (made when missing, expiring or not covering `host`); and the certificate."""
    if (cert is None) != (key is None):
        raise UserError("--cert and --key go together: pass both, or neither for a "
                        "self-signed certificate")
    if cert is None:
        cert, key = self_signed(host)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"--cert {cert} / --key {key} cannot be loaded ({exc}): pass a PEM "
                        "certificate and its private key") from None
    return context, Path(cert)


def self_signed(host: str, folder: Path | None = None) -> tuple[Path, Path]:
    folder = folder or cache_dir()
    cert, key = folder / "cert.pem", folder / "key.pem"
    if cert.is_file() and key.is_file() and _still_good(cert, host):
        return cert, key
    folder.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = make_certificate(host)
    _write_private(key, key_pem)
    tmp = cert.with_name(cert.name + ".tmp")
    tmp.write_bytes(cert_pem)
    os.replace(tmp, cert)
    return cert, key


def names_for(host: str) -> list[str]:
    names = ["localhost", "127.0.0.1", "::1"]
    if host not in names and host not in ("0.0.0.0", "::"):
        names.append(host)
    return names


def make_certificate(host: str) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM): EC P-256, self-signed, CA, VALID_DAYS days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Edge Toolkit bench server"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Edge Toolkit (local)")])
    alt = []
    for entry in names_for(host):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            alt.append(x509.DNSName(entry))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256()))
    return (certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _still_good(cert: Path, host: str) -> bool:
    from cryptography import x509

    try:
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
        alt = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, OSError, x509.ExtensionNotFound):
        return False
    covered = {str(v) for v in alt.get_values_for_type(x509.IPAddress)}
    covered |= set(alt.get_values_for_type(x509.DNSName))
    left = loaded.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names_for(host)}
    return wanted <= covered and left > datetime.timedelta(days=1)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
