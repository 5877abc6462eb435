"""Quality of portrait .tflite files as LiteRT runs them: probability maps of a whole
test set (one child process per file, since the interpreter can abort its process),
mIoU / boundary-band mIoU / boundary F against the true masks (toolkit/eval), the mask
agreement of two maps on one photo, and the constant elements a file stores.

    mask  M = [p > 0.5]
    IoU(M_a, M_b) = |M_a & M_b| / |M_a | M_b|        (person pixels only)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export.litert.run_model import run_in_child
from toolkit.data.portraits import PortraitSet
from toolkit.eval.portrait_eval import DEFAULT_BAND_WIDTH, DEFAULT_TOLERANCE, score_masks

THRESHOLD = 0.5


def litert_maps(path: Path, images: torch.Tensor, unit_range: bool) -> torch.Tensor:
    """Probability maps [N, 1, H, W] of raw uint8 images [N, 3, H, W]; the file takes
    NHWC floats, raw 0..255 (ours: the normalisation is folded in) or, with `unit_range`,
    x / 255 in [0, 1] (MediaPipe's)."""
    pixels = images.permute(0, 2, 3, 1).float().numpy()
    if unit_range:
        pixels = pixels / 255.0
    (maps,) = run_in_child(path, [np.ascontiguousarray(pixels, dtype=np.float32)],
                           threads=1)
    maps = torch.from_numpy(np.asarray(maps, dtype=np.float32))
    n, h, w = images.shape[0], images.shape[2], images.shape[3]
    if maps.shape == (n, h, w, 1):  # NHWC (MediaPipe); ours is [N, 1, H, W]
        maps = maps.permute(0, 3, 1, 2)
    if maps.shape != (n, 1, h, w):
        raise ValueError(f"{path.name} gave maps of shape {tuple(maps.shape)}, expected "
                         f"{(n, 1, h, w)}")
    return maps


def quality(maps: torch.Tensor, data: PortraitSet) -> dict:
    """Mean mIoU, band mIoU and boundary F of maps [N, 1, H, W] against `data`'s masks."""
    predicted = (maps > THRESHOLD).to(torch.uint8)
    scores = score_masks(predicted, data.masks, DEFAULT_BAND_WIDTH, DEFAULT_TOLERANCE)
    return {"miou": float(scores["miou"].mean()), "band_iou": float(scores["band_iou"].mean()),
            "boundary_f": float(scores["boundary_f"].mean()), "images": len(data),
            "band_width": DEFAULT_BAND_WIDTH}


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of the person masks of two maps (1.0 when both are empty)."""
    ma, mb = a > THRESHOLD, b > THRESHOLD
    union = int((ma | mb).sum())
    return float((ma & mb).sum()) / union if union else 1.0


def astronaut(height: int, width: int) -> torch.Tensor:
    """scikit-image's astronaut.png (a real photo of a person, never a training
    background), resized to [1, 3, height, width] uint8."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise RuntimeError("scikit-image is not installed: pip install scikit-image")
    path = Path(spec.origin).parent / "data" / "astronaut.png"
    with Image.open(path) as image:
        resized = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)[None]


def stored_elements(path: Path) -> int:
    """Elements of the constant tensors a .tflite stores (weights, biases, tables): the
    same count for any converter, where a parameter count of the source model is not
    available (MediaPipe's)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))
    total = 0
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
            has_data = buffer is not None and (buffer.data is not None and len(buffer.data)
                                               or getattr(buffer, "size", 0))
            if has_data and tensor.shape is not None:
                total += int(np.prod(tensor.shape)) if len(tensor.shape) else 1
    return total
