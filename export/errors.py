"""Errors a user can cause while exporting or verifying (the CLI exits 2 on them).

`export` may not import `toolkit` (see ARCHITECTURE.md), so it has its own error type.
"""


class ExportError(ValueError):
    """An export that cannot be carried out or did not verify; the message names the fix."""


def require(module: str, extra: str, target: str):
    """Import `module` or fail with the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{target} needs the Python package {module!r}, which is not "
                          f"installed: pip install 'edge-toolkit[{extra}]'") from None
