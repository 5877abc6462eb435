// The portrait demo: a segmentation bundle on camera frames or a picked photo, with the
// mask as a background blur, a replaced background or an overlay, and MediaPipe's
// selfie model (LiteRT.js) on the same frames for comparison; ms per frame of each.
//
// URL parameters: bundle (folder with bundle.json, default models/portrait/), backend
// (wasm | webgpu), sample=1 (run the bundle's sample input once loaded), mediapipe=0
// (no MediaPipe model). Frames are scaled (not cropped) to each model's input size, so
// each mask covers the whole frame.

import { Bundle } from "./lib/bundle.js";
import { busy, bundleUrl, byteProgress, element, fail, publish, startPage } from "./lib/demo_pages.js";
import { frameAt, imageToPixels, readSample, relativeError, VisionModel } from "./lib/demo_vision.js";
import { compose, pixelsToCanvas } from "./lib/portrait_compose.js";
import { SelfieModel } from "./lib/portrait_selfie.js";
import { fmt } from "./lib/ui.js";

const { params, flag } = startPage();
const status = element("status");
const say = (text) => { status.textContent = text; };
const state = { bundle: null, model: null, selfie: null, stream: null, times: { bundle: [], mediapipe: [] } };

function recordMs(which, ms) {
  const list = state.times[which];
  list.push(ms);
  if (list.length > 30) list.shift();
  element(`ms-${which}`).textContent = fmt(list.reduce((a, b) => a + b, 0) / list.length, 1);
}

/** The bundle's mask for an RGBA frame at the model's size, timed. */
async function segment(image) {
  const pre = state.model.spec.pre;
  const pixels = imageToPixels(image, pre);
  const { outputs, ms } = await state.model.run(pixels);
  recordMs("bundle", ms);
  return { pixels, mask: outputs.mask ?? Object.values(outputs)[0], ms };
}

/** MediaPipe's mask for `source`, timed; null when it is off. */
async function selfieMask(source) {
  if (!state.selfie || !element("mediapipe").checked) return null;
  const { height, width } = state.selfie;
  const input = state.selfie.pixels(frameAt(source, width, height, { crop: false }));
  const result = await state.selfie.run(input);
  recordMs("mediapipe", result.ms);
  return { input, ...result };
}

/** One frame through both models, drawn with the chosen effect at `width` x `height`. */
async function processFrame(source, width, height) {
  const pre = state.model.spec.pre;
  const effect = element("effect").value;
  const result = await segment(frameAt(source, pre.width, pre.height, { crop: false }));
  compose(element("out-bundle"), source, result.mask.data, pre.width, pre.height, { effect, width, height });
  const selfie = await selfieMask(source);
  if (selfie) {
    compose(element("out-mediapipe"), source, selfie.mask, state.selfie.width, state.selfie.height, { effect, width, height });
  }
  return { ...result, selfie };
}

function displaySize(w, h, max = 640) {
  const scale = Math.min(1, max / Math.max(w, h));
  return [Math.round(w * scale), Math.round(h * scale)];
}

function outputRecord(result, extra = {}) {
  const { mask } = result;
  return { role: "mask", name: mask.name, shape: mask.shape, values: Array.from(mask.data, Number),
    ms: result.ms, backend: state.model.backend, ...extra };
}

function exposeSelfie(selfie) {
  window.__selfie = selfie ? {
    input: { shape: [1, state.selfie.height, state.selfie.width, 3], values: Array.from(selfie.input) },
    output: { shape: selfie.shape, values: Array.from(selfie.mask) }, ms: selfie.ms } : null;
}

async function runSample() {
  busy();
  say("running the bundle's sample input");
  const sample = await readSample(state.bundle);
  const pre = state.model.spec.pre;
  const { outputs, ms } = await state.model.run(sample.pixels);
  recordMs("bundle", ms);
  const mask = outputs.mask ?? Object.values(outputs)[0];
  const expected = sample.expected.mask;
  const error = expected ? relativeError(mask.data, expected, sample.judgedOn) : null;
  const matches = error !== null && error <= sample.rtol;
  element("check").innerHTML = "";
  element("check").append(Object.assign(document.createElement("span"), {
    className: matches ? "ok" : "bad",
    textContent: error === null ? "no recorded sample output" :
      `sample ${matches ? "matches" : "differs"}: error ${error.toExponential(2)} (rtol ${sample.rtol})` }));
  const image = pixelsToCanvas(sample.pixels, pre);
  const [w, h] = displaySize(pre.width * 8, pre.height * 8);
  compose(element("out-bundle"), image, mask.data, pre.width, pre.height, { effect: element("effect").value, width: w, height: h });
  const selfie = await selfieMask(image);
  if (selfie) {
    compose(element("out-mediapipe"), image, selfie.mask, state.selfie.width, state.selfie.height,
      { effect: element("effect").value, width: w, height: h });
  }
  exposeSelfie(selfie);
  say(`sample done in ${fmt(ms, 2)} ms`);
  publish(outputRecord({ mask, ms }, { source: "sample", sample: { relative_error: error, rtol: sample.rtol, matches } }));
}

async function runPhoto(file) {
  busy();
  say(`segmenting ${file.name}`);
  const bitmap = await createImageBitmap(file);
  const [w, h] = displaySize(bitmap.width, bitmap.height);
  const result = await processFrame(bitmap, w, h);
  exposeSelfie(result.selfie);
  say(`${file.name}: ${fmt(result.ms, 2)} ms`);
  publish(outputRecord(result, { source: "photo",
    input: { shape: state.model.spec.input.shape, values: Array.from(result.pixels) } }));
}

async function cameraLoop() {
  const video = element("video");
  let frames = 0;
  while (state.stream) {
    if (video.readyState >= 2) {
      const [w, h] = displaySize(video.videoWidth, video.videoHeight);
      await processFrame(video, w, h);
      frames += 1;
      if (frames === 3) publish({ source: "camera", frames });
      say(`camera: ${frames} frames`);
    }
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
}

async function toggleCamera() {
  const button = element("camera");
  if (state.stream) {
    for (const track of state.stream.getTracks()) track.stop();
    state.stream = null;
    button.textContent = "Start camera";
    return;
  }
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("this browser gives no camera here (getUserMedia needs https or localhost): pick a photo instead");
  }
  busy();
  state.stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "user" }, audio: false });
  const video = element("video");
  video.srcObject = state.stream;
  await video.play();
  button.textContent = "Stop camera";
  cameraLoop().catch(fail);
}

async function load() {
  const base = bundleUrl(params.get("bundle") ?? "models/portrait/");
  const backend = params.get("backend") ?? "wasm";
  element("bundle").value = base;
  element("backend").value = backend;
  say(`loading ${base}`);
  const bundle = await Bundle.open(base);
  state.bundle = bundle;
  const progress = byteProgress(element("progress"), element("progress-text"), bundle.modelBytes);
  state.model = await VisionModel.create(bundle, { kind: "image-segmentation", backend,
    threads: Number(params.get("threads") ?? 1), onProgress: progress.onProgress });
  progress.done();
  element("bundle-backend").textContent = state.model.backend;
  if (params.get("mediapipe") === "0") {
    element("mediapipe").checked = false;
  } else {
    say("loading MediaPipe's selfie model");
    state.selfie = await SelfieModel.create();
  }
  element("card-mediapipe").hidden = !state.selfie;
  for (const id of ["camera", "photo", "sample"]) element(id).disabled = false;
  say(`ready: ${bundle.manifest.source ?? base} on ${state.model.backend}`);
  document.body.dataset.state = "ready";
}

element("pick").addEventListener("submit", (event) => {
  event.preventDefault();
  const next = new URLSearchParams(params);
  next.set("bundle", element("bundle").value);
  next.set("backend", element("backend").value);
  location.search = next.toString();
});
element("sample").addEventListener("click", () => runSample().catch(fail));
element("photo").addEventListener("change", (event) => {
  const [file] = event.target.files;
  if (file) runPhoto(file).catch(fail);
});
element("camera").addEventListener("click", () => toggleCamera().catch(fail));

load().then(() => (flag("sample") ? runSample() : null)).catch(fail);
