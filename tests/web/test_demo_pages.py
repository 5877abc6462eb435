"""The portrait and V-MoE demo pages in headless Chromium under iPhone and Pixel
emulation: each loads tiny fake bundles, runs them, and what the page's runtime gave
(onnxruntime-web or LiteRT.js) equals what onnxruntime / LiteRT give in Python on the
same input: the bundle's sample, a picked picture (the page's own preprocessing), a
drawing, and MediaPipe's selfie model on the page's frame. A corrupt model file shows
the sha256 message; a wrong kind of bundle and a manifest missing a key are named."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.web.conftest import DEVICES
from tests.web.reference import (
    layout_pixels,
    manifest,
    picture,
    relative_error,
    run_bundle,
    run_litert,
    sample,
)

SELFIE = "node_modules/@mediapipe/selfie_segmentation/selfie_segmentation.tflite"
# two runtimes of one float graph differ by rounding only (the bundles' own rtol is 1e-4)
RTOL = 1e-4


def _portrait_url(name: str, extra: str = "") -> str:
    return f"portrait.html?bundle=models/{name}/{extra}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["portrait-onnx", "portrait-tflite"])
def test_portrait_sample_matches_python_and_mediapipe_runs_beside_it(
        open_page, web_bundles, web_server, screenshots, device, name):
    page = open_page(_portrait_url(name, "&sample=1"), device)
    assert page.settle() == "done", page.text("#error")
    out = page.output()
    bundle = web_bundles[name]
    pixels, recorded = sample(bundle)
    [python_mask] = run_bundle(bundle, pixels)
    assert out["shape"] == list(python_mask.shape) == list(recorded["mask"].shape)
    assert relative_error(out["values"], python_mask) < RTOL
    assert relative_error(out["values"], recorded["mask"]) < RTOL
    assert out["sample"]["matches"] is True and out["sample"]["relative_error"] < RTOL
    assert out["backend"].startswith("litert-js" if name.endswith("tflite") else "onnxruntime-web")
    assert "sample matches" in page.text("#check")
    # MediaPipe's selfie model ran with LiteRT.js on the page's 256x256 frame
    selfie = page.page.evaluate("window.__selfie")
    frame = np.reshape(selfie["input"]["values"], selfie["input"]["shape"]).astype(np.float32)
    assert selfie["input"]["shape"] == [1, 256, 256, 3] and 0 <= frame.min() and frame.max() <= 1
    [python_selfie] = run_litert(web_server.app_root / SELFIE, frame)
    assert selfie["output"]["shape"] == list(python_selfie.shape) == [1, 256, 256, 1]
    assert relative_error(selfie["output"]["values"], python_selfie) < 1e-3
    assert float(page.text("#ms-bundle")) > 0 and float(page.text("#ms-mediapipe")) > 0
    page.screenshot(screenshots, f"portrait-{name}-{device.replace(' ', '-')}")


@pytest.mark.parametrize(("device", "name", "effect"), [
    ("iPhone 15", "portrait-tflite", "overlay"), ("Pixel 7", "portrait-onnx", "replace")])
def test_portrait_photo_is_preprocessed_as_the_manifest_says(open_page, web_bundles, tmp_path,
                                                             screenshots, device, name, effect):
    bundle = web_bundles[name]
    pre = manifest(bundle)["preprocessing"]
    rgb = picture(tmp_path / "photo.png", pre["width"], pre["height"])
    page = open_page(_portrait_url(name, "&mediapipe=0"), device)
    assert page.settle(states=("ready", "failed")) == "ready", page.text("#error")
    page.page.select_option("#effect", effect)
    page.page.set_input_files("#photo", str(tmp_path / "photo.png"))
    assert page.settle() == "done", page.text("#error")
    out = page.output()
    drawn = page.page.evaluate("""() => { const c = document.getElementById("out-bundle");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      return [c.width, c.height, d.reduce((a, b) => a + b, 0)]; }""")
    assert drawn[:2] == [pre["width"], pre["height"]] and drawn[2] > 0  # the photo's size
    expected_input = layout_pixels(rgb, pre)
    assert out["input"]["shape"] == list(expected_input.shape)
    np.testing.assert_allclose(np.reshape(out["input"]["values"], expected_input.shape),
                               expected_input, atol=0.5)
    [python_mask] = run_bundle(bundle, expected_input)
    assert relative_error(out["values"], python_mask) < RTOL
    page.screenshot(screenshots, f"portrait-photo-{name}-{effect}")


def test_portrait_camera_frames_run_both_models(open_page, screenshots):
    """Chromium's fake camera (--use-fake-device-for-media-stream): frames go through the
    bundle and MediaPipe's model, each timed."""
    page = open_page(_portrait_url("portrait-tflite"), "Pixel 7")
    assert page.settle(states=("ready", "failed")) == "ready", page.text("#error")
    page.page.click("#camera")
    page.page.wait_for_function("window.__lastOutput?.source === 'camera'", timeout=30_000)
    assert float(page.text("#ms-bundle")) > 0 and float(page.text("#ms-mediapipe")) > 0
    assert page.text("#camera") == "Stop camera"
    page.screenshot(screenshots, "portrait-camera")
    page.page.click("#camera")
    assert page.text("#camera") == "Start camera"


@pytest.fixture(scope="module")
def dense_copy(web_bundles, tmp_path_factory):
    """The V-MoE ONNX bundle with its manifest's "experts" section removed, as a dense
    bundle (or one exported without the expert output) reads: the page must say "not
    exported"."""
    folder = tmp_path_factory.mktemp("dense") / "vmoe-dense"
    shutil.copytree(web_bundles["vmoe-onnx"], folder)
    described = manifest(folder)
    described["experts"] = None
    (folder / "bundle.json").write_text(json.dumps(described), encoding="utf-8")
    return folder


@pytest.fixture
def vmoe_server(web_bundles, dense_copy):
    """The module server plus the dense copy: a server of its own, started per test."""
    from tests.web.conftest import served_files
    from toolkit.bench.device.run import web_app_root
    from toolkit.bench.device.server import BenchServer

    bundles = {**web_bundles, "vmoe-dense": dense_copy}
    with BenchServer(web_app_root(), served_files(bundles), {}, lambda _d: False) as server:
        yield server, bundles


VMOE_THREE = ("vmoe.html?bundle=models/vmoe-dense/&bundle=models/vmoe-onnx/"
              "&bundle=models/vmoe-tflite/")


@pytest.mark.parametrize("device", DEVICES)
def test_vmoe_three_bundles_side_by_side_match_python(open_page, vmoe_server, tmp_path,
                                                      screenshots, device):
    server, bundles = vmoe_server
    page = open_page(server.url("127.0.0.1", VMOE_THREE + "&sample=1"), device)
    assert page.settle() == "done", page.text("#error")
    runs = page.output()["bundles"]
    names = ["vmoe-dense", "vmoe-onnx", "vmoe-tflite"]
    assert [r["bundle"] for r in runs] == [f"models/{n}/" for n in names]
    for name, run in zip(names, runs, strict=True):
        pixels, recorded = sample(bundles[name])
        logits, experts = run_bundle(bundles[name], pixels)
        assert relative_error(run["logits"]["values"], logits) < RTOL, name
        assert run["logits"]["shape"] == list(logits.shape)
        assert run["sample"]["matches"] is True, run["sample"]
        labels = manifest(bundles[name])["postprocessing"]["labels"]
        assert run["label"] == labels[int(np.argmax(logits))]
        if name == "vmoe-dense":
            assert run["experts"] is None
        else:
            assert run["experts"]["values"] == experts.ravel().tolist()
            assert run["experts"]["values"] == recorded["experts"].ravel().tolist()
    cards = page.page.locator(".card .expert").all_text_contents()
    assert cards[0] == "expert choice: not exported"
    assert cards[1].startswith("router chose expert ") and cards[1].endswith(" of 4")
    page.screenshot(screenshots, f"vmoe-samples-{device.replace(' ', '-')}")

    # a picture at the models' size: the page's preprocessing, value by value
    pre = manifest(bundles["vmoe-onnx"])["preprocessing"]
    rgb = picture(tmp_path / "garment.png", pre["width"], pre["height"], seed=3)
    page.page.set_input_files("#photo", str(tmp_path / "garment.png"))
    page.page.wait_for_function("window.__lastOutput?.source === 'garment.png'")
    for name, run in zip(names, page.output()["bundles"], strict=True):
        expected_input = layout_pixels(rgb, manifest(bundles[name])["preprocessing"])
        np.testing.assert_allclose(np.reshape(run["input"]["values"], expected_input.shape),
                                   expected_input, atol=0.5)
        logits, _ = run_bundle(bundles[name], expected_input)
        assert relative_error(run["logits"]["values"], logits) < RTOL, name


def test_vmoe_drawing_is_classified_as_python_classifies_its_pixels(open_page, web_bundles,
                                                                    screenshots):
    page = open_page("vmoe.html?bundle=models/vmoe-onnx/", "Pixel 7")
    assert page.settle(states=("ready", "failed")) == "ready", page.text("#error")
    box = page.page.locator("#draw").bounding_box()
    mouse = page.page.mouse
    mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.2)
    mouse.down()
    for t in np.linspace(0, 1, 12):
        mouse.move(box["x"] + box["width"] * (0.3 + 0.4 * t),
                   box["y"] + box["height"] * (0.2 + 0.6 * t))
    mouse.up()
    page.page.click("#classify")
    page.page.wait_for_function("window.__lastOutput?.source === 'the drawing'")
    [run] = page.output()["bundles"]
    pixels = np.reshape(run["input"]["values"], run["input"]["shape"]).astype(np.float32)
    assert pixels.max() > 200 and pixels.min() == 0  # white strokes on black
    logits, experts = run_bundle(web_bundles["vmoe-onnx"], pixels)
    assert relative_error(run["logits"]["values"], logits) < RTOL
    assert run["experts"]["values"] == experts.ravel().tolist()
    page.screenshot(screenshots, "vmoe-drawing")


@pytest.mark.parametrize(("path", "message"), [
    (_portrait_url("portrait-corrupt"),
     "model.onnx does not match its sha256 in bundle.json"),
    ("vmoe.html?bundle=models/portrait-onnx/",
     "this bundle holds an image-segmentation model; this page runs image-classification"),
    (_portrait_url("missing"), "models/missing/bundle.json answered HTTP 404"),
])
def test_bad_bundles_are_named_on_the_page(open_page, screenshots, path, message):
    page = open_page(path, "iPhone 15")
    assert page.settle() == "failed"
    assert message in page.text("#error")
    assert page.page.is_visible("#error")
    page.screenshot(screenshots, "error")


def _drop_preprocessing(described: dict) -> None:
    del described["preprocessing"]


def _int8_input(described: dict) -> None:
    """As a fully int8 LiteRT export describes its input (LiteRT.js has no int8 tensors)."""
    described["inputs"][0]["dtype"] = "int8"


@pytest.mark.parametrize(("source", "edit", "messages"), [
    ("portrait-onnx", _drop_preprocessing,
     ['bundle.json has no "preprocessing"', "export the bundle again"]),
    ("portrait-tflite", _int8_input,
     ["model.tflite's tensor", "is int8, and LiteRT.js reads only float32, int32, uint8",
      "export it without --int8"]),
])
def test_a_manifest_the_page_cannot_follow_is_named(open_page, web_bundles, tmp_path, source,
                                                     edit, messages):
    from tests.web.conftest import served_files
    from toolkit.bench.device.run import web_app_root
    from toolkit.bench.device.server import BenchServer

    folder = tmp_path / "edited"
    shutil.copytree(web_bundles[source], folder)
    described = manifest(folder)
    edit(described)
    (folder / "bundle.json").write_text(json.dumps(described), encoding="utf-8")
    with BenchServer(web_app_root(), served_files({"e": folder}), {}, lambda _d: False) as server:
        page = open_page(server.url("127.0.0.1", _portrait_url("e")), "Pixel 7")
        assert page.settle() == "failed"
        for message in messages:
            assert message in page.text("#error")


PREPROCESS = """async ([pre, rgba, width, height, invert, quant]) => {
  const m = await import("./lib/demo_vision.js");
  const image = new ImageData(new Uint8ClampedArray(rgba), width, height);
  return {pixels: Array.from(m.imageToPixels(image, pre, {invert})),
          quantized: Array.from(m.quantize(Float32Array.from(quant.values), quant))};
}"""


@pytest.mark.parametrize(("channels", "layout", "invert"), [
    (1, "NCHW", True), (1, "NHWC", False), (3, "NHWC", True)])
def test_the_pages_preprocessing_equals_numpys(open_page, channels, layout, invert):
    """Grey (BT.601 luma, as a Fashion-MNIST bundle says), inverted, either layout, and
    the int8/uint8 input quantization (round half to even), against numpy."""
    height, width = 5, 7
    rng = np.random.default_rng(channels)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((height, width, 1), 255, np.uint8)], -1)
    pre = {"height": height, "width": width, "channels": channels, "layout": layout,
           "grayscale": {"weights_rgb": [0.299, 0.587, 0.114]}}
    # halves included: 2.5 -> 2 and 3.5 -> 4 under round-half-even, then the zero point
    quant = {"scale": 0.5, "zero_point": -3, "dtype": "int8" if invert else "uint8",
             "values": [1.25, 1.75, 0.0, 255.0, -80.0, 63.2, 2.0]}
    page = open_page("index.html", "Pixel 7")
    got = page.page.evaluate(PREPROCESS, [pre, rgba.ravel().tolist(), width, height, invert,
                                          quant])
    expected = layout_pixels(rgb, pre)
    if invert:
        expected = 255 - expected
    np.testing.assert_allclose(np.reshape(got["pixels"], expected.shape), expected, atol=1e-3)
    low, high = (-128, 127) if quant["dtype"] == "int8" else (0, 255)
    codes = np.clip(np.round(np.asarray(quant["values"]) / quant["scale"]) + quant["zero_point"],
                    low, high)
    assert got["quantized"] == codes.astype(int).tolist()
