"""`--accuracy-level auto`, the default for LLMs: MatMulNBits with int8 activations
(accuracy_level 4) when that keeps PyTorch's greedy tokens, else float compute (level 0).

MatMulNBits' accuracy_level is the precision onnxruntime computes in, not the weights'
(those stay the artifact's codes). At level 4 the activations are quantized to int8 per
block of the weight's block size (symmetric, scale = max|a| / 127) and multiplied with
the 4-bit codes in integer dot products (MLAS: AVX512-VNNI / AVX-VNNI / AVX2 kernels),
as llama.cpp multiplies Q4 weights with Q8 activations. BENCHMARKS.md (`llm-decode`)
measures it against level 0 on SmolLM2-135M in one run; there it is the faster file
with the same tokens, so it is what `auto` writes.

The cost is a few percent on the logits (about 5% of the largest logit on SmolLM2's
verification prompt, cosine 0.999), more than the 1e-3 a float file is held to, so a
level-4 file is verified at INT8_COMPUTE_RTOL unless --rtol is given. Its tokens must
still be PyTorch's, with one allowance: at a near tie (PyTorch preferred its token over
the file's by less than 0.1 in logit, i.e. gave them probabilities within ~10%), int8
rounding may pick the other token, and the continuations then part. So a level-4 file's
tokens are compared teacher-forced (PyTorch scores the file's own continuation) and
agree when every disagreement is a near tie (export.llm.near_ties); a float file must
match exactly. When they do not agree, `auto` rewrites the graph to level 0 (an
attribute per node: the weights are untouched) and verifies again. Without verification
there is no evidence either way and `auto` writes level 0.

One step sits between the two when the file mixes 8-bit MatMulNBits (an 8-bit table and
head, 6-bit codes in 8-bit storage) with narrower ones: the 8-bit nodes keep int8
compute and only the others go to float, verified the same way as int8 compute. An 8-bit
weight times int8 activations is the mildest of the roundings, and onnxruntime 1.32 has
no fast float-compute kernel for 8-bit weights: BENCHMARKS.md's `matmul-nbits-rate`
section times SmolLM2's head at 8 bits about 50 times slower at level 0 than at level 4
(the 4-bit head: about 1.6 times), enough to make a whole file ~10x slower per token.

An int8 key/value cache (`--kv-cache int8`, export.llm.kv_scales) rounds the stored keys
and values as int8 compute rounds activations, and moves the logits by a few percent as
well: such a file is held to INT8_COMPUTE_RTOL with near ties allowed at either level.
The two roundings add up: where int8 compute on top of the int8 cache changes the
tokens, `auto` falls back to float compute as above.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from export.errors import require
from export.llm.check import LlmVerification
from export.llm.near_ties import TIE_MARGIN as NEAR_TIE_MARGIN
from export.onnx.weights import matmul_nbits_bits, set_accuracy_level

INT8_COMPUTE, FLOAT_COMPUTE = 4, 0
EIGHT_BIT = 8  # MatMulNBits weights that keep int8 compute in the middle step
INT8_COMPUTE_RTOL = 0.1


def written_level(options) -> int | None:
    """The level the file is first written with."""
    if options.accuracy_level is not None:
        return options.accuracy_level
    return INT8_COMPUTE if options.verify else None


def verify_choosing_level(verify: Callable[[], LlmVerification], out: Path, options,
                          has_nbits: bool) -> LlmVerification:
    """Run `verify` on the file at `out`; under `auto`, fall back to float compute when
    int8 compute changed the greedy tokens (module docstring)."""
    check = _int8_cache_allowance(verify(), options)
    level = written_level(options)
    if not has_nbits or level != INT8_COMPUTE:
        return check
    # int8 compute changes which token wins where PyTorch itself barely chose: those
    # places count as agreement (export.llm.near_ties), any other does not
    check.allow_near_ties = True
    if options.accuracy_level is not None or check.tokens_agree:
        check.rtol = INT8_COMPUTE_RTOL
        if options.accuracy_level is not None:
            how = "given"
        elif check.tokens_match:
            how = "auto: int8 compute kept PyTorch's greedy tokens"
        else:
            how = ("auto: int8 compute kept PyTorch's choice wherever PyTorch preferred "
                   f"its token by {NEAR_TIE_MARGIN:g} or more in logit (teacher-forced; "
                   f"near ties at tokens {check.agreement.near_ties})")
        check.notes = {**check.notes, "accuracy_level": INT8_COMPUTE, "accuracy_choice": how}
        return check
    widths = nbits_widths(out)
    if EIGHT_BIT in widths and len(widths) > 1:
        rewrite_level(out, FLOAT_COMPUTE, skip_bits=EIGHT_BIT)
        mixed = _int8_cache_allowance(verify(), options)
        mixed.allow_near_ties = True
        if mixed.tokens_agree:
            mixed.rtol = INT8_COMPUTE_RTOL
            mixed.notes = {**mixed.notes,
                           "accuracy_level": {str(b): INT8_COMPUTE if b == EIGHT_BIT
                                              else FLOAT_COMPUTE for b in widths},
                           "accuracy_choice": "auto: int8 compute everywhere changed the "
                                              f"greedy tokens ({check.runtime_tokens} vs "
                                              f"PyTorch's {check.pytorch_tokens}); kept on "
                                              "the 8-bit weights only, float compute on "
                                              "the rest"}
            return mixed
    rewrite_level(out, FLOAT_COMPUTE)
    retried = _int8_cache_allowance(verify(), options)
    retried.notes = {**retried.notes, "accuracy_level": FLOAT_COMPUTE,
                     "accuracy_choice": "auto: int8 compute changed the greedy tokens "
                                        f"({check.runtime_tokens} vs PyTorch's "
                                        f"{check.pytorch_tokens}), so float compute"}
    return retried


def _int8_cache_allowance(check: LlmVerification, options) -> LlmVerification:
    """An int8-cache file's verification: INT8_COMPUTE_RTOL and near ties (module
    docstring); any other file's as it came."""
    if options.kv_cache_dtype == "int8":
        check.allow_near_ties = True
        check.rtol = INT8_COMPUTE_RTOL
        check.notes = {**check.notes, "kv_cache": "int8, per-channel static scales: held "
                       f"to rtol {INT8_COMPUTE_RTOL:g} with near ties allowed"}
    return check


def rewrite_level(out: Path, level: int, skip_bits: int | None = None) -> None:
    """Set the accuracy_level of every MatMulNBits node (but those of `skip_bits` bits)
    in the graph file at `out` (its external data file, if any, is not read or
    rewritten)."""
    onnx = require("onnx", "onnx", "ONNX export")
    model = onnx.load(os.fspath(out), load_external_data=False)
    set_accuracy_level(model.graph.node, level, skip_bits)
    onnx.save_model(model, os.fspath(out))


def nbits_widths(out: Path) -> list[int]:
    """The weight widths of the MatMulNBits nodes in the graph file at `out`, sorted."""
    onnx = require("onnx", "onnx", "ONNX export")
    model = onnx.load(os.fspath(out), load_external_data=False)
    return sorted({matmul_nbits_bits(n) for n in model.graph.node
                   if n.op_type == "MatMulNBits"})
