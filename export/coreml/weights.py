"""The artifact's packed weights as Core ML iOS 18 compile-time ops (decompressed when the
model is loaded on the device, stored compressed in the file).

    palettized  W[r, j] = lut[r // g, idx[r, j]]
                -> constexpr_lut_to_dense(indices uint{b} [out, in], lut [out/g, 1, 2^b, 1])
    affine      W[r, j] = scale[r, k] * (code[r, j] - zero[r, k]),  k = j // group
                -> constexpr_blockwise_shift_scale(data uint4|uint8 [out, in],
                   scale [out, in/group], offset [out, in/group]); 2- and 3-bit codes in
                   uint4, 6-bit codes in uint8 (the op takes 4- and 8-bit data only)
    AWQ (arXiv 2306.00978) W = dequant(codes) / s
                -> the codes as above, and the layer's input multiplied by 1/s (mul),
                   added by export.coreml.llm where the reading op is known
    pruned float weights (>= 25% zeros)
                -> constexpr_sparse_to_dense(nonzero_data [nnz], mask uint1 [out, in])

Tables and scales keep the artifact's fp16 values, so the decompressed weight equals the
weight the toolkit evaluated, bit for bit in fp16.
"""

from __future__ import annotations

import numpy as np

from models.qformat import AffineQuantized, PaletteQuantized

SPARSE_MIN_ZEROS = 0.25  # below this a mask costs more than it saves
INDEX_DTYPES = {1: "np_uint1_dtype", 2: "np_uint2_dtype", 3: "np_uint3_dtype",
                4: "np_uint4_dtype", 6: "np_uint6_dtype"}


def _dtype(bits: int):
    from coremltools.converters.mil.mil import types

    return np.uint8 if bits == 8 else getattr(types, INDEX_DTYPES[bits])


def palette_op(weight: PaletteQuantized, name: str):
    from coremltools.converters.mil import Builder as mb

    out, _ = weight.shape
    lut = weight.lut.numpy().astype(np.float16).reshape(out // weight.group_rows, 1,
                                                        1 << weight.bits, 1)
    indices = weight.indices.numpy().astype(_dtype(weight.bits))
    return mb.constexpr_lut_to_dense(indices=indices, lut=lut, name=name), (
        f"constexpr_lut_to_dense {weight.bits}-bit, {lut.shape[0]} tables")


def affine_op(weight: AffineQuantized, name: str):
    from coremltools.converters.mil import Builder as mb

    container = 4 if weight.bits <= 4 else 8
    dtype = _dtype(container)
    data = weight.codes.numpy().astype(dtype)
    offset = weight.zero_points().numpy().astype(dtype)
    scale = weight.scales.numpy().astype(np.float16)
    how = f"constexpr_blockwise_shift_scale {weight.bits}-bit, block {weight.group_size}"
    if container != weight.bits:
        how += f" (codes stored in {container} bits)"
    if weight.input_scale is not None:
        how += " + AWQ input scaling"
    return mb.constexpr_blockwise_shift_scale(data=data, scale=scale, offset=offset,
                                              name=name), how


def sparse_op(dense: np.ndarray, name: str):
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    mask = dense != 0
    values = dense[mask].astype(np.float16)
    return mb.constexpr_sparse_to_dense(nonzero_data=values,
                                        mask=mask.astype(types.np_uint1_dtype), name=name), (
        f"constexpr_sparse_to_dense ({1 - mask.mean():.0%} zeros)")


def carried_op(weight, dense: np.ndarray, name: str):
    """(op output, description) for one layer, or (None, why) when Core ML cannot carry it."""
    if isinstance(weight, PaletteQuantized):
        return palette_op(weight, name)
    if isinstance(weight, AffineQuantized):
        return affine_op(weight, name)
    if weight is None and (dense == 0).mean() >= SPARSE_MIN_ZEROS:
        return sparse_op(dense, name)
    return None, None
