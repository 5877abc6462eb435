"""The "preprocessing" and "postprocessing" sections of a vision bundle's manifest: what a
JavaScript app must do to a camera frame or a picked photo before the model, and how it
reads the outputs after it. The facts come from where they are decided, not restated:

- export.vision: the file takes raw pixels 0..255 (float32) in its runtime's layout
  (ONNX NCHW, LiteRT NHWC) and folds x' = (x / 255 - mean) / std into the graph, so the
  app neither rescales to 0..1 nor normalises;
- models.vision_input.VisionInput: the fixed N, C, H, W and the mean / std;
- the file itself (export.bundle_tensors): input dtype and, for a fully int8 LiteRT file,
  the input scale and zero point the app quantizes with;
- the family's task: a segmenter's deployed output is already a probability
  (models.portrait.foreground_probability: p_fg + 0.5 p_boundary, a softmax folded in;
  checked on the sample, which must lie in [0, 1]); a classifier's is logits.
"""

from __future__ import annotations

from export.errors import ExportError

SEGMENTATION, CLASSIFICATION = "image-segmentation", "image-classification"
TASKS = (SEGMENTATION, CLASSIFICATION)
MASK_THRESHOLD = 0.5
# ITU-R BT.601 luma: how a colour frame becomes the one channel of a grey model.
LUMA = (0.299, 0.587, 0.114)
FASHION_MNIST = "fashion-mnist"


def preprocessing(vision, layout: str, pixels: dict) -> dict:
    """The "preprocessing" section; `pixels` is the file's input tensor as described."""
    _, channels, height, width = (int(d) for d in vision.shape)
    expected = [1, channels, height, width] if layout == "NCHW" else [1, height, width,
                                                                       channels]
    if pixels["shape"] != expected:
        raise ExportError(f"the exported file's input {pixels['name']} has shape "
                          f"{pixels['shape']}, not {expected} ({layout}): export it again")
    section = {
        "height": height, "width": width, "channels": channels, "layout": layout,
        "color": {3: "RGB", 1: "grayscale"}.get(channels, f"{channels} channels"),
        "dtype": pixels["dtype"], "value_range": [0, 255],
        "normalization_folded": True, "folded": "(x / 255 - mean) / std",
        "mean": list(vision.mean), "std": list(vision.std),
        "resize": f"scale (or crop, then scale) the frame to {width}x{height}: the input "
                  "size is fixed",
        "note": "feed raw pixel values 0..255 as float32, not 0..1 and not normalised: "
                "the file divides by 255 and applies mean/std itself",
    }
    if channels == 1:
        section["grayscale"] = {"weights_rgb": list(LUMA),
                                "formula": "Y = 0.299 R + 0.587 G + 0.114 B (BT.601)"}
    quant = pixels.get("quantization")
    if quant is not None:  # a fully int8 LiteRT file: it takes int8 codes of the pixels
        section["quantize"] = {
            **quant, "dtype": pixels["dtype"],
            "formula": "q = clip(round_half_even(x / scale) + zero_point, dtype min, max), "
                       "x the raw 0..255 pixel"}
        section["note"] = ("take raw pixel values 0..255 (not 0..1, not normalised) and "
                           f"quantize them to {pixels['dtype']} as `quantize` says: the "
                           "file divides by 255 and applies mean/std itself")
    if getattr(vision, "dataset", None) == FASHION_MNIST:
        section["dataset"] = FASHION_MNIST
        section["dataset_note"] = ("trained on Fashion-MNIST: one centred garment, light "
                                   "on a black background; invert a photo of a garment "
                                   "on a light background")
    return section


def postprocessing(task: str, output: dict, labels: list[str] | None) -> dict:
    """The "postprocessing" section for the model's main output (`output`, described)."""
    section = _read(task, output, labels)
    quant = output.get("quantization")
    if quant is not None:  # a fully int8 LiteRT file: its output is int8 codes
        section["dequantize"] = {**quant, "dtype": output["dtype"],
                                 "formula": "x = scale * (q - zero_point), before the rest"}
    return section


def _read(task: str, output: dict, labels: list[str] | None) -> dict:
    if task == SEGMENTATION:
        return {"mask": {"output": output["name"], "dtype": output["dtype"],
                         "shape": output["shape"]},
                "value": "probability", "range": [0, 1], "apply_sigmoid": False,
                "threshold": MASK_THRESHOLD,
                "meaning": "per pixel p(foreground) + 0.5 p(boundary) at the input's "
                           "resolution (a softmax over background, foreground and "
                           "boundary, folded into the file): above the threshold is the "
                           "person"}
    return {"logits": {"output": output["name"], "dtype": output["dtype"],
                       "shape": output["shape"]},
            "value": "logits", "apply_softmax": True,
            "note": "argmax gives the class; softmax over the last axis gives "
                    "probabilities",
            "labels": labels}


def class_labels(dataset: str | None, classes: int) -> list[str]:
    """The data set's class names in label order, else "class 0", "class 1", .."""
    if dataset == FASHION_MNIST:
        from models.fashion_mnist import CLASSES

        if len(CLASSES) == classes:
            return list(CLASSES)
    return [f"class {i}" for i in range(classes)]


def check_mask(values, name: str) -> None:
    """A segmentation sample that is not a probability map means the deployed output is
    not what the manifest says: refuse rather than mislead the app."""
    low, high = float(values.min()), float(values.max())
    if low < -1e-4 or high > 1 + 1e-4:
        raise ExportError(f"the segmentation output {name} ranges over {low:.3g}..{high:.3g}, "
                          "not a probability in 0..1: this model's deployed output cannot "
                          "be bundled as a mask; export it with --out")
