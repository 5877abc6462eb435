// The V-MoE demo: a drawing or a picture through up to three image-classification
// bundles side by side (dense / mixture of experts / experts dropped), each preprocessed
// as its own manifest says (size, channels, layout), with its class, probabilities,
// router choice and ms per image.
//
// URL parameters: bundle (repeat it, up to three) or bundles (comma separated), default
// models/vmoe/; backend (wasm | webgpu); sample=1 (run every bundle's sample input once
// loaded).

import { Bundle, BundleError } from "./lib/bundle.js";
import { busy, bundleUrl, byteProgress, element, fail, publish, startPage } from "./lib/demo_pages.js";
import { frameAt, imageToPixels, readSample, relativeError, VisionModel } from "./lib/demo_vision.js";
import { emptyCard, showResult } from "./lib/vmoe_cards.js";
import { drawingPad } from "./lib/vmoe_draw.js";

const MAX_BUNDLES = 3;
const { params, flag } = startPage();
const status = element("status");
const say = (text) => { status.textContent = text; };
const pad = drawingPad(element("draw"));
const loaded = []; // {base, bundle, model, body}

function bundleList(searchParams) {
  let list = searchParams.getAll("bundle");
  if (!list.length && searchParams.get("bundles")) list = searchParams.get("bundles").split(/[,\n]/);
  list = list.map((s) => s.trim()).filter(Boolean);
  if (!list.length) list = ["models/vmoe/"];
  if (list.length > MAX_BUNDLES) {
    throw new BundleError(`${list.length} bundles given; the page compares up to ${MAX_BUNDLES}: drop some`);
  }
  return list.map(bundleUrl);
}

/** One run of every bundle on `source` (a canvas or picture), each at its own size. */
async function classify(source, what) {
  busy();
  say(`classifying ${what}`);
  const results = [];
  for (const entry of loaded) {
    const pre = entry.model.spec.pre;
    const pixels = imageToPixels(frameAt(source, pre.width, pre.height), pre,
      { invert: what !== "the drawing" && element("invert").checked });
    results.push(await runOne(entry, pixels, null, { input: { shape: entry.model.spec.input.shape, values: Array.from(pixels) } }));
  }
  say(`${what}: done`);
  publish({ source: what, bundles: results });
}

async function runOne(entry, pixels, sample, extra = {}) {
  const { outputs, ms } = await entry.model.run(pixels);
  const logits = outputs.logits ?? Object.values(outputs)[0];
  const experts = entry.bundle.manifest.experts ? outputs.experts : null;
  let check = null;
  let sampleCheck = null;
  if (sample) {
    const errors = {};
    let matches = true;
    for (const [role, expected] of Object.entries(sample.expected)) {
      const got = outputs[role]?.data;
      const integer = ["int32", "int64"].includes(outputs[role]?.dtype);
      errors[role] = got ? relativeError(got, expected, integer ? "max" : sample.judgedOn) : null;
      matches &&= errors[role] !== null && (integer ? errors[role] === 0 : errors[role] <= sample.rtol);
    }
    sampleCheck = { relative_errors: errors, rtol: sample.rtol, matches };
    check = { matches, text: `sample ${matches ? "matches" : "differs"}: ` +
      Object.entries(errors).map(([r, e]) => `${r} ${e === null ? "missing" : e.toExponential(2)}`).join(", ") };
  }
  const shown = showResult(entry.body, entry.bundle.manifest, { logits: logits.data, experts: experts?.data, ms, check });
  return {
    bundle: entry.base, backend: entry.model.backend, ms, label: shown.label,
    logits: { shape: logits.shape, values: Array.from(logits.data, Number) },
    experts: experts ? { shape: experts.shape, values: Array.from(experts.data, Number) } : null,
    ...(sampleCheck ? { sample: sampleCheck } : {}), ...extra,
  };
}

async function runSamples() {
  busy();
  say("running each bundle's sample input");
  const results = [];
  for (const entry of loaded) {
    const sample = await readSample(entry.bundle);
    results.push(await runOne(entry, sample.pixels, sample));
  }
  say("samples done");
  publish({ source: "sample", bundles: results });
}

async function load() {
  const bases = bundleList(params);
  const backend = params.get("backend") ?? "wasm";
  element("bundles").value = bases.join("\n");
  element("backend").value = backend;
  const bundles = [];
  for (const base of bases) {
    say(`opening ${base}`);
    bundles.push(await Bundle.open(base));
  }
  const total = bundles.reduce((sum, b) => sum + b.modelBytes, 0);
  const progress = byteProgress(element("progress"), element("progress-text"), total);
  for (const [i, bundle] of bundles.entries()) {
    say(`loading ${bases[i]}`);
    const model = await VisionModel.create(bundle, { kind: "image-classification", backend,
      threads: Number(params.get("threads") ?? 1), onProgress: progress.onProgress });
    const title = `${bases[i]} (${bundle.manifest.source ?? "?"})`;
    loaded.push({ base: bases[i], bundle, model, body: emptyCard(element("cards"), title, model.backend) });
  }
  progress.done();
  for (const id of ["classify", "photo", "sample"]) element(id).disabled = false;
  const dataset = bundles.find((b) => b.manifest.preprocessing?.dataset_note)?.manifest.preprocessing.dataset_note;
  say(`ready: ${loaded.length} bundle(s)${dataset ? `; ${dataset}` : ""}`);
  document.body.dataset.state = "ready";
}

element("pick").addEventListener("submit", (event) => {
  event.preventDefault();
  const next = new URLSearchParams();
  for (const line of element("bundles").value.split("\n")) if (line.trim()) next.append("bundle", line.trim());
  next.set("backend", element("backend").value);
  location.search = next.toString();
});
element("clear").addEventListener("click", () => pad.clear());
element("classify").addEventListener("click", () => classify(pad.canvas, "the drawing").catch(fail));
element("sample").addEventListener("click", () => runSamples().catch(fail));
element("photo").addEventListener("change", async (event) => {
  const [file] = event.target.files;
  if (!file) return;
  try {
    await classify(await createImageBitmap(file), file.name);
  } catch (error) {
    fail(error);
  }
});

load().then(() => (flag("sample") ? runSamples() : null)).catch(fail);
