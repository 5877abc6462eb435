"""Core ML, LiteRT and ONNX writers with parity verification, behind one registry.

    report = export.export_model("tflite", loaded, Path("m.tflite"), ExportOptions())

Each target is a folder with an exporter module registering itself
(`@register_exporter("onnx")`); importing them here is what makes them available.
"""

from export.coreml import exporter as _coreml  # noqa: F401  (registration)
from export.job import check_output, export_model
from export.litert import exporter as _litert  # noqa: F401  (registration)
from export.onnx import exporter as _onnx  # noqa: F401  (registration)
from export.options import ExportOptions
from export.registry import Exporter, exporter_names, get_exporter, register_exporter
from export.report import ExportReport

__all__ = ["ExportOptions", "ExportReport", "Exporter", "check_output", "export_model",
           "exporter_names", "get_exporter", "register_exporter"]
