"""A small CNN (conv, batch norm, depthwise conv, pooling, two heads) exported to each
format with pixels in [0, 255] and normalisation folded in: ONNX and LiteRT outputs match
PyTorch; the Core ML package has the expected I/O."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from export.vision import Preprocess, export_vision, verify_vision
from models.fake_cnn import FakeCnn, smooth_images

SHAPE = (1, 3, 32, 32)
PRE = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU6())
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.classes, self.mask = nn.Linear(8, 5), nn.Conv2d(8, 1, 1)
        self.stem[1].running_mean.uniform_(-0.5, 0.5)  # a non-trivial folded batch norm

    def forward(self, x):
        features = torch.relu(self.depthwise(self.stem(x)))
        return self.classes(features.mean(dim=(2, 3))), torch.sigmoid(self.mask(features))


@pytest.mark.parametrize(("target", "module"), [("onnx", "onnxruntime"),
                                                ("tflite", "ai_edge_litert")])
def test_runtime_outputs_match_pytorch(tmp_path, target: str, module: str) -> None:
    pytest.importorskip(module)
    result = export_vision(TinyNet(), SHAPE, target, tmp_path / f"m.{target}", preprocess=PRE)
    assert tuple(result.example.shape) == ((1, 32, 32, 3) if target == "tflite" else SHAPE)
    assert float(result.example.max()) > 1.0  # raw pixels go in
    agreements = verify_vision(result)
    assert len(agreements) == 2
    for check in agreements:
        assert check.relative_error < 1e-4 and check.cosine > 0.99999, check


def test_folded_preprocessing_equals_normalising_by_hand(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    net = TinyNet().eval()
    result = export_vision(net, SHAPE, "onnx", tmp_path / "m.onnx", preprocess=PRE)
    pixels = result.example
    mean, std = torch.tensor(PRE.mean).view(1, 3, 1, 1), torch.tensor(PRE.std).view(1, 3, 1, 1)
    with torch.no_grad():
        by_hand = net((pixels / 255 - mean) / std)[0]
    torch.testing.assert_close(result.wrapped(pixels)[0], by_hand)


def test_coreml_package_io(tmp_path) -> None:
    pytest.importorskip("coremltools")
    result = export_vision(TinyNet(), SHAPE, "coreml", tmp_path / "m.mlpackage",
                           preprocess=PRE)
    described = verify_vision(result)
    assert described["inputs"] == ["pixels"] and len(described["outputs"]) == 2
    assert described["numerics"] == "numerics not checked: Core ML runs only on macOS"


class Determinant(nn.Module):
    def forward(self, x):
        return torch.linalg.det(x[:, :, :4, :4])


class WithUnsupportedOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3), Determinant()

    def forward(self, x):
        return self.head(self.conv(x))


@pytest.mark.parametrize(("target", "module"), [("tflite", "litert_torch"),
                                                ("coreml", "coremltools")])
def test_unsupported_op_is_named_with_its_layer(tmp_path, target: str, module: str) -> None:
    from export.errors import ExportError

    pytest.importorskip(module)
    with pytest.raises(ExportError, match=r"unsupported: linalg_det in layer head "
                                          r"\(Determinant\)"):
        export_vision(WithUnsupportedOp(), (1, 3, 8, 8), target, tmp_path / "m.bin")
    assert list(tmp_path.iterdir()) == []


def test_static_int8_litert_is_integer_smaller_and_close(tmp_path) -> None:
    pytest.importorskip("ai_edge_quantizer")
    from ai_edge_litert import schema_py_generated as schema

    # Verified on a held-out image, not a calibration one.
    result = export_vision(FakeCnn(), SHAPE, "tflite", tmp_path / "q.tflite", preprocess=PRE,
                           int8_calibration=smooth_images(32, seed=1),
                           example=smooth_images(1, seed=7))
    assert result.int8 and sorted(p.name for p in tmp_path.iterdir()) == ["q.tflite"]
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(result.path.read_bytes(), 0))
    graph = model.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    for op in graph.operators:
        kind = names[model.operatorCodes[op.opcodeIndex].builtinCode]
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            assert graph.tensors[op.inputs[0]].type == schema.TensorType.INT8, kind
            assert graph.tensors[op.inputs[1]].type == schema.TensorType.INT8, kind
    assert graph.tensors[graph.inputs[0]].type == schema.TensorType.INT8
    assert result.path.stat().st_size < result.float_bytes / 2.5
    # int8 activations cost about 0.4% here.
    (check,) = verify_vision(result)
    assert check.cosine > 0.9999 and check.relative_error < 0.02, check


def test_static_int8_is_refused_for_core_ml(tmp_path) -> None:
    from export.errors import ExportError

    with pytest.raises(ExportError, match="static int8 is offered for onnx and tflite, "
                                          "not coreml"):
        export_vision(FakeCnn(), SHAPE, "coreml", tmp_path / "m.mlpackage",
                      int8_calibration=smooth_images(2, seed=1))
    assert list(tmp_path.iterdir()) == []
