"""Compressed linear weights as ONNX nodes, read from the artifact's packed form.

    affine, 2/4/8 bits, power-of-two groups >= 16:  com.microsoft MatMulNBits
        Y = A @ W^T,  W[n, k] = scale[n, g] * (q[n, k] - zero[n, g]),  g = k // block
        B [N, K/block, block*bits/8] uint8, codes LSB-first; zero points packed the same
        way per row (absent = 2^(bits-1), our symmetric grid)
    affine, 3 or 6 bits: the same in the next wider container (3 in 4 bits, 6 in 8; the
        codes fit, the report says so): onnxruntime 1.32's kernel refuses any width but
        2, 4 and 8 ("Only 2b, 4b and 8b quantization is supported for MatMulNBits")
    affine, groups of g inputs (per channel: g = in): MatMulNBits with the largest
        power-of-two block b >= 16 dividing g, each group's scale and zero repeated g/b times
        (DequantizeLinear -> MatMul is not used: onnxruntime fuses it into a kernel that
        quantizes the activations to 8 bits, which changes the numbers)
    palettized:         Gather(lut, Cast(indices)) -> MatMul, indices as UINT4 (<= 4 bits)
        or UINT8, tables as stored; onnxruntime folds the constant subgraph at load time
    AWQ input scale s:  A / s before the product (W = dequant / s)

Every builder returns the nodes, the initializers and a one-line description of how the
layer was carried, which goes into the export report.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from models.qformat import AffineQuantized, PaletteQuantized
from models.qformat.packing import pack_bits

MATMUL_NBITS_BITS = (2, 4, 8)


def matmul_nbits_container(bits: int) -> int:
    """The narrowest width MatMulNBits runs that holds `bits`-bit codes."""
    return min(b for b in MATMUL_NBITS_BITS if b >= bits)


@dataclasses.dataclass
class OnnxWeight:
    nodes: list
    initializers: list
    carried_as: str  # e.g. "MatMulNBits 4-bit, block 64"


def _tensor(name: str, array: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _pack_rows(values: torch.Tensor, bits: int) -> np.ndarray:
    """Each row packed on its own (LSB-first), rows padded to whole bytes."""
    return np.stack([pack_bits(row, bits).numpy() for row in values])


def _input_scaled(weight: AffineQuantized, a: str, prefix: str) -> tuple[str, list, list]:
    if weight.input_scale is None:
        return a, [], []
    from onnx import helper

    scale = weight.input_scale.float().numpy()
    return (f"{prefix}.scaled_input",
            [helper.make_node("Div", [a, f"{prefix}.input_scale"], [f"{prefix}.scaled_input"])],
            [_tensor(f"{prefix}.input_scale", scale)])


def matmul_nbits_block(group_size: int) -> int | None:
    """The largest power of two >= 16 dividing the group (MatMulNBits' block sizes), or
    None. A group of g inputs is g / block blocks that repeat the group's scale and zero."""
    block = group_size & -group_size  # the largest power of two dividing it
    return block if block >= 16 else None


def matmul_nbits(weight: AffineQuantized, a: str, y: str, prefix: str) -> OnnxWeight:
    """`weight` as com.microsoft MatMulNBits (see the module docstring)."""
    from onnx import helper

    out, inp = weight.shape
    bits = matmul_nbits_container(weight.bits)
    block = matmul_nbits_block(weight.group_size)
    if block is None:
        raise ValueError(f"group size {weight.group_size} has no power-of-two block >= 16")
    repeat = weight.group_size // block
    packed = _pack_rows(weight.codes, bits).reshape(out, inp // block, block * bits // 8)
    a, nodes, inits = _input_scaled(weight, a, prefix)
    scales = weight.scales.float().repeat_interleave(repeat, dim=1)
    inits += [_tensor(f"{prefix}.B", packed),
              _tensor(f"{prefix}.scales", scales.numpy().reshape(-1))]
    inputs = [a, f"{prefix}.B", f"{prefix}.scales"]
    if weight.zeros is not None or bits != weight.bits:  # the default zero is 2^(bits-1)
        zeros = weight.zero_points().repeat_interleave(repeat, dim=1)
        inits.append(_tensor(f"{prefix}.zero_points", _pack_rows(zeros, bits).reshape(-1)))
        inputs.append(f"{prefix}.zero_points")
    nodes.append(helper.make_node("MatMulNBits", inputs, [y], domain="com.microsoft",
                                  K=inp, N=out, bits=bits, block_size=block,
                                  name=f"{prefix}.MatMulNBits"))
    how = f"MatMulNBits {bits}-bit, block {block}"
    if repeat > 1:
        how += f" (each group of {weight.group_size} as {repeat} blocks)"
    if bits != weight.bits:
        how += (f" (the {weight.bits}-bit codes stored in {bits} bits: no "
                f"{weight.bits}-bit kernel)")
    return OnnxWeight(nodes, inits, how)


GATHER_BITS = (4, 8)


def gather_block_quantized(weight: AffineQuantized, ids: str, y: str,
                           prefix: str) -> OnnxWeight:
    """Rows `ids` of an affine-quantized table [rows, width] as com.microsoft
    GatherBlockQuantized (gather_axis 0, quantize_axis 1):

        y[t, j] = scale[ids[t], j // block] * (code[ids[t], j] - zero[ids[t], j // block])

    data [rows, width * bits / 8] uint8 (4-bit: two codes a byte, low nibble first),
    scales [rows, width / block], zero points packed the same way per row. 2/3-bit codes
    are stored in 4 bits, as for MatMulNBits."""
    from onnx import helper

    rows, width = weight.shape
    bits = weight.bits if weight.bits in GATHER_BITS else 4
    block = matmul_nbits_block(weight.group_size)
    if block is None or weight.input_scale is not None:
        raise ValueError(f"group size {weight.group_size} has no power-of-two block >= 16 "
                         "(or the table has AWQ input scales)")
    repeat = weight.group_size // block
    scales = weight.scales.float().repeat_interleave(repeat, dim=1)
    zeros = weight.zero_points().repeat_interleave(repeat, dim=1)
    inits = [_tensor(f"{prefix}.quantized", _pack_rows(weight.codes, bits)),
             _tensor(f"{prefix}.scales", scales.numpy()),
             _tensor(f"{prefix}.zero_points", _pack_rows(zeros, bits))]
    node = helper.make_node("GatherBlockQuantized",
                            [f"{prefix}.quantized", ids, f"{prefix}.scales",
                             f"{prefix}.zero_points"], [y], domain="com.microsoft",
                            block_size=block, gather_axis=0, quantize_axis=1, bits=bits,
                            name=f"{prefix}.GatherBlockQuantized")
    return OnnxWeight([node], inits, f"GatherBlockQuantized {bits}-bit, block {block}")


def palette_gather(weight: PaletteQuantized, a: str, y: str, prefix: str) -> OnnxWeight:
    """W^T[k, n] = lut_flat[(n // g) * 2^b + index[n, k]] as Gather -> MatMul."""
    from onnx import TensorProto, helper

    out, inp = weight.shape
    entries = 1 << weight.bits
    offsets = (torch.arange(out) // weight.group_rows * entries).to(torch.int32)
    indices_t = weight.indices.t().contiguous()
    if weight.bits <= 4:
        index_init = helper.make_tensor(f"{prefix}.indices_t", TensorProto.UINT4,
                                        list(indices_t.shape), indices_t.reshape(-1).tolist())
    else:
        index_init = _tensor(f"{prefix}.indices_t", indices_t.numpy())
    inits = [index_init, _tensor(f"{prefix}.lut", weight.lut.float().numpy().reshape(-1)),
             _tensor(f"{prefix}.row_offset", offsets.numpy().reshape(1, out))]
    nodes = [helper.make_node("Cast", [f"{prefix}.indices_t"], [f"{prefix}.index32"],
                              to=TensorProto.INT32),
             helper.make_node("Add", [f"{prefix}.index32", f"{prefix}.row_offset"],
                              [f"{prefix}.entry"]),
             helper.make_node("Gather", [f"{prefix}.lut", f"{prefix}.entry"],
                              [f"{prefix}.weight_t"]),
             helper.make_node("MatMul", [a, f"{prefix}.weight_t"], [y])]
    container = 4 if weight.bits <= 4 else 8
    return OnnxWeight(nodes, inits, f"palette {weight.bits}-bit via Gather (indices stored "
                                    f"in {container} bits, {weight.lut.shape[0]} tables)")


ACCURACY_LEVELS = (0, 1, 2, 3, 4)


def set_accuracy_level(nodes, level: int | None, skip_bits: int | None = None) -> None:
    """MatMulNBits' `accuracy_level` on every such node (but those of `skip_bits` bits):
    the precision onnxruntime computes in (0: its default, float activations; 4:
    activations quantized to int8 per block and integer dot products, the fast CPU
    kernels; 1-3: fp32/fp16/bf16). None leaves it."""
    from onnx import helper

    if level is None:
        return
    for node in nodes:
        if node.op_type == "MatMulNBits" and (skip_bits is None
                                              or matmul_nbits_bits(node) != skip_bits):
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("accuracy_level", level)])


def matmul_nbits_bits(node) -> int:
    """The weight width of a MatMulNBits node (its `bits` attribute; 4 when absent)."""
    return next((a.i for a in node.attribute if a.name == "bits"), 4)


def compressed_weight(weight, a: str, y: str, prefix: str) -> OnnxWeight | None:
    """The ONNX form of one packed weight, or None when only a float weight can carry it."""
    if isinstance(weight, PaletteQuantized):
        return palette_gather(weight, a, y, prefix)
    if isinstance(weight, AffineQuantized) and matmul_nbits_block(weight.group_size):
        return matmul_nbits(weight, a, y, prefix)
    return None
