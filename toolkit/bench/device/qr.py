"""The bench URL as a QR code drawn in the terminal, for a phone's camera."""

from __future__ import annotations

import io


def terminal_qr(url: str) -> str:
    """Two QR modules per character cell (half blocks), black on the terminal's light
    quiet zone; segno picks the version and error correction level M."""
    import segno

    out = io.StringIO()
    segno.make(url, error="m", micro=False).terminal(out=out, compact=True, border=2)
    return out.getvalue()
