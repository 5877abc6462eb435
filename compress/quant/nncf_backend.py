"""`backend="nncf"`: run NNCF's `nncf.compress_weights` on the same model and calibration
data as the toolkit's own methods, and hand back the toolkit's packed form, so both can be
compared side by side (same artifact, same evaluation).

    toolkit method -> NNCF 3.4 PyTorch backend
    rtn  -> data-free compress_weights (min/max grid per group)
    awq  -> awq=True + scale_estimation=True (AWQ, arXiv 2306.00978, then NNCF's L2 scale search)
    gptq -> not available: NNCF's PyTorch backend rejects gptq=True (OpenVINO only)

NNCF keeps each compressed weight as packed integers in the linear's own `weight`
parameter plus a decompressor hook (fp16 scales, packed zero points). The integers, scales
and zero points are read back *as stored* into `AffineQuantized`, checked against NNCF's
own decompressed weight, and the model is returned as a plain Hugging Face module whose
block linears hold `AffineQuantized.dequantize()`. Two grid facts of NNCF show in the
result: its codes are rounded with the fp32 scale and only the scale is stored in fp16,
and its symmetric scale is signed (the larger-magnitude end of a group maps to -2^(b-1)),
so symmetric NNCF layers may have negative scales. NNCF's AWQ folds each per-channel scale
into the linear before (down_proj's into up_proj, in Llama-style MLPs), so no input scale
is stored: the up_proj weights NNCF quantizes are already divided by it.
"""

from __future__ import annotations

import logging
import os
import time

import torch
from torch import nn

from compress.errors import CompressError
from compress.quant.base import IntQuantConfig, QuantConfig
from compress.quant.grid import check_grid
from compress.quant.report import QuantReport
from compress.sweep import Progress, dtype_name
from models.adapter import decoder_layout
from models.qformat import AffineQuantized

# Toolkit method -> the compress_weights options that do the same job in NNCF.
NNCF_ALGORITHMS: dict[str, dict[str, bool]] = {
    "rtn": {},
    "awq": {"awq": True, "scale_estimation": True},
}
_UNSUPPORTED_METHODS = {
    "gptq": "NNCF 3.4's PyTorch backend has no GPTQ (compress_weights(gptq=True) is "
            "OpenVINO-only): use --backend toolkit for gptq, or rtn/awq with --backend nncf",
}


def quantize_with_nncf(model: nn.Module, config: QuantConfig, calib: torch.Tensor | None, *,
                       device: str | torch.device = "cpu",
                       forward_dtype: torch.dtype = torch.float32, batch_size: int = 4,
                       progress: Progress | None = None) -> QuantReport:
    """Compress the decoder blocks' linears of `model` in place with NNCF.

    `calib` is [N, L] token ids; each row is one NNCF calibration sample, because NNCF's
    AWQ and scale estimation average each sample's activations over its tokens and treat
    samples separately: batching rows would pool them, so `batch_size` is not used.
    NNCF runs the model as it is (no autocast), so `forward_dtype` is not applied either;
    the report records the dtype the forward really ran in."""
    del forward_dtype, batch_size  # see the docstring
    options = nncf_options(config)
    nncf = _import_nncf()
    model.to(device)
    layout = decoder_layout(model)
    linears = {name: linear for index in range(len(layout.blocks))
               for name, linear in layout.block_linears(index).items()}
    kept = {name: linear for name, linear in linears.items() if not config.is_ignored(name)}
    for name, linear in kept.items():
        try:
            check_grid(config.bits, config.group_size, linear.in_features)
        except CompressError as exc:
            raise CompressError(f"{name}: {exc}") from None
    data_aware = bool(NNCF_ALGORITHMS[config.method])
    samples = _calibration_rows(calib, data_aware)
    report = QuantReport(config.method, {}, [n for n in linears if n not in kept],
                         int(samples.numel()) if data_aware else 0,
                         dtype_name(layout.embeddings.weight.dtype), {}, backend="nncf")
    if not kept:
        return report
    if progress:
        progress("quantize", 0, len(layout.blocks))
    before = _ModelState.capture(model, kept)
    start = time.perf_counter()
    try:
        _run_compress_weights(nncf, model, kept, samples, options, data_aware, device)
        report.seconds["nncf"] = time.perf_counter() - start
        start = time.perf_counter()
        report.quantized = read_back(model, kept, before, config.bits)
        report.seconds["convert"] = time.perf_counter() - start
    finally:
        _unwrap(model)
        before.restore_flags(model)
    before.check_keys(model)
    if progress:
        progress("quantize", len(layout.blocks), len(layout.blocks))
    return report


def nncf_options(config: QuantConfig) -> dict:
    """The compress_weights mode (a `CompressWeightsMode` member name), group size and
    algorithm flags for `config`; checked before NNCF is imported, so a request NNCF cannot
    serve fails at once with a message that names the fix."""
    if not isinstance(config, IntQuantConfig):
        raise CompressError(f"--backend nncf supports integer methods (rtn, awq), not "
                            f"{config.method}: use --backend toolkit")
    if config.method in _UNSUPPORTED_METHODS:
        raise CompressError(_UNSUPPORTED_METHODS[config.method])
    if config.method not in NNCF_ALGORITHMS:
        raise CompressError(f"--backend nncf has no counterpart for {config.method}: use one of "
                            f"{', '.join(NNCF_ALGORITHMS)} or --backend toolkit")
    if config.bits not in (4, 8):
        raise CompressError(f"NNCF supports 4 and 8 bits: bits={config.bits} needs "
                            "--backend toolkit")
    if config.bits == 8:
        if config.group_size is not None:
            raise CompressError(f"NNCF's INT8 modes are per output channel only: group_size "
                                f"{config.group_size} needs group_size None (per channel), "
                                "bits=4, or --backend toolkit")
        if NNCF_ALGORITHMS[config.method]:
            raise CompressError(f"NNCF runs {config.method} at 4 bits only (its INT8 modes "
                                "are data-free): use bits=4 or method rtn")
        mode = "INT8_SYM" if config.symmetric else "INT8_ASYM"
        return {"mode": mode, "group_size": -1, "ratio": 1.0}
    mode = "INT4_SYM" if config.symmetric else "INT4_ASYM"
    # all_layers: every layer NNCF sees gets 4 bits, none falls back to its INT8 backup
    # (embeddings and the head are kept out by the ignored scope, not by this flag).
    return {"mode": mode, "group_size": config.group_size or -1, "ratio": 1.0,
            "all_layers": True, **NNCF_ALGORITHMS[config.method]}


def _import_nncf():
    """NNCF, with its usage telemetry off: NNCF sends events through openvino-telemetry
    (opt-out, when that package is installed) unless NNCF_CI is set; a user running the
    toolkit did not agree to that. Its INFO log (a bit-width table per call) goes quiet."""
    os.environ.setdefault("NNCF_CI", "1")
    try:
        import nncf
    except ImportError as exc:
        raise CompressError(f"--backend nncf needs NNCF: pip install nncf==3.4.0 ({exc})") from None
    nncf.set_log_level(logging.WARNING)
    return nncf


def _calibration_rows(calib: torch.Tensor | None, data_aware: bool) -> torch.Tensor:
    """[N, L] token ids. Data-free RTN still needs one input so that NNCF can trace the
    graph; without calibration a short all-zero sequence serves (its values do not matter)."""
    if calib is None or calib.numel() == 0:
        if data_aware:
            raise CompressError("this method needs calibration token ids of shape [N, L]")
        return torch.zeros(1, 8, dtype=torch.long)
    if calib.ndim != 2:
        raise CompressError(f"calibration token ids must have shape [N, L], got "
                            f"{tuple(calib.shape)}")
    return calib.long()


def _run_compress_weights(nncf, model: nn.Module, kept: dict[str, nn.Linear],
                          samples: torch.Tensor, options: dict, data_aware: bool,
                          device) -> None:
    """Trace `model` and run compress_weights with only `kept` weights in scope."""
    from nncf.torch.model_creation import wrap_model

    rows = [samples[i:i + 1] for i in range(samples.shape[0])]
    dataset = nncf.Dataset(rows, lambda row: {"input_ids": row.to(device), "use_cache": False})
    example = next(iter(dataset.get_inference_data()))
    wrapped = wrap_model(model, example_input=example, trace_parameters=True)
    scope = _ignored_scope(nncf, wrapped.get_graph(), {f"{name}.weight" for name in kept})
    extra = {"dataset": dataset, "subset_size": len(rows)} if data_aware else {}
    mode = getattr(nncf.CompressWeightsMode, options["mode"])
    try:
        nncf.compress_weights(wrapped, ignored_scope=scope, **{**options, "mode": mode}, **extra)
    except (nncf.ValidationError, nncf.ParameterNotSupportedError, nncf.InvalidGroupSizeError,
            nncf.UnsupportedModelError) as exc:
        raise CompressError(f"NNCF rejected the request: {exc}") from None


def _ignored_scope(nncf, graph, kept_weights: set[str]):
    """Every graph node with a weight outside the kept block linears: embeddings, the head
    (SmolLM2 ties it to the embeddings: one weight, two nodes) and `config.ignore`d ones.
    Named by node, because NNCF's node names ("model/mlp/up_proj/linear/1") do not carry
    the module path that the user's regexes are written against."""
    from nncf.quantization.algorithms.weight_compression.torch_backend import (
        PTWeightCompressionAlgoBackend as Backend,
    )

    names = []
    for node in graph.get_all_nodes():
        if not Backend.is_node_with_weights(node, graph):
            continue
        weights = {name for name, _ in Backend.get_weight_names_and_port_ids(node, graph)}
        if not weights <= kept_weights:
            names.append(node.node_name)
    return nncf.IgnoredScope(names=names)


class _ModelState:
    """What NNCF changes besides the weights, and what the conversion checks against."""

    def __init__(self, keys, requires_grad, training, dtypes, zeros):
        self.keys, self.requires_grad, self.training = keys, requires_grad, training
        self.dtypes, self.zeros = dtypes, zeros

    @classmethod
    def capture(cls, model: nn.Module, kept: dict[str, nn.Linear]) -> _ModelState:
        # Zero masks only for layers that have zeros (pruned ones): checked like the engine.
        zeros = {}
        for name, linear in kept.items():
            mask = linear.weight.data == 0
            if bool(mask.any()):
                zeros[name] = mask
        return cls(list(model.state_dict()),
                   {name: p.requires_grad for name, p in model.named_parameters()},
                   model.training, {name: lin.weight.dtype for name, lin in kept.items()}, zeros)

    def restore_flags(self, model: nn.Module) -> None:
        """compress_weights switches gradients off and the model to eval mode."""
        for name, param in model.named_parameters():
            param.requires_grad_(self.requires_grad.get(name, False)
                                 and param.is_floating_point())
        model.train(self.training)

    def check_keys(self, model: nn.Module) -> None:
        if list(model.state_dict()) != self.keys:
            raise CompressError("the NNCF backend changed the model's state_dict keys "
                                "(an NNCF wrapper was left behind): please report it")


def read_back(model: nn.Module, kept: dict[str, nn.Linear], before: _ModelState,
              bits: int) -> dict[str, AffineQuantized]:
    """Convert each decompressor hook to AffineQuantized, check it against NNCF's own
    decompressed weight, and put the dequantized float weight back in the linear."""
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseWeightsDecompressor

    quantized: dict[str, AffineQuantized] = {}
    for hook_name, hook in get_hook_storage(model).named_hooks():
        _, op_name, _ = decode_hook_name(hook_name)
        name = op_name.removesuffix(".weight")
        if name not in kept or not isinstance(hook, BaseWeightsDecompressor):
            raise CompressError(f"NNCF added {type(hook).__name__} at {op_name}, which a "
                                "plain model cannot hold: add that layer to --ignore")
        weight = kept[name].weight
        with torch.no_grad():
            nncf_weight = hook(weight.data)
            quantized[name] = decompressor_to_affine(hook, weight.data, tuple(nncf_weight.shape))
            dequantized = check_exact(name, quantized[name], nncf_weight, bits)
            if name in before.zeros and bool((before.zeros[name] & (dequantized != 0)).any()):
                raise CompressError(f"{name}: NNCF turned pruned zeros into non-zeros")
            weight.data = dequantized.to(before.dtypes[name])
    missing = sorted(set(kept) - set(quantized))
    if missing:
        raise CompressError(f"NNCF left {len(missing)} layer(s) uncompressed, e.g. {missing[0]}")
    return quantized


def decompressor_to_affine(hook: nn.Module, packed: torch.Tensor,
                           shape: tuple[int, int]) -> AffineQuantized:
    """NNCF's stored integers, scales and zero points, unchanged, as AffineQuantized.

    Signed symmetric codes q in [-2^(b-1), 2^(b-1)) with w = scale * q become
    codes q + 2^(b-1) with the implicit zero point 2^(b-1); asymmetric codes and zero
    points are unsigned already. NNCF's scale [out, n_groups, 1] (grouped) or [out, 1]
    (per channel) becomes [out, n_groups]."""
    from nncf.torch.quantization import layers
    from nncf.torch.quantization.quantize_functions import unpack_int4, unpack_uint4

    out, inp = shape
    scales = hook._scale.reshape(out, -1).to(torch.float16)
    groups = scales.shape[1]
    if isinstance(hook, layers.INT4AsymmetricWeightsDecompressor):
        bits, codes = 4, unpack_uint4(packed)
        zeros = unpack_uint4(hook._zero_point).reshape(out, groups)
    elif isinstance(hook, layers.INT4SymmetricWeightsDecompressor):
        bits, codes, zeros = 4, (unpack_int4(packed).to(torch.int16) + 8), None
    elif isinstance(hook, layers.INT8AsymmetricWeightsDecompressor):
        bits, codes, zeros = 8, packed, hook._zero_point.reshape(out, groups)
    elif isinstance(hook, layers.INT8SymmetricWeightsDecompressor):
        bits, codes, zeros = 8, packed.to(torch.int16) + 128, None
    else:
        raise CompressError(f"NNCF used {type(hook).__name__}, which has no affine form")
    return AffineQuantized(codes=codes.reshape(out, inp).to(torch.uint8), scales=scales,
                           zeros=None if zeros is None else zeros.to(torch.uint8), bits=bits,
                           group_size=inp // groups)


def check_exact(name: str, quantized: AffineQuantized, nncf_weight: torch.Tensor,
                bits: int) -> torch.Tensor:
    """The dequantized fp32 weight, after checking it is NNCF's weight.

    NNCF multiplies (q - zero) by the fp16 scale *in fp16*; the toolkit's format multiplies
    in fp32. (q - zero) is a small integer and the fp32 product of it with an fp16 scale is
    exact, so NNCF's weight is exactly the toolkit's weight rounded to fp16: that is
    checked bit for bit. The two differ by at most half an fp16 ulp (2^-11 relative)."""
    if quantized.bits != bits:
        raise CompressError(f"{name}: NNCF stored {quantized.bits}-bit codes, {bits} asked")
    dequantized = quantized.dequantize()
    rounded = dequantized.to(torch.float16).to(nncf_weight.dtype)
    if not torch.equal(rounded, nncf_weight):
        diff = (dequantized - nncf_weight.float()).abs().max().item()
        raise CompressError(f"{name}: the packed form does not reproduce NNCF's weight "
                            f"(max difference {diff:.3g}): please report it")
    return dequantized


def _unwrap(model: nn.Module) -> None:
    """Remove what NNCF's wrap_model added: the forward wrapper, the data-parallel hook
    and the hook storage module (its buffers would add state_dict keys)."""
    from nncf.torch.function_hook.wrapper import ATR_HOOK_STORAGE

    model.__dict__.pop("forward", None)
    model.__dict__.pop("_replicate_for_data_parallel", None)
    model._modules.pop(ATR_HOOK_STORAGE, None)
