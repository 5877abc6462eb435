"""Operating-system failures as one line: the path, the OS's reason, and what to do.

A full disk, a read-only file system, a permission, a name too long or not UTF-8 can
strike anywhere in a command (a cache write, a staging folder, a report). The CLI turns
them into one line on stderr instead of a traceback; this module words that line.
"""

from __future__ import annotations

import errno
import os
import re

from toolkit.output_paths import shown

FIXES = {
    errno.ENOSPC: "free space on that disk or write somewhere else",
    errno.EDQUOT: "free space within your quota or write somewhere else",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EACCES: "choose a location you may write, or fix its permissions",
    errno.EPERM: "choose a location you may write, or fix its permissions",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "it is a directory: pass a file path",
    errno.EEXIST: "remove it or choose another path",
    errno.EMFILE: "raise the open-file limit (ulimit -n)",
    errno.EFBIG: "the file is larger than allowed (ulimit -f): raise the limit or write "
                 "somewhere else",
    errno.EIO: "the disk reported an I/O error: check the device",
}
CACHE_HINT = "; for the toolkit's cache set EDGE_TOOLKIT_CACHE to a writable folder"
# safetensors (Rust) reports an OS error inside its own message: "... Os { code: 28, ..."
# or "I/O error: File too large (os error 27)".
_RUST_OS_ERROR = re.compile(r"Os \{ code: (\d+)|\(os error (\d+)\)")


def os_error_from(exc: BaseException) -> OSError | None:
    """`exc` as an OSError when it is one or wraps one (safetensors' SafetensorError)."""
    if isinstance(exc, OSError):
        return exc
    match = _RUST_OS_ERROR.search(str(exc))
    if match:
        code = int(match.group(1) or match.group(2))
        return OSError(code, os.strerror(code))
    return None


def describe_os_error(exc: OSError, outputs: list[str], cache_dir: str | None = None) -> str:
    """One line: what failed (the path, else the command's outputs), why, and the fix."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [shown(p) for p in (exc.filename, exc.filename2) if p is not None]
    if paths:
        where = " -> ".join(paths)
    elif outputs:
        where = "while writing " + ", ".join(outputs)
    else:
        where = "(no path given by the system)"
    fix = FIXES.get(exc.errno, "check the path and try again")
    hint = ""
    if cache_dir and any(shown(p).startswith(cache_dir) for p in
                         (exc.filename, exc.filename2) if p is not None):
        hint = CACHE_HINT
    return f"{where}: {reason}: {fix}{hint}"


def describe_unicode_error(exc: UnicodeError) -> str:
    """One line for a name or text that is not valid UTF-8."""
    obj = getattr(exc, "object", b"")
    start = getattr(exc, "start", 0)
    if isinstance(obj, bytes | bytearray):
        fragment = bytes(obj[max(0, start - 20):start + 20]).decode("utf-8", "backslashreplace")
    else:
        fragment = str(obj[max(0, start - 20):start + 20]).encode(
            "utf-8", "backslashreplace").decode("utf-8")
    return (f"a name or text is not valid UTF-8 (near {fragment!r}: {exc.reason}): rename "
            "the file or folder, or save the text, in UTF-8")


def non_utf8_name_from(exc: BaseException) -> str | None:
    """One line when a Rust library (safetensors, tokenizers) refused a path because its
    name is not UTF-8; None for any other error."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if "not valid UTF-8" not in text and "surrogates not allowed" not in text:
        return None
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"{text}: rename the file or folder with UTF-8 characters only"
