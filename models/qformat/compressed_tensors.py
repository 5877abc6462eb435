"""Affine quantized weights in compressed-tensors' "pack-quantized" format (the on-disk
format of llm-compressor and vLLM, which transformers loads through its compressed-tensors
quantizer), and back, without changing a code, scale or zero point.

For a linear `P` with b-bit codes c in [0, 2^b), scales s and zero points z per group:

    P.weight_packed      int32 [out, ceil(in*b/32)]: row r's codes as one little-endian bit
                         stream, code j at bits [j*b, (j+1)*b) of the row (dense packing)
    P.weight_scale       fp32 [out, groups] (the fp16 scales widened: exact; fp32 because
                         transformers dequantizes in the scale's dtype, and fp16 products
                         would round)
    P.weight_zero_point  int32 [ceil(out*b/32), groups]: z packed the same way along dim 0
                         (asymmetric only)
    P.weight_shape       int64 [2] = (out, in)

compressed-tensors holds signed values q = c - 2^(b-1) and packs q + 2^(b-1), so the packed
bits are our unsigned codes, and W = s * (q - q_z) = s * (c - z), our formula
(models/qformat/affine.py). A symmetric grid stores no zero points: q_z = 0, i.e.
z = 2^(b-1), which is ours too.

Only 2, 4 and 8 bits are written: compressed-tensors packed 3/5/6/7-bit codes with padding
before version 0.20 and densely since, so such a file means different weights to different
readers. Palettes and AWQ's per-input scales have no form here at all (`ct_blocker`).
"""

from __future__ import annotations

from typing import Any

import torch

from models.qformat.affine import AFFINE, AffineQuantized
from models.qformat.packing import pack_bits, unpack_bits
from models.qformat.palette import PaletteQuantized

CT_FORMAT = "pack-quantized"
CT_METHOD = "compressed-tensors"  # config.json quantization_config.quant_method
CT_BITS = (2, 4, 8)
CT_SUFFIXES = (".weight_packed", ".weight_scale", ".weight_zero_point", ".weight_shape")
_WORD_BITS = 32


def pack_rows_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [rows, cols] -> int32 [rows, ceil(cols*bits/32)], each row its own
    little-endian bit stream (zero bits after the last code)."""
    rows, cols = codes.shape
    per_block = _WORD_BITS  # 32 codes of b bits fill exactly b words: rows stay word-aligned
    padded_cols = -(-cols // per_block) * per_block
    padded = torch.zeros(rows, padded_cols, dtype=torch.uint8)
    padded[:, :cols] = codes
    stream = pack_bits(padded, bits).to(torch.int64).view(rows, -1, 4)
    words = (stream << torch.tensor([0, 8, 16, 24])).sum(dim=-1)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    return words[:, : -(-cols * bits // _WORD_BITS)].contiguous()


def unpack_rows_int32(words: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of `pack_rows_int32`: int32 [rows, words] -> uint8 codes [rows, cols]."""
    if words.dtype != torch.int32 or words.ndim != 2:
        raise ValueError("packed codes must be a 2-D int32 tensor")
    rows, count = words.shape
    if count != -(-cols * bits // _WORD_BITS):
        raise ValueError(f"{count} int32 words per row cannot hold exactly {cols} "
                         f"{bits}-bit codes")
    padded_cols = -(-cols // _WORD_BITS) * _WORD_BITS
    full = torch.zeros(rows, padded_cols * bits // _WORD_BITS, dtype=torch.int64)
    full[:, :count] = words.to(torch.int64) & 0xFFFFFFFF
    stream = (full.unsqueeze(-1) >> torch.tensor([0, 8, 16, 24])) & 0xFF
    codes = unpack_bits(stream.reshape(-1).to(torch.uint8), bits, rows * padded_cols)
    return codes.view(rows, padded_cols)[:, :cols].contiguous()


def ct_blocker(q: AffineQuantized | PaletteQuantized) -> str | None:
    """Why this weight has no exact compressed-tensors form, or None if it has one."""
    if isinstance(q, PaletteQuantized):
        return "palettized weights have no transformers format"
    if q.input_scale is not None:
        return "AWQ's per-input scales have no exact compressed-tensors form"
    if q.bits not in CT_BITS:
        return (f"{q.bits}-bit codes are packed differently by different compressed-tensors "
                "versions (2, 4 and 8 bits are not)")
    return None


def ct_tensors(prefix: str, q: AffineQuantized) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one linear (see the module docstring)."""
    if ct_blocker(q) is not None:
        raise ValueError(f"{prefix}: {ct_blocker(q)}")
    out = {f"{prefix}.weight_packed": pack_rows_int32(q.codes, q.bits),
           f"{prefix}.weight_scale": q.scales.to(torch.float32).contiguous(),
           f"{prefix}.weight_shape": torch.tensor(list(q.shape), dtype=torch.int64)}
    if q.zeros is not None:
        out[f"{prefix}.weight_zero_point"] = pack_rows_int32(q.zeros.T, q.bits).T.contiguous()
    return out


def affine_from_ct(prefix: str, tensors: dict[str, torch.Tensor],
                   meta: dict[str, Any]) -> AffineQuantized:
    """The AffineQuantized that `ct_tensors` wrote, from the tensors and the layer's meta
    (models/qformat/layout.py), checked against each other."""
    out, inp = (int(n) for n in meta["shape"])
    bits, group = int(meta["bits"]), int(meta["group_size"])
    if [int(n) for n in tensors[f"{prefix}.weight_shape"].tolist()] != [out, inp]:
        raise ValueError(f"{prefix}.weight_shape disagrees with the layout {[out, inp]}")
    scales = tensors[f"{prefix}.weight_scale"]
    if not torch.equal(scales.to(torch.float16).to(scales.dtype), scales):
        raise ValueError(f"{prefix}.weight_scale holds values that are not fp16 scales")
    zeros = None
    if not meta["symmetric"]:
        zeros = unpack_rows_int32(tensors[f"{prefix}.weight_zero_point"].T.contiguous(),
                                  bits, out).T.contiguous()
    codes = unpack_rows_int32(tensors[f"{prefix}.weight_packed"], bits, inp)
    return AffineQuantized(codes=codes, scales=scales.to(torch.float16), zeros=zeros,
                           bits=bits, group_size=group)


def ct_state_dict(state: dict[str, torch.Tensor],
                  quantized: dict[str, AffineQuantized]) -> dict[str, torch.Tensor]:
    """`state` with each quantized linear's float weight replaced by its CT tensors."""
    out = {k: v for k, v in state.items()
           if not (k.endswith(".weight") and k[: -len(".weight")] in quantized)}
    for name, q in quantized.items():
        out.update(ct_tensors(name, q))
    return out


def quantized_from_ct_state(tensors: dict[str, torch.Tensor],
                            layers: dict[str, dict[str, Any]]) -> dict[str, AffineQuantized]:
    """Every quantized linear of a compressed-tensors file, from its tensors and layout."""
    out = {}
    for name, meta in layers.items():
        if meta.get("scheme") != AFFINE:
            raise ValueError(f"{name}: a {meta.get('scheme')} layer cannot be stored as "
                             "compressed-tensors")
        try:
            out[name] = affine_from_ct(name, tensors, meta)
        except KeyError as exc:
            raise ValueError(f"{name}: packed tensor or field {exc} is missing") from None
    return out


def ct_quantization_config(quantized: dict[str, AffineQuantized]) -> dict[str, Any]:
    """config.json's `quantization_config`: one config group per (bits, grid, symmetry),
    each targeting its linears by exact module name, so unquantized linears stay float."""
    groups: dict[tuple, list[str]] = {}
    keys = _scheme_keys(quantized)
    for name in sorted(quantized):
        groups.setdefault(keys[name], []).append(name)
    config_groups = {f"group_{i}": {"targets": names, "weights": _weights_args(*key),
                                    "input_activations": None, "output_activations": None,
                                    "format": CT_FORMAT}
                     for i, (key, names) in enumerate(groups.items())}
    config = {"quant_method": CT_METHOD, "format": CT_FORMAT,
              "quantization_status": "compressed", "config_groups": config_groups,
              "ignore": [], "kv_cache_scheme": None,
              # transformers then dequantizes at load time: from_pretrained gives plain
              # float linears. Its default route keeps them packed until the first forward
              # and re-creates zero points unpacked ([out, groups]), refusing the file's.
              "dequantize": True}
    return config


def set_blocker(quantized: dict[str, AffineQuantized | PaletteQuantized]) -> str | None:
    """Why this set of quantized linears cannot be written as a compressed-tensors
    checkpoint that transformers loads with exactly these weights, or None."""
    for q in quantized.values():
        reason = ct_blocker(q)
        if reason is not None:
            return reason
    if len(set(_scheme_keys(quantized).values())) > 1:
        # Dequantizing at load time (ct_quantization_config) transformers applies the first
        # config group's scheme to every layer.
        return ("linears with mixed bit widths or groups are dequantized by transformers "
                "with a single scheme")
    return None


def _scheme_keys(quantized: dict[str, AffineQuantized]) -> dict[str, tuple]:
    """Name -> (bits, group size or None for one group per output channel, symmetric).

    One group spanning a whole row is both "channel" and "group g" when g = in_features;
    it is read as the group size the other linears use (g64 on a model whose q_proj has 64
    inputs is one scheme, not two), else as per channel (whose row length varies)."""
    partial = {q.group_size for q in quantized.values() if q.group_size < q.shape[1]}

    def key(q: AffineQuantized) -> tuple[int, int | None, bool]:
        whole_row = q.group_size == q.shape[1] and q.group_size not in partial
        return q.bits, None if whole_row else q.group_size, q.zeros is None

    return {name: key(q) for name, q in quantized.items()}


def _weights_args(bits: int, group: int | None, symmetric: bool) -> dict[str, Any]:
    return {"num_bits": bits, "type": "int", "symmetric": symmetric,
            "strategy": "channel" if group is None else "group", "group_size": group,
            "dynamic": False, "actorder": None, "observer": None}
