"""The machine a benchmark ran on, for the table's caption."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def environment() -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d", time.gmtime())}
