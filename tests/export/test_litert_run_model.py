"""export.litert.run_model on a file without signatures (as other converters write them,
e.g. MediaPipe's selfie segmenter) and on more images than the file's batch of 1: the
same outputs as the signature runner gives image by image."""

from __future__ import annotations

import numpy as np
import pytest

from export.vision import export_vision
from models.fake_cnn import FakeCnn, smooth_images

SHAPE = (1, 3, 32, 32)


def _without_signatures(path, out) -> None:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))
    assert model.signatureDefs
    model.signatureDefs = []
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out.write_bytes(bytes(builder.Output()))


def test_file_without_signatures_runs_every_image(tmp_path) -> None:
    pytest.importorskip("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    from export.litert.run_model import run_in_child

    result = export_vision(FakeCnn(), SHAPE, "tflite", tmp_path / "m.tflite")
    bare = tmp_path / "bare.tflite"
    _without_signatures(result.path, bare)
    assert Interpreter(model_path=str(bare)).get_signature_list() == {}
    images = smooth_images(3, seed=5).permute(0, 2, 3, 1).contiguous().numpy()
    runner = Interpreter(model_path=str(result.path)).get_signature_runner()
    name = runner.get_input_details().popitem()[0]
    expected = np.concatenate([next(iter(runner(**{name: image[None]}).values()))
                               for image in images])
    (from_bare,) = run_in_child(bare, [images])
    (from_signed,) = run_in_child(result.path, [images])
    assert from_bare.shape == from_signed.shape == expected.shape and expected.shape[0] == 3
    np.testing.assert_allclose(from_bare, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(from_signed, expected, rtol=0, atol=1e-6)


def test_exported_tensors_have_short_names_but_io_keeps_its_own(tmp_path) -> None:
    """export.litert.compact: litert-torch's module-path names (~300 bytes a tensor) are
    replaced by t<index>; the graph's input and output keep theirs."""
    pytest.importorskip("litert_torch")
    from ai_edge_litert import schema_py_generated as schema

    result = export_vision(FakeCnn(), SHAPE, "tflite", tmp_path / "m.tflite")
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(result.path.read_bytes(), 0))
    graph = model.subgraphs[0]
    io = {int(i) for i in graph.inputs} | {int(i) for i in graph.outputs}
    for index, tensor in enumerate(graph.tensors):
        if index in io:
            assert tensor.name.startswith(b"serving_default"), tensor.name
        else:
            assert tensor.name == f"t{index}".encode()
