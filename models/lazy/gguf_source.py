"""A llama.cpp GGUF file as a lazy tensor source: Hugging Face parameter names and float32
values, dequantized one tensor at a time, bit-identical to what transformers' own GGUF
loading (`from_pretrained(..., gguf_file=..., dtype=torch.float32)`) puts in the model.

What transformers does to a tensor, and so what `read` does (transformers 5,
modeling_gguf_pytorch_utils.load_gguf_checkpoint):

1. `gguf.quants.dequantize(bytes, type)` gives float32 (F16 is widened, F32 copied).
2. For GGUF architecture `llama` only, the Q and K projections undo llama.cpp's row
   permutation: the converter reorders each head's rows from the two rotary halves
   (HF's rotate_half layout) to interleaved pairs (the original Meta layout), i.e.
   W_gguf = W_hf.reshape(h, 2, d/2, n).swapaxes(1, 2).reshape(...); reading reshapes to
   (h, d/2, 2, n), swaps axes 1 and 2 back, where h is the head count for Q and the KV head
   count for K (grouped-query attention, arXiv:2305.13245). Rotary embeddings:
   arXiv:2104.09864. Qwen2 files are stored unpermuted.
3. The GGUF name becomes the HF name; `output.weight` absent means tied embeddings
   (no `lm_head.weight`, `tie_word_embeddings` true in the config).

The header is parsed by models/lazy/gguf_header.py (not `gguf.GGUFReader`, which costs
seconds and hundreds of MB on a large vocabulary); the gguf package dequantizes.

Memory: nothing is mapped or kept between calls. `read` opens the file and, a group of
rows at a time (about 16 MB of float32), reads their quantized bytes with pread into a
buffer of its own and dequantizes them into the output, so the peak is the returned tensor
plus one group, and the caller's tensor is all that remains. `raw_chunks` streams a
tensor's float32 bytes the same way; `rows` dequantizes only the rows asked for.

Architectures: the Llama family that transformers loads from GGUF and Edge Toolkit
supports: `llama` (also Mistral, SmolLM2, TinyLlama: llama.cpp writes them as llama) and
`qwen2`; others are refused in one line.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.errors import ModelError
from models.lazy.gguf_header import REDOWNLOAD, GgufHeader, read_gguf_header
from models.lazy.source import TensorInfo, TensorSource

# float32 bytes dequantized at once (and the default piece of `raw_chunks`): large enough
# that per-call overhead vanishes, small beside a 2 GB embedding table.
_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class _Layout:
    """How one GGUF architecture's tensors become a transformers causal LM's."""

    permute_qk: bool  # undo llama.cpp's Q/K row permutation (transformers: llama only)
    biases: frozenset[str]  # GGUF block tensors that may carry a bias


_LAYOUTS = {
    "llama": _Layout(permute_qk=True, biases=frozenset()),
    "qwen2": _Layout(permute_qk=False, biases=frozenset({"attn_q", "attn_k", "attn_v"})),
}
# GGUF tensors transformers drops: llama.cpp's precomputed rotary frequencies (Llama 3).
_IGNORED = frozenset({"rope_freqs.weight"})
_TOP = {"token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)")


@dataclass(frozen=True)
class _Stored:
    info: TensorInfo
    gguf_name: str
    qtype: int
    gguf_shape: tuple[int, ...]  # ne0 first (fastest-varying), as GGUF stores it
    begin: int  # absolute offset of the first byte
    row_bytes: int  # stored (quantized) bytes of one row of ne0 values
    heads: int | None  # rows are permuted in this many heads (Q/K of llama), else None

    @property
    def row_elements(self) -> int:
        return self.gguf_shape[0]

    @property
    def rows(self) -> int:
        return int(np.prod(self.gguf_shape[1:], dtype=np.int64))

    @property
    def group(self) -> int:
        """Rows dequantized at once: about _CHUNK bytes of float32, bounding gguf's
        temporaries (several times the output) to a few of those."""
        return max(1, _CHUNK // (4 * self.row_elements))


class GgufSource(TensorSource):
    """The tensors of one GGUF file under Hugging Face names, dequantized to float32 on
    `read`. Construction reads the header only; a damaged or unsupported file is refused
    there in one line."""

    def __init__(self, path: Path) -> None:
        if sys.byteorder != "little":
            raise ModelError("GGUF reading needs a little-endian host (the format's byte "
                             "order): run on an x86-64 or ARM64 machine")
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path} is not a file: pass a .gguf model file")
        header = read_gguf_header(self.path)
        self.architecture = header.architecture
        self.tied = "output.weight" not in header.tensors
        self._tensors = _locate(self.path, header)
        self._stamp = _stamp(os.stat(self.path))
        self._closed = False

    def __enter__(self) -> GgufSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the TensorSource protocol --------------------------------------------------------

    def infos(self) -> dict[str, TensorInfo]:
        return {name: stored.info for name, stored in self._tensors.items()}

    def read(self, name: str) -> torch.Tensor:
        stored = self._get(name)
        out = np.empty((stored.rows, stored.row_elements), dtype=np.float32)
        with self._open() as handle:
            for first in range(0, stored.rows, stored.group):
                count = min(stored.group, stored.rows - first)
                out[first:first + count] = self._dequantize(
                    stored, self._pread(handle, stored, first, count))
        out = out.reshape(stored.info.shape)
        if stored.heads is not None:
            out = unpermute_rows(out, stored.heads)
        return torch.from_numpy(out)

    def raw(self, name: str) -> bytes:
        """Float32 little-endian bytes of `read(name)`: a GGUF tensor has no safetensors
        bytes to copy, so an unchanged tensor is written dequantized (`raw_chunks` does
        it without holding the tensor twice)."""
        return self.read(name).numpy().tobytes()

    def close(self) -> None:
        # Nothing is held between calls; closing only makes later reads an error.
        self._closed = True

    # --- beyond the protocol (as SafetensorsSource) ---------------------------------------

    def raw_chunks(self, name: str, chunk_bytes: int = _CHUNK) -> Iterator[bytes]:
        """The bytes of `raw(name)` in pieces of at most `chunk_bytes`, dequantizing a few
        rows at a time, so a 2 GB float32 embedding table is never held whole."""
        stored = self._get(name)
        if stored.heads is not None:  # Q/K rows move between row groups: whole tensor
            data = self.read(name).numpy().tobytes()
            for begin in range(0, len(data), chunk_bytes):
                yield data[begin:begin + chunk_bytes]
            return
        row_bytes = stored.row_elements * 4
        group = max(1, min(stored.group, chunk_bytes // row_bytes))
        for first in range(0, stored.rows, group):
            count = min(group, stored.rows - first)
            with self._open() as handle:
                data = self._dequantize(stored, self._pread(handle, stored, first, count))
            data = data.tobytes()
            for begin in range(0, len(data), chunk_bytes):
                yield data[begin:begin + chunk_bytes]

    def rows(self, name: str, indices: torch.Tensor) -> torch.Tensor:
        """`read(name)[indices]` for a 2-D tensor (an embedding lookup of calibration token
        ids), reading and dequantizing only the rows asked for (a GGUF row is whole
        quantization blocks, so its values do not depend on the other rows)."""
        stored = self._get(name)
        if len(stored.info.shape) != 2:
            raise ValueError(f"rows() needs a 2-D tensor; {name!r} has shape "
                             f"{list(stored.info.shape)}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ValueError(f"rows() needs integer indices, got {indices.dtype}")
        count, columns = stored.info.shape
        flat = indices.reshape(-1).to(torch.int64)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= count):
            bad = int(flat.min()) if int(flat.min()) < 0 else int(flat.max())
            raise ModelError(f"row {bad} asked of {name!r} in {self.path.name}, which has "
                             f"{count} rows: use the tokenizer of this GGUF")
        if stored.heads is not None:
            return self.read(name)[flat].reshape(*indices.shape, columns)
        wanted, where = np.unique(flat.numpy(), return_inverse=True)
        picked = np.empty((len(wanted), columns), dtype=np.float32)
        with self._open() as handle:
            for at, row in enumerate(wanted.tolist()):
                picked[at] = self._dequantize(stored, self._pread(handle, stored, row, 1))[0]
        return torch.from_numpy(picked[where]).reshape(*indices.shape, columns)

    def gguf_name(self, name: str) -> str:
        """The GGUF tensor behind HF parameter `name` (for messages)."""
        return self._get(name).gguf_name

    # --- helpers --------------------------------------------------------------------------

    def _get(self, name: str) -> _Stored:
        if self._closed:
            raise ModelError(f"{self.path}: the source was closed: open a new GgufSource")
        stored = self._tensors.get(name)
        if stored is None:
            raise ModelError(f"{self.path} has no tensor {name!r}: the names are "
                             "GgufSource.infos() keys (Hugging Face parameter names)")
        return stored

    def _open(self):
        handle = self.path.open("rb", buffering=0)
        if _stamp(os.fstat(handle.fileno())) != self._stamp:
            handle.close()
            raise ModelError(f"{self.path} changed on disk since it was opened (size or "
                             "time differs): leave the file alone while it is read, then rerun")
        return handle

    def _pread(self, handle, stored: _Stored, first: int, count: int) -> np.ndarray:
        """Stored rows [first, first + count) read (not mapped) into a buffer of our own,
        shaped (count, bytes per row) as gguf's dequantize expects."""
        size = count * stored.row_bytes
        buffer = bytearray(size)
        view, done = memoryview(buffer), 0
        while done < size:
            got = os.preadv(handle.fileno(), [view[done:]],
                            stored.begin + first * stored.row_bytes + done)
            if got <= 0:
                raise ModelError(f"{self.path} ended inside tensor {stored.gguf_name}: "
                                 f"the file is truncated ({REDOWNLOAD})")
            done += got
        return np.frombuffer(buffer, dtype=np.uint8).reshape(count, stored.row_bytes)

    def _dequantize(self, stored: _Stored, data: np.ndarray) -> np.ndarray:
        """float32 (rows, row_elements), exactly gguf.quants.dequantize's values: every
        GGML type quantizes blocks within a row, so rows dequantize independently."""
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import dequantize

        qtype = GGMLQuantizationType(stored.qtype)
        try:
            values = dequantize(data, qtype)
        except NotImplementedError:
            raise ModelError(f"{self.path}: tensor {stored.gguf_name} is stored as "
                             f"{qtype.name}, which the gguf package cannot dequantize: "
                             "convert the model with a common type (Q4_K, Q8_0, F16)") from None
        return np.asarray(values, dtype=np.float32)


def unpermute_rows(weights: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation of a (rows, ...) matrix in `heads` heads: each
    head's rows go from interleaved rotary pairs back to two halves (module docstring)."""
    half = weights.shape[0] // heads // 2
    split = weights.reshape(heads, half, 2, *weights.shape[1:])
    return split.swapaxes(2, 1).reshape(weights.shape)


# --- names, shapes, offsets ----------------------------------------------------------------


def _locate(path: Path, header: GgufHeader) -> dict[str, _Stored]:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    arch = header.architecture
    layout = _LAYOUTS.get(arch)
    if layout is None:
        raise ModelError(
            f"{path} is a GGUF of architecture {arch!r}, which the lazy GGUF reader does not "
            f"support: pass a GGUF of {' or '.join(sorted(_LAYOUTS))} architecture (Llama, "
            "Mistral, SmolLM2, TinyLlama, Qwen2) or a safetensors directory")
    heads = _head_counts(path, header, arch) if layout.permute_qk else None
    located: dict[str, _Stored] = {}
    for gguf_name, (qtype, shape, offset) in header.tensors.items():
        if gguf_name in _IGNORED:
            continue
        hf_name = _hf_name(path, gguf_name, layout, arch)
        try:
            kind = GGMLQuantizationType(qtype)
        except ValueError:
            raise ModelError(f"{path}: tensor {gguf_name} has unknown GGML type {qtype}: "
                             f"{REDOWNLOAD}") from None
        block, type_size = GGML_QUANT_SIZES[kind]
        if any(d <= 0 for d in shape) or shape[0] % block:
            raise ModelError(f"{path}: tensor {gguf_name} has shape {list(shape)}, not a "
                             f"whole number of {kind.name} blocks: {REDOWNLOAD}")
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count // block * type_size
        begin = header.data_start + offset
        if begin + nbytes > header.file_size:
            raise ModelError(f"{path} ends before tensor {gguf_name} does: the file is "
                             f"truncated ({REDOWNLOAD})")
        hf_shape = tuple(reversed(shape))
        permuted = None
        if heads is not None and gguf_name.endswith((".attn_q.weight", ".attn_k.weight")):
            permuted = heads[0] if ".attn_q." in gguf_name else heads[1]
            if hf_shape[0] % (2 * permuted):
                raise ModelError(f"{path}: tensor {gguf_name} has {hf_shape[0]} rows, not "
                                 f"{permuted} heads of even size: {REDOWNLOAD}")
        info = TensorInfo(hf_name, hf_shape, torch.float32, count * 4, path.name)
        located[hf_name] = _Stored(info, gguf_name, qtype, shape, begin,
                                   shape[0] // block * type_size, permuted)
    return located


def _hf_name(path: Path, gguf_name: str, layout: _Layout, arch: str) -> str:
    if gguf_name in _TOP:
        return _TOP[gguf_name]
    match = _BLOCK_NAME.fullmatch(gguf_name)
    if match and match[2] in _BLOCK and (match[3] == "weight" or match[2] in layout.biases):
        return f"model.layers.{match[1]}.{_BLOCK[match[2]]}.{match[3]}"
    raise ModelError(
        f"{path} has tensor {gguf_name}, which a dense {arch} decoder does not have "
        "(transformers would drop it and load a different model): pass a plain "
        f"{arch} GGUF (no experts or extra biases)")


def _head_counts(path: Path, header: GgufHeader, arch: str) -> tuple[int, int]:
    """(query heads, key/value heads) from the metadata transformers' config reads."""
    counts = []
    for key in (f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv"):
        value = header.metadata.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelError(f"{path}: GGUF metadata {key} is {value!r}, not a positive "
                             f"integer (needed to undo the Q/K permutation): {REDOWNLOAD}")
        counts.append(value)
    return counts[0], counts[1]


def _stamp(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


# --- config and tokenizer through transformers --------------------------------------------


def gguf_config(path: Path):
    """The transformers config of `path`, exactly as `AutoConfig.from_pretrained(dir,
    gguf_file=name)` gives it; transformers reads the metadata only (no tensor is
    dequantized). The architecture is checked first so an unsupported file is one line."""
    from transformers import AutoConfig

    path = Path(path)
    _supported_header(path)
    with _one_line_errors(path, "config"):
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)


def gguf_tokenizer(path: Path):
    """The tokenizer transformers builds from the GGUF's embedded vocabulary."""
    from transformers import AutoTokenizer

    path = Path(path)
    _supported_header(path)
    with _one_line_errors(path, "tokenizer"):
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _supported_header(path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"{path} is not a file: pass a .gguf model file")
    arch = read_gguf_header(path).architecture
    if arch not in _LAYOUTS:
        raise ModelError(f"{path} is a GGUF of architecture {arch!r}, which Edge Toolkit "
                         f"does not read: pass a {' or '.join(sorted(_LAYOUTS))} GGUF")


class _one_line_errors:
    """transformers' reader fails in many ways on a corrupt file; all become one line."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, ModelError) or not isinstance(exc, Exception):
            return False
        lines = str(exc).strip().splitlines()
        raise ModelError(f"{self.path}: transformers could not read the GGUF {self.what} "
                         f"({type(exc).__name__}: {lines[0][:200] if lines else ''}): "
                         f"{REDOWNLOAD}") from None
