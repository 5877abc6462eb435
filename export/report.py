"""What an export did, in one shape for every target: what was carried into the file,
what was dropped and why, how it was verified, and the verdict.

The verdict is decided here, not by the caller:

    "failed"                                  the file did not verify (nothing written)
    "passed"                                  it verified and carried every compression stage
    "passed, but carried none of: <what>"     it verified, yet one or more of the artifact's
                                              compression stages did not reach the file
    "not verified" (+ ", and carried none of: <what>")   written with verify off
"""

from __future__ import annotations

import dataclasses
from typing import Any

from export.errors import ExportError

PASSED, FAILED, NOT_VERIFIED = "passed", "failed", "not verified"


@dataclasses.dataclass
class ExportReport:
    target: str
    runtime: str
    source: str
    file_bytes: int
    float32_bytes: int  # 4 bytes per parameter of the model as loaded
    carried: dict[str, int] = dataclasses.field(default_factory=dict)  # how -> layers
    dropped: list[dict[str, str]] = dataclasses.field(default_factory=list)  # layer, why
    verification: dict | None = None
    # Compression stages of the artifact the file carries none of, each a phrase such as
    # "palettized weights (written as float32, 2.3x the artifact's weights)".
    lost: list[str] = dataclasses.field(default_factory=list)
    path: str | None = None  # set once the file is in place; None when not written
    # Target- or family-specific facts (max_context, layout, input_shape, ...), flattened
    # into to_dict() beside the common keys.
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.verification is not None

    @property
    def passed(self) -> bool:
        """False only when verification ran and failed."""
        return self.verification is None or bool(self.verification.get("passed"))

    @property
    def verdict(self) -> str:
        if not self.passed:
            return FAILED
        if not self.verified:
            return NOT_VERIFIED + (f", and carried none of: {'; '.join(self.lost)}"
                                   if self.lost else "")
        return PASSED + (f", but carried none of: {'; '.join(self.lost)}" if self.lost else "")

    def to_dict(self) -> dict:
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name != "details"}
        return {**data, **self.details, "verdict": self.verdict}

    def lost_error(self) -> ExportError:
        """The error require_carried raises for this report's lost compression."""
        return ExportError(f"the {self.target} file would carry none of: "
                           f"{'; '.join(self.lost)} (--require-carried), so nothing was "
                           "written: choose a target that carries it, or drop "
                           "--require-carried")

    def rows(self) -> list[list[str]]:
        """The report as two-column table rows (label, value) for a terminal."""
        from export.report_rows import report_rows

        return report_rows(self)
