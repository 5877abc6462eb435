"""Corrupt inputs (issue 14): model files given to `bench` that are truncated, random,
empty or a directory name their fix; `bench` takes --quiet and shows progress otherwise;
image folders with too few images per class or a decompression-bomb image are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.toolkit.test_robustness import one_line
from toolkit.errors import UserError

# --- bench: corrupt model files, --quiet and progress ----------------------------------

def _tiny_onnx() -> bytes:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=8).SerializeToString()


BENCH_FILES = {  # name -> (make it, words the line must hold)
    "truncated onnx": (lambda p: p.with_suffix(".onnx").write_bytes(_tiny_onnx()[:40]),
                       ".onnx", "re-export it with `toolkit export onnx"),
    "random bytes tflite": (lambda p: p.with_suffix(".tflite").write_bytes(os.urandom(256)),
                            ".tflite", "re-export it with `toolkit export tflite"),
    "empty onnx": (lambda p: p.with_suffix(".onnx").write_bytes(b""), ".onnx", "is empty"),
    "directory onnx": (lambda p: p.with_suffix(".onnx").mkdir(), ".onnx", "is a directory"),
}


@pytest.mark.parametrize("case", list(BENCH_FILES))
def test_corrupt_files_given_to_bench_name_the_fix(toolkit_cli, tmp_path, case):
    pytest.importorskip("onnxruntime")
    make, suffix, words = BENCH_FILES[case]
    make(tmp_path / "model")
    path = (tmp_path / "model").with_suffix(suffix)
    one_line(toolkit_cli("bench", path, "--runs", "1", "--warmup", "0", "--min-seconds", "0",
                         "--quiet"), str(path), words)


def test_a_bench_option_the_model_cannot_take_is_not_called_a_corrupt_file(toolkit_cli):
    line = one_line(toolkit_cli("bench", "fake-llama", "--prompt-tokens", "40",
                                "--max-context", "32", "--runs", "1", "--warmup", "0",
                                "--min-seconds", "0", "--quiet"),
                    "fake-llama", "does not fit", "lower --prompt-tokens")
    assert "re-export" not in line


def test_bench_shows_progress_unless_quiet(toolkit_cli, tmp_path):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "relu.onnx"
    model.write_bytes(_tiny_onnx())
    fast = ["--runs", "3", "--warmup", "0", "--min-seconds", "0"]
    loud = toolkit_cli("bench", model, *fast)
    assert loud.code == 0, loud.err
    assert "load" in loud.err and "timed runs" in loud.err and "3/3" in loud.err
    quiet = toolkit_cli("bench", model, *fast, "--quiet")
    assert quiet.code == 0 and quiet.err == "" and "relu.onnx" in quiet.out


def test_every_command_accepts_quiet():
    from toolkit.cli import build_parser, leaf_parsers

    leaves = leaf_parsers(build_parser())
    assert len(leaves) >= 9  # compress run eval export bench models, train x3
    for leaf in leaves:
        assert "--quiet" in leaf._option_string_actions, leaf.prog


def test_expected_rounds_grow_until_min_seconds():
    from toolkit.bench.timing import expected_rounds

    assert expected_rounds(2, 0.5, 3, 0.0, None) == 3  # min_runs not reached
    assert expected_rounds(4, 1.0, 3, 2.0, None) == 8  # 1 s in 4 rounds, 2 s wanted
    assert expected_rounds(4, 1.0, 3, 2.0, 6) == 6  # capped
    assert expected_rounds(8, 2.0, 3, 2.0, None) == 8  # done


# --- image folders ------------------------------------------------------------------------

def _class_folder(root: Path, per_class: tuple[int, ...]) -> None:
    from PIL import Image

    for c, count in enumerate(per_class):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(count):
            Image.new("L", (8, 8), color=i * 10).save(root / f"class{c}" / f"{i}.png")


def _bomb(path: Path) -> None:
    from PIL import Image

    Image.new("1", (9000, 9000)).save(path)  # 81M pixels in a file of a few KB


def test_image_folder_with_too_few_images_per_class(tmp_path):
    from toolkit.data.images import MIN_IMAGES_PER_CLASS, folder_data

    _class_folder(tmp_path, (MIN_IMAGES_PER_CLASS, MIN_IMAGES_PER_CLASS - 1))
    with pytest.raises(UserError, match=f"class1 holds {MIN_IMAGES_PER_CLASS - 1} image"):
        folder_data(tmp_path, 8, 1)
    (tmp_path / "class1" / "extra.png").write_bytes((tmp_path / "class1" / "0.png")
                                                    .read_bytes())
    assert len(folder_data(tmp_path, 8, 1).classes) == 2


@pytest.mark.parametrize("reader", ["class folder", "portrait folder"])
def test_decompression_bomb_images_are_refused(tmp_path, reader):
    from PIL import Image

    from toolkit.data.images import folder_data
    from toolkit.data.portraits.folder import load_portrait_folder

    if reader == "class folder":
        _class_folder(tmp_path, (5, 5))
        bomb = tmp_path / "class1" / "bomb.png"
        _bomb(bomb)
        call = lambda: folder_data(tmp_path, 8, 1)  # noqa: E731
    else:
        (tmp_path / "images").mkdir()
        (tmp_path / "masks").mkdir()
        bomb = tmp_path / "images" / "0.png"
        _bomb(bomb)
        Image.new("L", (9000, 9000)).save(tmp_path / "masks" / "0.png")
        call = lambda: load_portrait_folder(tmp_path, 8, 8)  # noqa: E731
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(UserError, match=r"9000x9000 pixels, over the cap.*downscale"):
        call()


# --- input names that are not UTF-8 ------------------------------------------------------

@pytest.mark.parametrize("command", [["eval", "{MODEL}", "--quiet"],
                                     ["compress", "--model", "{MODEL}", "--out", "{OUT}",
                                      "--quiet"]])
def test_model_folder_whose_name_is_not_utf8(toolkit_cli, fake_model_dir, tmp_path, command):
    """Rust readers (safetensors, tokenizers) refuse such paths; the line says to rename."""
    import shutil

    model = os.fsdecode(os.fsencode(tmp_path) + b"/model-\xff")  # as argv decodes it
    shutil.copytree(fake_model_dir, model)
    argv = [arg.replace("{MODEL}", model).replace("{OUT}", str(tmp_path / "out"))
            for arg in command]
    one_line(toolkit_cli(*argv), "not valid UTF-8", "rename")
    assert not (tmp_path / "out").exists()
