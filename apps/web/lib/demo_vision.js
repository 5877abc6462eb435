// A vision bundle (image-segmentation or image-classification, as `toolkit export
// onnx|tflite --bundle` writes it) behind one call: pixels in, outputs by role out.
//
// The file takes raw 0..255 pixels as float32 in its runtime's layout (ONNX NCHW, LiteRT
// NHWC) with (x / 255 - mean) / std folded into the graph, so the page only resizes,
// reorders channels and, for a one-channel model, takes BT.601 luma
// (Y = 0.299 R + 0.587 G + 0.114 B). A fully int8 LiteRT file is quantized here as the
// manifest's preprocessing.quantize says, and its int8 main output dequantized.

import { BundleError } from "./bundle.js";
import { need, typedView } from "./demo_pages.js";
import { createLiteRtModel, loadLiteRtJs } from "./litert_runtime.js";
import { createOnnxSession, loadOrt } from "./onnx_runtime.js";

export const VISION_KINDS = ["image-segmentation", "image-classification"];

/** The manifest facts the page needs, checked with one-line errors for missing keys. */
export function visionSpec(manifest, wantedKind) {
  const kind = manifest.kind ?? "llm";
  if (wantedKind && kind !== wantedKind) {
    const article = /^[aeiou]/.test(kind) ? "an" : "a";
    throw new BundleError(`this bundle holds ${article} ${kind} model; this page runs ${wantedKind} ` +
      "bundles: pick another bundle, or open the page for its kind");
  }
  const pre = need(manifest, "preprocessing", "the vision demos");
  const inputs = need(manifest, "inputs", "the vision demos");
  const outputs = need(manifest, "outputs", "the vision demos");
  if (inputs.length !== 1) {
    throw new BundleError(`bundle.json lists ${inputs.length} inputs; a vision bundle has one (the pixels): export it again`);
  }
  for (const key of ["height", "width", "channels", "layout"]) need(manifest, `preprocessing.${key}`, "the vision demos");
  if (!["NCHW", "NHWC"].includes(pre.layout)) {
    throw new BundleError(`preprocessing.layout is ${pre.layout}, not NCHW or NHWC: export the bundle again`);
  }
  return { kind, pre, input: inputs[0], outputs, target: need(manifest, "target"), file: need(manifest, "model.file") };
}

/** Float32 [1, C, H, W] or [1, H, W, C] raw 0..255 pixels from RGBA ImageData already
 * at the model's size; one channel takes luma, `invert` gives 255 - value. */
export function imageToPixels(image, pre, { invert = false } = {}) {
  const { width, height, channels, layout } = pre;
  if (image.width !== width || image.height !== height) {
    throw new BundleError(`the image is ${image.width}x${image.height}, the model takes ${width}x${height}`);
  }
  if (channels !== 1 && channels !== 3) {
    throw new BundleError(`the model takes ${channels} channels; the page feeds 1 (grey) or 3 (RGB)`);
  }
  const [wr, wg, wb] = pre.grayscale?.weights_rgb ?? [0.299, 0.587, 0.114];
  const out = new Float32Array(channels * height * width);
  const rgba = image.data;
  const plane = height * width;
  // where channel c of pixel i goes: NCHW planes or NHWC interleaved
  const pixelStep = layout === "NCHW" ? 1 : channels;
  const channelStep = layout === "NCHW" ? plane : 1;
  const value = invert ? (v) => 255 - v : (v) => v;
  for (let i = 0; i < plane; i += 1) {
    const r = rgba[4 * i];
    const g = rgba[4 * i + 1];
    const b = rgba[4 * i + 2];
    const at = i * pixelStep;
    if (channels === 1) {
      out[at] = value(wr * r + wg * g + wb * b);
    } else {
      out[at] = value(r);
      out[at + channelStep] = value(g);
      out[at + 2 * channelStep] = value(b);
    }
  }
  return out;
}

/** Draws `source` (image, video, canvas) scaled to w x h, optionally centre-cropped to
 * the model's aspect first; its ImageData. */
export function frameAt(source, width, height, { crop = true } = {}) {
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const sw = source.videoWidth || source.naturalWidth || source.width;
  const sh = source.videoHeight || source.naturalHeight || source.height;
  let sx = 0;
  let sy = 0;
  let cw = sw;
  let ch = sh;
  if (crop && sw && sh) {
    const want = width / height;
    if (sw / sh > want) { cw = sh * want; sx = (sw - cw) / 2; } else { ch = sw / want; sy = (sh - ch) / 2; }
  }
  context.drawImage(source, sx, sy, cw, ch, 0, 0, width, height);
  return context.getImageData(0, 0, width, height);
}

/** round half to even, as numpy and the manifest's quantize formula. */
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export function quantize(values, { scale, zero_point: zeroPoint, dtype }) {
  const [low, high] = dtype === "uint8" ? [0, 255] : [-128, 127];
  const Typed = dtype === "uint8" ? Uint8Array : Int8Array;
  return Typed.from(values, (x) => Math.min(high, Math.max(low, roundHalfEven(x / scale) + zeroPoint)));
}

export function dequantize(values, { scale, zero_point: zeroPoint }) {
  return Float32Array.from(values, (q) => scale * (q - zeroPoint));
}

// The tensor types LiteRT.js 2.5 can create and read (its DATATYPES).
const LITERT_JS_TYPES = ["float32", "int32", "uint8"];

/** A fully int8 .tflite (int8 input and output) cannot be fed from JavaScript: refused
 * before the download, with what to export instead. */
function checkLiteRtTypes(spec) {
  for (const t of [spec.input, ...spec.outputs]) {
    if (!LITERT_JS_TYPES.includes(t.dtype)) {
      throw new BundleError(`${spec.file}'s tensor ${t.name} is ${t.dtype}, and LiteRT.js reads only ` +
        `${LITERT_JS_TYPES.join(", ")} tensors: export it without --int8, or to ONNX with --int8 ` +
        "(int8 kernels between float input and output)");
    }
  }
}

export class VisionModel {
  constructor(spec, runner, backend) {
    this.spec = spec;
    this.runner = runner;
    this.backend = backend;
  }

  /** The bundle's model fetched (sha256-checked), loaded on its runtime. */
  static async create(bundle, { kind, backend = "wasm", threads = 1, onProgress } = {}) {
    const spec = visionSpec(bundle.manifest, kind);
    if (spec.target === "tflite") checkLiteRtTypes(spec);
    const bytes = await bundle.file(spec.file, onProgress);
    if (spec.target === "tflite") {
      const litert = await loadLiteRtJs(threads);
      const accelerator = backend === "webgpu" ? "webgpu" : "wasm";
      const model = await createLiteRtModel(litert, bytes, { name: spec.file, accelerator });
      return new VisionModel(spec, liteRtRunner(model, spec), `litert-js (${accelerator})`);
    }
    if (spec.target !== "onnx") {
      throw new BundleError(`this bundle's target is ${spec.target}; the page runs onnx and tflite bundles`);
    }
    const ort = await loadOrt(backend, threads);
    const session = await createOnnxSession(ort, bytes, { backend, name: spec.file });
    return new VisionModel(spec, onnxRunner(ort, session, spec), `onnxruntime-web (${backend})`);
  }

  /** Runs raw float32 pixels (the file's layout); {outputs: {role: {data, shape, dtype,
   * name}}, ms}. An int8 main output comes back dequantized. */
  async run(pixels) {
    const { input, pre } = this.spec;
    const size = input.shape.reduce((a, b) => a * b, 1);
    if (pixels.length !== size) {
      throw new BundleError(`the input has ${pixels.length} values, ${input.name} takes ${size} (${input.shape.join("x")})`);
    }
    const fed = pre.quantize ? quantize(pixels, pre.quantize) : pixels;
    const start = performance.now();
    const raw = await this.runner(fed);
    const ms = performance.now() - start;
    const outputs = {};
    for (const [i, described] of this.spec.outputs.entries()) {
      let { data } = raw[i];
      const quant = described.quantization;
      if (quant && !["int32", "int64"].includes(described.dtype)) data = dequantize(data, quant);
      outputs[described.role ?? `output${i}`] = { data, shape: raw[i].shape, dtype: described.dtype, name: described.name };
    }
    return { outputs, ms };
  }
}

function onnxRunner(ort, session, spec) {
  const { input, outputs } = spec;
  for (const o of outputs) {
    if (!session.outputNames.includes(o.name)) {
      throw new BundleError(`${spec.file} has no output ${o.name} (bundle.json lists it): export the bundle again`);
    }
  }
  return async (data) => {
    const dtype = data instanceof Int8Array ? "int8" : data instanceof Uint8Array ? "uint8" : "float32";
    const result = await session.run({ [input.name]: new ort.Tensor(dtype, data, input.shape) });
    return outputs.map((o) => ({ data: result[o.name].data, shape: [...result[o.name].dims] }));
  };
}

function liteRtRunner(model, spec) {
  // LiteRT.js returns outputs in the signature's order; map them by name when the runtime
  // reports names the manifest knows, else by position (the manifest lists them in order).
  const names = (model.outputDetails ?? []).map((d) => d.name);
  const order = spec.outputs.map((o, i) => {
    const at = names.findIndex((n) => n === o.name || n === o.tensor);
    return at >= 0 ? at : i;
  });
  return async (data) => {
    const raw = await model.run([{ data, shape: spec.input.shape }]);
    return order.map((at) => raw[at]);
  };
}

/** The bundle's sample: {pixels: Float32Array, expected: {role: typed array}}. */
export async function readSample(bundle) {
  const sample = need(bundle.manifest, "sample", "the \"run sample\" button");
  const input = need(bundle.manifest, "sample.input.file", "the \"run sample\" button");
  const pixels = typedView(await bundle.file(input), sample.input.dtype ?? "float32", input);
  const expected = {};
  for (const o of sample.outputs ?? []) {
    expected[o.role] = typedView(await bundle.file(o.file), o.dtype, o.file);
  }
  return { pixels, expected, rtol: sample.rtol ?? 1e-4, judgedOn: sample.judged_on ?? "max" };
}

/** The sample's own error measure: |a - b| / max |b|, its largest value, or its mean
 * for `judgedOn` "mean" (int8 files, whose kernels may round differently). */
export function relativeError(actual, expected, judgedOn = "max") {
  let largest = 0;
  let sum = 0;
  let scale = 0;
  for (let i = 0; i < expected.length; i += 1) {
    const diff = Math.abs(Number(actual[i]) - Number(expected[i]));
    largest = Math.max(largest, diff);
    sum += diff;
    scale = Math.max(scale, Math.abs(Number(expected[i])));
  }
  const error = judgedOn === "mean" ? sum / Math.max(1, expected.length) : largest;
  return scale ? error / scale : error;
}

export function softmax(logits) {
  const max = Math.max(...logits);
  const exps = Array.from(logits, (x) => Math.exp(x - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
}
