"""What a caller may ask of an export, as one dataclass every registered exporter takes.

LLM knobs (max_context, prefill_tokens, prompt, new_tokens) shape the re-authored decoder
and its greedy check; vision knobs (int8, fp16, palettize_bits, calibration_images) pick
the file's precision. `rtol` is the largest allowed error relative to PyTorch's largest
output; left None it becomes 1e-3 for float files and 0.05 for static int8 ones (judged
on the mean error there, see export.vision_job).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from export.errors import ExportError

DEFAULT_PROMPT = "The capital of France is"
FLOAT_RTOL = 1e-3
INT8_RTOL = 0.05  # static int8 activations: a few percent is the expected cost
EMBEDDING_BITS = (4, 8)
PALETTE_MAP_BITS = (4, 8)  # the LiteRT containers a palette is re-quantized to


@dataclasses.dataclass
class ExportOptions:
    # LLMs: tokens the key/value cache holds, prompt and output together.
    max_context: int = 512
    # LiteRT LLMs: length of the fixed prefill signature; longer prompts run in chunks.
    prefill_tokens: int = 64
    prompt: str = DEFAULT_PROMPT  # verification prompt for LLMs
    new_tokens: int = 16  # greedy tokens both runtimes generate to verify
    rtol: float | None = None  # None: FLOAT_RTOL, or INT8_RTOL with int8
    # Whether the caller set rtol (filled in, and kept through dataclasses.replace): an
    # exporter may apply its own default to a file it knows to be lossier (int8
    # activations), never over the caller's choice.
    rtol_given: bool | None = None
    int8: bool = False  # vision, tflite / onnx: static int8 calibrated on the family's images
    fp16: bool = False  # vision, coreml: float16 weights and compute
    palettize_bits: int | None = None  # vision, coreml: k-means palette of 2^B values
    calibration_images: int = 64  # images for int8 calibration
    verify: bool = True  # run (or, for Core ML off macOS, inspect) the file before moving it
    overwrite: bool = False  # replace an existing output
    # Refuse (ExportError, nothing written) an export that carries none of a compression
    # stage the artifact recorded, instead of passing with the loss named in the verdict.
    require_carried: bool = False
    quiet: bool = True
    # The artifact's manifest (toolkit.json); None: read from the artifact's directory.
    manifest: dict | None = None
    # LLMs: the embedding table and LM head quantized at export to this many bits (4 or
    # 8) in groups of `embedding_group_size` per row; None keeps them float. `export` does
    # not quantize by itself (it may not import compress): the caller passes the quantizer,
    # weight [rows, width] -> models.qformat.AffineQuantized (toolkit: compress' RTN).
    embedding_bits: int | None = None
    embedding_group_size: int = 32
    embedding_quantizer: Callable | None = None
    # ONNX: MatMulNBits' accuracy_level (export.onnx.weights.set_accuracy_level); None:
    # "auto" for LLMs (export.onnx.accuracy_choice: int8 compute when it keeps PyTorch's
    # greedy tokens, else float).
    accuracy_level: int | None = None
    # Core ML LLMs: the decoder as this many packages run in sequence, each converted on
    # its own (export.coreml.chunked); None: one package, or for a model read lazily as
    # many as keep each conversion's memory bounded.
    chunks: int | None = None
    # ONNX LLMs: "auto" | "fused" | "standard" attention (export.onnx.decoder_graph
    # .cache_layout) and the key/value cache dtype, "float32" or "float16" (fused only).
    onnx_attention: str = "auto"
    kv_cache_dtype: str = "float32"
    # LiteRT LLMs: palettized linears re-quantized to this many bits (4 or 8) per group of
    # 32 (export.litert.palette_map); None: 4 for palettes of up to 4 bits, else 8.
    palette_map_bits: int | None = None
    # LiteRT chunked LLMs, whose int4 FCs quantize their inputs to int8 per row: token id
    # sequences, tokenizer -> list of lists of ids (toolkit: Wikipedia calibration
    # windows), run in float to find each FC input's outlier channels, which then leave
    # the int8 FC for a float one (export.litert.int8_outliers); None: no split.
    calibration: Callable | None = None
    # ... at most this many channels per FC input; None: OUTLIER_CHANNELS there, 0: none.
    outlier_channels: int | None = None
    # ... and each FC written as one int4 FC per slice of about this many inputs, each
    # slice's int8 input with its own scale (export.litert.blockwise); None: INT8_SLICE
    # there, 0: one FC over the whole row (XNNPACK's own form).
    int8_slice: int | None = None

    def __post_init__(self) -> None:
        if self.rtol_given is None:
            self.rtol_given = self.rtol is not None
        if self.rtol is None:
            self.rtol = INT8_RTOL if self.int8 else FLOAT_RTOL
        if not 0 < self.rtol < 1:
            raise ExportError(f"--rtol {self.rtol} must lie in (0, 1), e.g. 1e-3")
        if self.embedding_bits is not None:
            if self.embedding_bits not in EMBEDDING_BITS:
                raise ExportError(f"--embedding-bits {self.embedding_bits} must be one of "
                                  f"{', '.join(map(str, EMBEDDING_BITS))}")
            group = self.embedding_group_size
            if not isinstance(group, int) or group < 16 or group & (group - 1):
                raise ExportError(f"--embedding-group-size {group!r} must be a power of two "
                                  ">= 16 (the runtimes' block sizes), e.g. 32")
            if self.embedding_quantizer is None:
                raise ValueError("embedding_bits needs an embedding_quantizer")
        if self.chunks is not None and (not isinstance(self.chunks, int) or self.chunks < 1):
            raise ExportError(f"--chunks {self.chunks!r} must be a positive integer, e.g. 4")
        if self.int8_slice is not None and (
                not isinstance(self.int8_slice, int) or self.int8_slice < 0):
            raise ExportError(f"--int8-slice {self.int8_slice!r} must be an integer >= 0, e.g. "
                              "128 (0: one int8 scale per whole row)")
        if self.outlier_channels is not None and (
                not isinstance(self.outlier_channels, int) or self.outlier_channels < 0):
            raise ExportError(f"--outlier-channels {self.outlier_channels!r} must be an integer "
                              ">= 0, e.g. 8 (0: no channel leaves the int8 FCs)")
        if self.palette_map_bits not in (None, *PALETTE_MAP_BITS):
            raise ExportError(f"--palette-map-bits {self.palette_map_bits!r} must be 4 or 8")
        for name in ("max_context", "prefill_tokens", "new_tokens", "calibration_images"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                flag = "--" + name.replace("_", "-")
                raise ExportError(f"{flag} {value!r} must be a positive integer")
