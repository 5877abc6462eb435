"""Models as a runtime runs them, inside a bench worker process: load, then one timed step.

For an LLM (an ONNX or .tflite file written by `toolkit export`, or a PyTorch model re-authored the
same way) the steady-state step is one decode token at position P after a P-token prefill,
the unit of a phone's generation loop; prefill is timed on its own. Every decode run
starts from the same prefilled cache, so all runs do identical work.

Any other file (a vision export, say) runs on fixed inputs of its declared shapes
(symbolic dimensions set to 1): an image-shaped input, [1, C, H, W] or [1, H, W, C] with C
at most 4, gets the same smooth raw-pixel image (0..255, seed 0) in every runtime and layout, so
the outputs of an ONNX, a LiteRT and a PyTorch version of one model can be compared.
Integer inputs of a fully quantized .tflite are quantized with the file's own scale.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# export.onnx.cache_io.LLM_METADATA_KEY, spelled out: importing `export` loads torch, which
# a worker timing a vision file must not carry in its peak RSS.
LLM_METADATA_KEY = "edge_toolkit.llm"


class BenchSettingError(ValueError):
    """A bench option the model cannot honour (the file itself is fine): named as is,
    without the re-export advice a load failure gets."""


@dataclasses.dataclass
class Runnable:
    step: Callable[[], Any]  # the timed unit
    outputs: Callable[[], np.ndarray]  # what accuracy compares (LLM: prefill logits)
    prefill: Callable[[], Any] | None = None  # LLMs only
    llm: dict | None = None  # prompt_tokens, max_context


def load_onnx(path: Path, threads: int, prompt: Sequence[int]) -> Runnable:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Pool threads spin only while a step runs: an interleaved bench keeps every model's
    # worker alive, and a finished step's spinning threads would take the cores of the
    # next model's step (seen as slow, noisy 2-thread decode rows in BENCHMARKS.md's
    # llm-decode run before this was set).
    options.add_session_config_entry("session.force_spinning_stop", "1")
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    if LLM_METADATA_KEY in session.get_modelmeta().custom_metadata_map:
        # An LLM export: stepped through the file's own cache contract (a per-layer cache
        # is updated in place, as an app's generation loop runs it).
        from export.onnx.llm_session import OnnxDecoderSession

        step = OnnxDecoderSession(session, path)
        return _llm_runnable(step, step.cache_shape, step.max_context, prompt)
    feeds = {arg.name: fixed_input(arg.shape, arg.type) for arg in session.get_inputs()}
    return Runnable(step=lambda: session.run(None, feeds),
                    outputs=lambda: np.asarray(session.run(None, feeds)[0]))


def load_torch(spec: str, threads: int, prompt: Sequence[int], max_context: int) -> Runnable:
    """A registered model or artifact in PyTorch eager: an LLM re-authored exactly as the
    exporters see it, a vision model behind the same pixel input its exports take."""
    import torch

    from models import load_model

    torch.set_num_threads(threads)
    loaded = load_model(spec)
    if loaded.vision is not None:
        return _torch_vision(loaded)
    from export.llm.export_decoder import ExportDecoder

    decoder = ExportDecoder.from_hf(loaded.module, max_context)

    def call(ids, position, keys, values):
        with torch.no_grad():
            out = decoder(*(torch.from_numpy(np.asarray(a)) for a in (ids, position, keys,
                                                                      values)))
        return [t.numpy() for t in out]
    return _llm_runnable(call, list(decoder.shape.cache_shape()), max_context, prompt)


def _torch_vision(loaded) -> Runnable:
    import torch

    from export.vision import PixelInput, Preprocess

    spec = loaded.vision
    wrapped = PixelInput(loaded.module.eval(), "NCHW", Preprocess(spec.mean, spec.std)).eval()
    pixels = torch.from_numpy(fixed_input(list(spec.shape), "float"))

    def run():
        with torch.no_grad():
            out = wrapped(pixels)
        return (out[0] if isinstance(out, tuple | list) else out).numpy()
    return Runnable(step=run, outputs=run)


def load_litert(path: Path, threads: int, prompt: Sequence[int]) -> Runnable:
    """A .tflite LLM from `toolkit export tflite` (prefill and decode signatures; one
    chunk of a chunked export runs all its chunks in sequence), or any other .tflite on
    fixed inputs (its default signature)."""
    from ai_edge_litert.interpreter import Interpreter

    from export.litert.run_chunks import chained_steps, chunk_files
    from export.litert.run_llm import signature_steps

    files = chunk_files(Path(path))
    if len(files) > 1:
        prefill, decode, chunk, cache_shape = chained_steps(files, threads)
        return _llm_runnable(decode, cache_shape, cache_shape[2], prompt, prefill, chunk)
    if not {"prefill", "decode"} <= set(Interpreter(model_path=os.fspath(path))
                                        .get_signature_list()):
        return _litert_default_signature(path, threads)
    prefill, decode, chunk, cache_shape = signature_steps(os.fspath(path), threads)
    return _llm_runnable(decode, cache_shape, cache_shape[2], prompt, prefill, chunk)


def _litert_default_signature(path: Path, threads: int) -> Runnable:
    from ai_edge_litert.interpreter import Interpreter

    from export.litert.run_model import DefaultRunner, dequantize

    runner = DefaultRunner(Interpreter(model_path=os.fspath(path), num_threads=threads))
    # A quantized input (it has a scale) takes the float input quantized as an app would.
    feeds = runner.prepare({name: fixed_input(list(d["shape"]), "float" if d["quantization"][0]
                                              else np.dtype(d["dtype"]).name)
                            for name, d in runner.input_details.items()})
    first = sorted(runner.output_details)[0]
    # The timed step is the interpreter alone, on inputs prepared once.
    return Runnable(step=lambda: runner.run_raw(feeds),
                    outputs=lambda: dequantize(runner.run_raw(feeds)[first],
                                               runner.output_details[first]))


def _llm_runnable(call, cache_shape: Sequence[int], max_context: int,
                  prompt: Sequence[int], prefill_call=None,
                  chunk: int | None = None) -> Runnable:
    """Prefill = the prompt in one call, or in `chunk`-token calls to `prefill_call` (a
    fixed-length signature, see export.llm.greedy.prefill); step = one decode token."""
    from export.llm.greedy import prefill

    if len(prompt) + 1 > max_context:
        raise BenchSettingError(f"a {len(prompt)}-token prompt does not fit the exported "
                                f"context of {max_context}: lower --prompt-tokens")

    def run_prefill():
        return prefill(prefill_call or call, prompt, cache_shape, max_context, chunk)

    logits, keys, values = run_prefill()
    token = np.asarray([[int(logits[-1].argmax())]], dtype=np.int64)
    position = np.array([len(prompt)], dtype=np.int64)
    return Runnable(step=lambda: call(token, position, keys, values),
                    outputs=lambda: run_prefill()[0], prefill=run_prefill,
                    llm={"prompt_tokens": len(prompt), "max_context": max_context})


def fixed_input(shape: Sequence, type_name: str) -> np.ndarray:
    """The bench's input for one declared shape and element type (an ONNX type string or a
    numpy dtype name): the seed-0 pixel image for image shapes, else seed-0 normals for
    floats and zeros for integers."""
    shape = [d if isinstance(d, int | np.integer) and d > 0 else 1 for d in shape]
    if "float" not in type_name:
        return np.zeros(shape, dtype=np.int64 if "int64" in type_name else np.int32)
    dtype = np.float16 if "float16" in type_name else np.float32
    channels_first = len(shape) == 4 and shape[1] <= 4 < min(shape[2:])
    channels_last = len(shape) == 4 and shape[3] <= 4 < min(shape[1:3])
    if not (channels_first or channels_last):
        return np.random.default_rng(0).standard_normal(shape).astype(dtype)
    n, c, h, w = shape if channels_first else (shape[0], shape[3], shape[1], shape[2])
    image = smooth_image(n, c, h, w)
    return (image if channels_first else image.transpose(0, 2, 3, 1)).astype(dtype)


def smooth_image(n: int, c: int, h: int, w: int) -> np.ndarray:
    """Raw pixels 0..255 [n, c, h, w]: a seed-0 random 4x4 colour pattern, bilinearly
    upsampled. Closer to a photo than per-pixel noise, which lies outside the activation
    ranges a static int8 file was calibrated for and would overstate its error."""
    coarse = np.random.default_rng(0).uniform(0, 255, (n, c, 4, 4))
    grid = np.arange(4)
    rows = np.apply_along_axis(lambda v: np.interp(np.linspace(0, 3, h), grid, v), 2, coarse)
    image = np.apply_along_axis(lambda v: np.interp(np.linspace(0, 3, w), grid, v), 3, rows)
    return image.astype(np.float32)
