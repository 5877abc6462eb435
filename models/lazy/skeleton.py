"""A decoder LM whose parameters cost no memory until a part of it is needed.

`StreamingDecoder(source, config)` builds the transformers module for `config` with every
parameter on the meta device (shape and dtype, no storage) while buffers are computed for
real on the CPU: the rotary embedding's `inv_freq` is derived from the config at
construction and is never stored in checkpoints, so it must not be lost. A part of the
model (the embeddings, one decoder block, the final norm and head) is materialised from
the lazy tensor source when a caller enters `materialized(module)`, in float32 exactly as
`from_pretrained(dtype=float32)` would convert it, and returned to the meta device when
the caller leaves, so the resident size is one part at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from models.adapter import DecoderLayout, decoder_layout
from models.errors import ModelError
from models.lazy.source import TensorSource

META = torch.device("meta")


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """While active, every parameter a module registers is replaced by a meta tensor of
    the same shape; buffers stay where they were made (real, on the CPU). Initialisers
    that run after registration act on meta tensors and cost nothing."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device != META:
            param = nn.Parameter(param.detach().to(META), requires_grad=False)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def build_skeleton(config) -> nn.Module:
    """The causal LM of `config` with meta parameters and real buffers, in eval mode."""
    from transformers import AutoModelForCausalLM

    with parameters_on_meta():
        module = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    module.eval()
    module.requires_grad_(False)
    return module


class StreamingDecoder:
    """A decoder skeleton plus the source its parameters are read from on demand."""

    def __init__(self, source: TensorSource, config, *,
                 compute_dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        self.source = source
        self.config = config
        self.compute_dtype = compute_dtype
        self.device = torch.device(device)
        self.model = build_skeleton(config)
        self.layout: DecoderLayout = decoder_layout(self.model)
        self._names = {id(m): n for n, m in self.model.named_modules()}
        self._infos = source.infos()
        self._tied = bool(getattr(config, "tie_word_embeddings", False))
        self._check_every_parameter_stored()
        self.bytes_read = 0  # stored bytes read from the source so far (for benchmarks)

    @property
    def n_blocks(self) -> int:
        return len(self.layout.blocks)

    def block_prefix(self, index: int) -> str:
        return f"{self.layout.blocks_name}.{index}"

    def module_name(self, module: nn.Module) -> str:
        """The qualified name of `module` inside the model ("" for the model itself)."""
        return self._names[id(module)]

    def parameter_names(self, module: nn.Module) -> list[str]:
        """Qualified names of the parameters of `module` as stored in the checkpoint."""
        prefix = self._names[id(module)]
        return [self.stored_name(f"{prefix}.{name}" if prefix else name)
                for name, _ in module.named_parameters()]

    def stored_name(self, name: str) -> str:
        """The checkpoint tensor that holds parameter `name` (a tied head is stored as the
        input embeddings)."""
        if name in self._infos:
            return name
        if self._tied and self._is_head(name):
            embeddings = self._names[id(self.layout.embeddings)] + ".weight"
            if embeddings in self._infos:
                return embeddings
        raise ModelError(f"the checkpoint holds no tensor {name!r} that the config needs: "
                         "re-download or re-save the model")

    def _is_head(self, name: str) -> bool:
        head = self.layout.head
        return head is not None and name == self._names[id(head)] + ".weight"

    def _check_every_parameter_stored(self) -> None:
        for name, param in self.model.named_parameters(remove_duplicate=False):
            stored = self._infos.get(self.stored_name(name))
            if stored is not None and tuple(stored.shape) != tuple(param.shape):
                raise ModelError(
                    f"{stored.file}: tensor {stored.name} has shape {list(stored.shape)} but "
                    f"config.json needs {list(param.shape)}: the weights and config.json "
                    "belong to different models; re-download the model")

    def load(self, module: nn.Module) -> None:
        """Read every parameter of `module` from the source, in the compute dtype, onto
        the device (from_pretrained(dtype=float32)'s conversion: an exact upcast)."""
        prefix = self._names[id(module)]
        for owner_name, owner in module.named_modules():
            for leaf, param in list(owner._parameters.items()):
                if param is None:
                    continue
                full = ".".join(p for p in (prefix, owner_name, leaf) if p)
                tensor = self.source.read(self.stored_name(full))
                self.bytes_read += tensor.numel() * tensor.element_size()
                tensor = tensor.to(self.device, self.compute_dtype)
                owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)

    def release(self, module: nn.Module) -> None:
        """Return every parameter of `module` to the meta device (frees its memory)."""
        for owner in module.modules():
            for leaf, param in list(owner._parameters.items()):
                if param is not None and param.device != META:
                    owner._parameters[leaf] = nn.Parameter(
                        torch.empty(param.shape, dtype=param.dtype, device=META),
                        requires_grad=False)

    @contextlib.contextmanager
    def materialized(self, *modules: nn.Module) -> Iterator[None]:
        """`modules` hold real parameters inside the block, meta ones again after it."""
        try:
            for module in modules:
                self.load(module)
            yield
        finally:
            for module in modules:
                self.release(module)

    def non_block_modules(self) -> list[nn.Module]:
        """The parts outside the decoder blocks: embeddings, final norm, head."""
        parts = [self.layout.embeddings, self.layout.norm, self.layout.head]
        return [p for p in parts if p is not None]

    def buffers_to(self, device: torch.device) -> None:
        """Move the real buffers (rotary tables) to the compute device."""
        for owner in self.model.modules():
            for name, buf in list(owner._buffers.items()):
                if buf is not None and buf.device != META:
                    owner._buffers[name] = buf.to(device)
