"""The portrait segmenter's deployed file: a foreground probability map [N, 1, H, W] in
[0, 1] from raw pixels, in every format. Float ONNX and LiteRT match PyTorch to float
rounding; static int8 (QDQ ONNX, fully int8 LiteRT) stays close on held-out portraits;
float16 and palettized Core ML packages carry what they claim.

The fake segmenter is first fitted for a few steps on generated portraits (module
fixture, ~5 s): an untrained network's map hovers near 0.5, where any rounding flips
the mask, which would test the random weights rather than the export. The int8 bounds:
mean |p_int8 - p_float| < 0.05 (a 1/255 output step and a few percent of activation
rounding, concentrated at the mask edge) and IoU(mask_int8, mask_float) > 0.9, masks at
0.5, on portraits that were not among the calibration images.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from export.coreml.vision import PALETTE_MIN_WEIGHT, CoremlVisionOptions
from export.vision import Preprocess, export_vision
from models import load_model
from toolkit.data.portraits import generate_portraits

TEST_IMAGES = 8


@pytest.fixture(scope="module")
def fitted():
    """(fake portrait LoadedModel fitted for 40 steps, calibration images, test images)."""
    torch.manual_seed(0)
    loaded = load_model("fake-portrait")
    spec, module = loaded.vision, loaded.module
    _, _, h, w = spec.shape
    train = generate_portraits(32, seed=3, height=h, width=w, workers=1)
    held = generate_portraits(24 + TEST_IMAGES, seed=4, height=h, width=w, workers=1)
    optimizer = torch.optim.Adam(module.parameters(), 3e-3)
    module.train()
    with torch.enable_grad():
        for _ in range(40):
            logits = module.forward_train(spec.normalise(train.images)).logits
            loss = F.cross_entropy(logits, train.masks[:, 0].long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    module.eval()
    return loaded, held.images[:24].float(), held.images[24:].float()


def _export(fitted, target: str, path, int8: bool = False, coreml=None):
    loaded, calibration, test = fitted
    spec = loaded.vision
    return export_vision(loaded.module, spec.shape, target, path,
                         preprocess=Preprocess(spec.mean, spec.std),
                         int8_calibration=calibration if int8 else None,
                         example=test[:1], coreml=coreml)


def _run(result, test: torch.Tensor) -> np.ndarray:
    """The file's output on every test image (LiteRT in a child process), NCHW."""
    pixels = test.permute(0, 2, 3, 1).contiguous() if result.layout == "NHWC" else test
    if result.target == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {name: p[None].numpy()})[0]
                               for p in pixels])
    from export.litert.run_model import run_in_child

    (out,) = run_in_child(result.path, [pixels.numpy()])
    return out


def _reference(fitted) -> np.ndarray:
    """PyTorch on the same pixels, normalised by hand (not through the export wrapper)."""
    loaded, _, test = fitted
    with torch.no_grad():
        return loaded.module(loaded.vision.normalise(test)).numpy()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(("target", "module"), [("onnx", "onnxruntime"),
                                                ("tflite", "ai_edge_litert")])
def test_float_probability_map_matches_pytorch(fitted, tmp_path, target, module) -> None:
    pytest.importorskip(module)
    result = _export(fitted, target, tmp_path / f"m.{target}")
    got, want = _run(result, fitted[2]), _reference(fitted)
    _, _, h, w = fitted[0].vision.shape
    assert got.shape == want.shape == (TEST_IMAGES, 1, h, w)
    assert got.min() >= 0 and got.max() <= 1 + 1e-6
    assert np.abs(got - want).max() < 1e-4
    # A fitted map is confident: few pixels within 0.1 of the threshold.
    assert np.mean(np.abs(want - 0.5) < 0.1) < 0.2


@pytest.mark.parametrize(("target", "module"), [("onnx", "onnxruntime"),
                                                ("tflite", "ai_edge_quantizer")])
def test_int8_probability_map_is_close_and_masks_agree(fitted, tmp_path, target,
                                                       module) -> None:
    pytest.importorskip(module)
    result = _export(fitted, target, tmp_path / f"q.{target}", int8=True)
    got, want = _run(result, fitted[2]), _reference(fitted)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < 0.05
    assert _iou(got, want) > 0.9
    assert result.int8 and result.path.stat().st_size < result.float_bytes


def test_qdq_onnx_has_int8_weights_behind_dequantize(fitted, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    result = _export(fitted, "onnx", tmp_path / "q.onnx", int8=True)
    model = onnx.load(str(result.path))
    ops = collections.Counter(node.op_type for node in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    produced_by = {out: node for node in model.graph.node for out in node.output}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    loaded = fitted[0]
    assert len(convs) == sum(isinstance(m, torch.nn.Conv2d) for m in loaded.module.modules())
    for conv in convs:  # every conv weight is int8 per output channel, dequantized
        dq = produced_by[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        weight, scale = initializers[dq.input[0]], initializers[dq.input[1]]
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[0],)
        assert np.abs(weight).max() <= 64  # 7-bit codes (see export.onnx.static_int8)
    # The graph keeps float input and output: an app feeds pixels as for the float file.
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def _weight_dtypes(path) -> collections.Counter:
    """dtype of every conv weight of the saved package, from its MIL program."""
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    names = {v: k for k, v in MIL_pb2.DataType.items()}
    ops = [op for function in spec.mlProgram.functions.values()
           for block in function.block_specializations.values() for op in block.operations]
    by_output = {out.name: op for op in ops for out in op.outputs}
    dtypes: collections.Counter = collections.Counter()
    for op in ops:
        if op.type == "conv":
            (argument,) = op.inputs["weight"].arguments
            producer = by_output[argument.name]
            dtypes[names[producer.outputs[0].type.tensorType.dataType]] += 1
    return dtypes


def test_coreml_float16_and_palettized_packages(fitted, tmp_path) -> None:
    pytest.importorskip("coremltools")
    from export.coreml.inspect import describe_mlpackage

    module = fitted[0].module
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    fp32 = _export(fitted, "coreml", tmp_path / "f32.mlpackage")
    fp16 = _export(fitted, "coreml", tmp_path / "f16.mlpackage",
                   coreml=CoremlVisionOptions(fp16=True))
    palette = _export(fitted, "coreml", tmp_path / "p6.mlpackage",
                      coreml=CoremlVisionOptions(fp16=True, palettize_bits=6))
    assert _weight_dtypes(fp32.path) == {"FLOAT32": len(convs)}
    assert _weight_dtypes(fp16.path) == {"FLOAT16": len(convs)}
    described = describe_mlpackage(palette.path)
    # One lookup table per conv weight of more than PALETTE_MIN_WEIGHT elements (counted
    # on the PyTorch module; batch norms are folded into the weights, not added to them).
    large = sum(m.weight.numel() > PALETTE_MIN_WEIGHT for m in convs)
    assert large > 0 and described["ops"]["constexpr_lut_to_dense"] == large
    _, _, h, w = fitted[0].vision.shape
    assert list(described["outputs"].values()) == [[1, 1, h, w]]
    assert list(described["inputs"]) == ["pixels"]
    sizes = [result.float_bytes for result in (fp32, fp16, palette)]
    assert sizes[0] > sizes[1] > sizes[2]


def test_export_cli_writes_qdq_onnx_and_refuses_misplaced_flags(toolkit_cli,
                                                                tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    out, report = tmp_path / "q.onnx", tmp_path / "q.json"
    result = toolkit_cli("export", "onnx", "--model", "fake-portrait", "--int8",
                         "--calibration-images", "8", "--out", out, "--json", report,
                         "--quiet")
    assert result.code == 0, result.err
    import json

    data = json.loads(report.read_text())
    assert list(data["carried"]) == ["static int8 QDQ: weights per channel (7-bit codes), "
                                     "uint8 activations per tensor, float input and output"]
    check = data["verification"]
    assert check["passed"] and check["judged_on"] == "mean" and check["rtol"] == 0.05
    for flag in (["--fp16"], ["--palettize-bits", "6"]):
        refused = toolkit_cli("export", "tflite", "--model", "fake-portrait", "--out",
                              tmp_path / "m.tflite", *flag)
        assert refused.code == 2 and "Core ML options" in refused.err
        assert len(refused.err.strip().splitlines()) == 1
    assert not (tmp_path / "m.tflite").exists()


def test_litert_file_ends_in_one_softmax_op(fitted, tmp_path) -> None:
    """export.portrait: the .tflite takes the channel softmax as LiteRT's SOFTMAX op
    (int8 kernel), not the element-wise form the ONNX file uses (EXP, REDUCE_MAX)."""
    pytest.importorskip("ai_edge_quantizer")
    from ai_edge_litert import schema_py_generated as schema

    result = _export(fitted, "tflite", tmp_path / "q.tflite", int8=True)
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(result.path.read_bytes(), 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = collections.Counter(names[model.operatorCodes[op.opcodeIndex].builtinCode]
                              for op in model.subgraphs[0].operators)
    assert ops["SOFTMAX"] == 1 and ops["EXP"] == 0 and ops["REDUCE_MAX"] == 0
    assert ops["QUANTIZE"] == ops["DEQUANTIZE"] == 0  # integer from end to end
