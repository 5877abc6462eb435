"""Open any model spec lazily: a registered name with a checkpoint on disk, a Hugging Face
safetensors directory (one file or shards with an index), or a GGUF file. Only headers and
the config are read; the weights stay on disk until a block asks for them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from models.errors import ModelError
from models.lazy.source import TensorSource
from models.registry import is_registered, registered_checkpoint

GGUF_SUFFIX = ".gguf"


@dataclasses.dataclass
class LazyCheckpoint:
    """A model's config, tokenizer and lazily readable weights."""

    path: Path  # the directory or GGUF file
    source: TensorSource
    config: Any  # transformers PretrainedConfig
    name: str | None  # registered name, when it came from the registry
    quantized: bool = False  # linears stored packed (an artifact of a quantization run)

    @property
    def is_gguf(self) -> bool:
        return self.path.is_file()

    def tokenizer(self):
        if self.is_gguf:
            from models.lazy.gguf_source import gguf_tokenizer

            return gguf_tokenizer(self.path)
        from models.hf_loader import load_tokenizer

        return load_tokenizer(self.path)

    def files(self) -> list[Path]:
        """The weight files, for sizes and fingerprints."""
        if self.is_gguf:
            return [self.path]
        return sorted({self.path / info.file for info in self.source.infos().values()})


def resolve_checkpoint_path(spec: str) -> tuple[Path | None, str | None]:
    """(path on disk, registered name) for a spec; (None, name) when the registered model
    exists only in memory."""
    if is_registered(spec):
        path = registered_checkpoint(spec)
        return (Path(path) if path is not None else None), spec
    return Path(spec).expanduser(), None


def open_lazy(spec: str) -> LazyCheckpoint:
    """The lazily readable checkpoint of `spec`; a one-line ModelError for anything else."""
    path, name = resolve_checkpoint_path(spec)
    if path is None:
        raise ModelError(f"{spec} exists only in memory (a test model), so it cannot be read "
                         "block by block: use --engine memory")
    if not path.exists():
        raise ModelError(f"model {spec!r} is neither a registered name nor an existing path: "
                         "check the path, or pick a name from `toolkit models`")
    if path.is_file():
        if path.suffix.lower() != GGUF_SUFFIX:
            raise ModelError(f"{path} is a file but not a .gguf: pass a .gguf file or a "
                             "Hugging Face directory")
        from models.lazy.gguf_source import GgufSource, gguf_config

        return LazyCheckpoint(path, GgufSource(path), gguf_config(path), name)
    from models.hf_config_check import checked_hf_config
    from models.lazy.packed_source import PackedSource, open_weights_source

    config = checked_hf_config(path)
    source = open_weights_source(path)
    quantized = isinstance(source, PackedSource)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the skeleton holds float weights
    return LazyCheckpoint(path, source, config, name, quantized)
