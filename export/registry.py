"""Export targets, registered by name: `@register_exporter("onnx")` on an Exporter subclass.

Every exporter has one call shape,

    exporter.export(artifact, out, options) -> ExportReport

with `artifact` the models.LoadedModel, `out` the path to write (export_model passes a
hidden staging sibling of the final path), `options` an export.options.ExportOptions.
The base class routes LLMs to export.llm_job and vision models to export.vision_job; a
target supplies its file suffix, runtime name and, for LLMs, a writer and a verifier. A
new target is one folder under export/ with an exporter module that registers itself,
plus its import in export/__init__.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.errors import ExportError

if TYPE_CHECKING:
    from export.options import ExportOptions
    from export.report import ExportReport

LLM, VISION = "llm", "vision"


def artifact_kind(artifact: Any) -> str:
    """"vision" when the model carries a vision input spec (models.vision_input), else "llm"
    (decoder LMs, dense or MoE, which carry a tokenizer)."""
    return LLM if getattr(artifact, "vision", None) is None else VISION


class Exporter:
    """Base of every registered exporter; `target` is set by register_exporter."""

    target: str = ""
    suffix: str = ""  # the file (or package folder) name's ending, e.g. ".onnx"
    runtime: str = ""  # what runs the file in verification
    kinds: tuple[str, ...] = (LLM, VISION)  # artifact kinds it accepts
    # Whether it writes a lazily read checkpoint (export.llm.streamed) one weight at a time;
    # the others convert a module held in memory.
    streams: bool = False
    # Whether it carries an embedding table and head quantized at export (--embedding-bits).
    quantizes_tables: bool = False
    # Writes an artifact's LoRA adapters as side branches (export/lora_carry.py); a target
    # that does not has them detached for writing and verification and reports them dropped.
    carries_lora: bool = False
    # ... and from a lazily read checkpoint too (--engine streaming)
    streams_lora: bool = False
    # Why pruned zeros end up dense in this format (said in the report), when they do.
    sparse_note: str = "the format has no sparse weights"

    def companions(self, out: Path) -> list[Path]:
        """Files an export to `out` may write beside it (ONNX's external data): guarded
        like `out` itself, and removed when a new export to `out` does not write them."""
        return []

    def accepts(self, artifact: Any) -> bool:
        return artifact_kind(artifact) in self.kinds

    def export(self, artifact: Any, out: Path, options: ExportOptions) -> ExportReport:
        if artifact_kind(artifact) == VISION:
            from export.vision_job import export_vision_artifact

            return export_vision_artifact(self, artifact, out, options)
        from export.llm_job import export_llm_artifact

        return export_llm_artifact(self, artifact, out, options)

    # Vision targets (export.vision): the input layout the runtime prefers; what a static
    # int8 file of this target holds, as the report says it ("" = int8 not offered);
    # whether it takes float16 / palettization options (Core ML's); and the hooks below.
    vision_layout: str = "NCHW"
    vision_int8: str = ""
    vision_precision_options: bool = False

    def prepare_vision(self, module: Any) -> Any:
        """The module to convert (a target may swap in a variant its runtime runs better)."""
        return module

    def write_vision(self, wrapped: Any, example: Any, out: Path, meta: dict,
                     coreml: Any = None) -> None:
        """Write `wrapped` (pixels in, normalisation folded) traced on `example` to `out`
        with `meta` as file metadata; `coreml`: export.coreml.vision.CoremlVisionOptions."""
        raise ExportError(f"{self.target} does not export vision models")

    def quantize_vision(self, float_file: Path, out: Path, samples: list) -> None:
        """Static int8 of the float file at `float_file`, calibrated on `samples`."""
        raise ExportError(f"{self.target} does not write static int8 files")

    def run_vision(self, path: Path, example: Any) -> list | dict:
        """The file's outputs on `example`, or a dict of what could be checked (with
        "inputs", "outputs", "numerics") where the runtime cannot run here."""
        raise ExportError(f"{self.target} cannot run vision models")

    # LLM targets implement these two (called by export.llm_job).
    def write_llm(self, artifact: Any, out: Path, options: ExportOptions) -> Any:
        """Write the decoder to `out`; returns an object with .decoder, .carried, .dropped."""
        raise ExportError(f"{self.target} does not export language models")

    def verify_llm(self, result: Any, out: Path, artifact: Any, prompt: list[int],
                   options: ExportOptions) -> Any:
        """An export.llm.check.LlmVerification, or a dict of structural checks (with
        "checks", "numerics" and "passed") where the runtime cannot run here."""
        raise ExportError(f"{self.target} cannot verify language models")


_EXPORTERS: dict[str, Exporter] = {}


def register_exporter(target: str) -> Callable[[type[Exporter]], type[Exporter]]:
    def wrap(cls: type[Exporter]) -> type[Exporter]:
        if target in _EXPORTERS:
            raise ValueError(f"export target {target!r} is registered twice")
        if not cls.suffix or not cls.runtime:
            raise ValueError(f"exporter {cls.__name__} must set suffix and runtime")
        cls.target = target
        _EXPORTERS[target] = cls()
        return cls
    return wrap


def exporter_names() -> list[str]:
    return sorted(_EXPORTERS)


def get_exporter(target: str) -> Exporter:
    try:
        return _EXPORTERS[target]
    except KeyError:
        raise ExportError(f"unknown export target {target!r}: choose one of "
                          f"{', '.join(exporter_names())}") from None
