"""What a hand-written decoder graph (export.onnx.decoder_graph) needs from a Llama-family
model: its shape, rotary tables, and each tensor on request, in float32 or in the
artifact's packed form. Two sources give it:

    ModuleDecoderWeights   a model held in memory (models.LoadedModel: module + packed dict,
                           + the LoRA adapters attached to its linears)
    LazyDecoderWeights     a lazily opened checkpoint, one tensor read at a time
                           (export.llm.lazy_weights)

Both run the in-memory exporter's checks (export.llm.export_decoder), so every path
refuses the same models with the same words.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from export.errors import ExportError
from export.llm.decoder import SUPPORTED_ACTIVATIONS, DecoderShape
from export.llm.export_decoder import _check_blocks, _decoder_shape, _rotary_module
from export.llm.moe_mlp import is_moe_mlp
from export.llm.table_quant import QuantizedTables, quantize_rows
from models.adapter import DecoderLayout
from models.qformat import AffineQuantized
from models.qformat.lora import adapters_of

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass
class LinearWeight:
    """One linear of the model: `packed` (models.qformat) when the artifact stores it
    packed, else `weight` [out, in] in float32; `bias` [out] or None."""

    name: str  # the source module's name, e.g. "model.layers.3.mlp.up_proj"
    weight: torch.Tensor | None
    packed: object | None
    bias: torch.Tensor | None
    # A LoRA adapter on it (models/qformat/lora.py): (A [r, in], B [out, r], scale s) in
    # float32, y += s B (A x); None when it has none.
    lora: tuple[torch.Tensor, torch.Tensor, float] | None = None


class DecoderWeights:
    """The shared part: checks, shape, rotary tables and names, from the module (real or
    with meta parameters) and its config. Subclasses read tensors."""

    def __init__(self, module: nn.Module, layout: DecoderLayout, config,
                 max_context: int) -> None:
        if layout.head is None or layout.norm is None:
            raise ExportError("the model has no final norm or LM head: the LLM exporter "
                              "supports causal Llama-style decoders only")
        if is_moe_mlp(layout.blocks[0].mlp):
            raise ExportError("mixture-of-experts models are exported whole, from memory: "
                              "pass --engine memory and no --chunks")
        _check_blocks(layout.blocks, config)
        self.activation = getattr(config, "hidden_act", "silu")
        if self.activation not in SUPPORTED_ACTIVATIONS:
            raise ExportError(f"activation {self.activation!r} in the MLP is not supported by "
                              f"the LLM exporter: supported are "
                              f"{', '.join(SUPPORTED_ACTIVATIONS)}")
        self.module, self.layout, self.config = module, layout, config
        self.shape: DecoderShape = _decoder_shape(config, max_context)
        self.eps = float(getattr(config, "rms_norm_eps", 1e-6))
        rotary = _rotary_module(module)
        self.inv_freq = rotary.inv_freq.detach().float().clone()
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self._module_names = {id(m): n for n, m in module.named_modules()}
        self.head_module = self.module_name(layout.head)

    # --- names -----------------------------------------------------------------------------

    def module_name(self, module: nn.Module) -> str:
        return self._module_names[id(module)]

    @property
    def n_blocks(self) -> int:
        return len(self.layout.blocks)

    def block_prefix(self, index: int) -> str:
        return f"{self.layout.blocks_name}.{index}"

    def block_linear_names(self, index: int) -> dict[str, str]:
        """Short name ("q_proj", ..., "down_proj") -> module name in block `index`."""
        prefix = self.block_prefix(index)
        linears = {name.rsplit(".", 1)[-1]: f"{prefix}.{name}"
                   for name, module in self.layout.blocks[index].named_modules()
                   if isinstance(module, nn.Linear)}
        missing = [n for n in ATTENTION + MLP if n not in linears]
        if missing:
            raise ExportError(f"block {index} has no {missing[0]}: the LLM exporter supports "
                              "Llama-style decoder blocks only")
        return linears

    def parameter_count(self) -> int:
        return sum(param.numel() for param in self.module.parameters())

    # --- export-time quantization of the table and head (export.llm.table_quant) ----------

    embedding_packed: AffineQuantized | None = None
    head_packed: AffineQuantized | None = None

    def quantize_tables(self, quantizer: Callable) -> QuantizedTables:
        """Quantize the embedding table (and an untied float head) with `quantizer`;
        the graph writer then carries them packed. Returns what the reference swaps in."""
        self.embedding_packed = quantize_rows(self.embedding_blocks(), quantizer)
        tables = {self.embedding_name: self.embedding_packed}
        if not self.tied:
            head = self.linear(self.head_module)
            if head.packed is None:  # a head the artifact quantized is carried as it is
                self.head_packed = quantizer(head.weight)
                tables[self.head_weight_name] = self.head_packed
        return QuantizedTables(tables)

    # --- tensors (subclasses) --------------------------------------------------------------

    embedding_name: str
    head_weight_name: str
    norm_name: str
    tied: bool  # the head is the embedding table

    def float32(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def linear(self, module_name: str) -> LinearWeight:
        raise NotImplementedError

    def quantized_layers(self) -> dict[str, object]:
        """Packed linear -> its packed weight or layout entry; empty for float weights."""
        raise NotImplementedError

    def embedding_shape(self) -> tuple[int, int]:
        return tuple(self.layout.embeddings.weight.shape)

    def embedding_blocks(self) -> Iterator[np.ndarray]:
        """The embedding table in float32, in consecutive row blocks."""
        yield self.float32(self.embedding_name).numpy()

    def block_norms(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        block = self.block_prefix(index)
        return (self.float32(f"{block}.input_layernorm.weight"),
                self.float32(f"{block}.post_attention_layernorm.weight"))


class ModuleDecoderWeights(DecoderWeights):
    """A model held in memory: its parameters, and `quantized` (module name -> packed
    weight) for the linears the artifact stores packed."""

    def __init__(self, module: nn.Module, max_context: int,
                 quantized: dict[str, object] | None = None) -> None:
        from models.adapter import decoder_layout

        super().__init__(module, decoder_layout(module), module.config, max_context)
        self._quantized = dict(quantized or {})
        self._params = dict(module.named_parameters(remove_duplicate=False))
        self.embedding_name = self.module_name(self.layout.embeddings) + ".weight"
        self.head_weight_name = self.head_module + ".weight"
        self.norm_name = self.module_name(self.layout.norm) + ".weight"
        self.tied = self.layout.head.weight is self.layout.embeddings.weight
        self._lora = adapters_of(module)

    def float32(self, name: str) -> torch.Tensor:
        return self._params[name].detach().to(torch.float32)

    def quantized_layers(self) -> dict[str, object]:
        return dict(self._quantized)

    def linear(self, module_name: str) -> LinearWeight:
        bias = self._params.get(f"{module_name}.bias")
        bias = None if bias is None else bias.detach().to(torch.float32)
        adapter = self._lora.get(module_name)
        lora = None if adapter is None else (adapter.lora_A.detach().float(),
                                             adapter.lora_B.detach().float(), adapter.scale)
        if module_name in self._quantized:
            return LinearWeight(module_name, None, self._quantized[module_name], bias, lora)
        return LinearWeight(module_name, self.float32(f"{module_name}.weight"), None, bias,
                            lora)

    def float32_bytes(self) -> int:
        return 4 * self.parameter_count()
