"""`OnnxDecoderSession`: an exported LLM file in onnxruntime behind the step contract of
export.llm.greedy,

    step(input_ids [1, T], position [1], keys, values) -> (logits [1, T, V], keys, values)

with keys/values stacked [layers, kv_heads, max_context, head_dim], whatever layout the
file has (export.onnx.cache_io, read from its `edge_toolkit.llm` metadata):

- stacked: the caches go in and come out as whole tensors (`session.run`).
- per_layer: layer i's past and present are bound (IOBinding) to one buffer, a view
  keys[i:i+1] of the caller's stacked array, so GroupQueryAttention writes the new rows
  straight into the caller's cache: no cache copy per token. The arrays are updated in
  place and returned; a cache of another dtype (a float32 zero cache for a float16 file)
  or layout is converted once, on the first call, and the converted arrays returned.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from export.errors import ExportError, require
from export.onnx.cache_io import LLM_METADATA_KEY, PER_LAYER, STACKED


class OnnxDecoderSession:
    """`session` (an onnxruntime.InferenceSession over `path`, an Edge Toolkit LLM export)
    as a decoder step; `OnnxDecoderSession.open(path)` makes the session too."""

    def __init__(self, session, path: Path) -> None:
        self._ort = require("onnxruntime", "onnx", "running ONNX files")
        self.session = session
        text = session.get_modelmeta().custom_metadata_map.get(LLM_METADATA_KEY)
        if not text:
            raise ExportError(f"{Path(path).name} has no {LLM_METADATA_KEY} metadata: it is not an "
                              "Edge Toolkit LLM export; export it again with `toolkit export "
                              "onnx`")
        self.contract = json.loads(text)
        self.layout = self.contract.get("cache_layout", STACKED)
        self.cache_shape = [int(d) for d in self.contract["cache_shape"]]
        self.max_context = int(self.contract["max_context"])
        self.cache_dtype = np.dtype(self.contract.get("cache_dtype", "float32"))
        self._bound = None  # (keys, values, IOBinding) of the last per-layer call

    @classmethod
    def open(cls, path: Path, threads: int | None = None, *,
             inter_op_threads: int | None = None) -> OnnxDecoderSession:
        ort = require("onnxruntime", "onnx", "running ONNX files")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if inter_op_threads:
            options.inter_op_num_threads = inter_op_threads
        return cls(ort.InferenceSession(os.fspath(path), options,
                                        providers=["CPUExecutionProvider"]), path)

    def __call__(self, ids, position, keys, values):
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        position = np.ascontiguousarray(position, dtype=np.int64)
        keys, values = self._cache(keys), self._cache(values)
        if self.layout != PER_LAYER:
            names = self.contract["inputs"]
            return self.session.run(None, dict(zip(names, (ids, position, keys, values),
                                                   strict=True)))
        binding = self._binding(keys, values)
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("position", position)
        binding.bind_output("logits")  # unbound again: its token count changes per call
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy(), keys, values

    def _binding(self, keys: np.ndarray, values: np.ndarray):
        """The IOBinding with every layer's past and present on its slice of `keys` /
        `values`; kept while the same arrays come back (a generation loop passes the
        returned cache again), since binding 2 x layers buffers costs about 5% of a
        SmolLM2 decode step. The arrays are held with it, so their memory stays theirs."""
        if self._bound is not None and self._bound[0] is keys and self._bound[1] is values:
            return self._bound[2]
        binding = self.session.io_binding()
        binding.bind_output("logits")  # first: get_outputs() lists outputs in bind order
        names = self.contract["cache_names"]
        for cache, past, present in ((keys, names["past_keys"], names["present_keys"]),
                                     (values, names["past_values"], names["present_values"])):
            for layer, (past_name, present_name) in enumerate(zip(past, present, strict=True)):
                buffer = self._ort.OrtValue.ortvalue_from_numpy(cache[layer:layer + 1])
                binding.bind_ortvalue_input(past_name, buffer)
                binding.bind_ortvalue_output(present_name, buffer)
        self._bound = (keys, values, binding)
        return binding

    def _cache(self, cache) -> np.ndarray:
        cache = np.asarray(cache)
        if list(cache.shape) != self.cache_shape:
            raise ValueError(f"a cache of shape {list(cache.shape)} was given; the file's is "
                             f"{self.cache_shape}")
        if cache.dtype != self.cache_dtype or not cache.flags.c_contiguous \
                or not cache.flags.writeable:
            cache = np.array(cache, dtype=self.cache_dtype, order="C")
        return cache


def onnx_step(path: Path, threads: int | None = None) -> OnnxDecoderSession:
    """The file as a greedy step (export.llm.greedy.Step)."""
    return OnnxDecoderSession.open(path, threads)
