// A model of a bench job as the page times it, mirroring the Python bench
// (toolkit/bench/runtimes.py):
//   LLM:    prefill = the job's prompt from an empty cache at position 0; step = one
//           decode token at position P over that prefilled cache (every run does the
//           same work); outputs = the prompt's last-token logits.
//   other:  step = one run on the job's fixed inputs (the bytes the Python bench feeds,
//           served by the bench server); outputs = the first output.

import { Bundle, BundleError, fetchBytes } from "./bundle.js";
import { argmax, LlmSession } from "./llm.js";
import { createLiteRtModel, loadLiteRtJs } from "./litert_runtime.js";
import { createOnnxSession, loadOrt } from "./onnx_runtime.js";

const TYPED = { float32: Float32Array, float16: Uint16Array, int64: BigInt64Array, int32: Int32Array, int8: Int8Array, uint8: Uint8Array };

/** Whether the browser has a real GPU adapter: a fallback (software, e.g. SwiftShader
 * in a headless Chromium) adapter would time the CPU emulating a GPU. */
export async function hasHardwareGpu() {
  if (!globalThis.navigator?.gpu) return false;
  try {
    const adapter = await navigator.gpu.requestAdapter();
    return Boolean(adapter) && !(adapter.info?.isFallbackAdapter ?? adapter.isFallbackAdapter)
      && !/swiftshader/i.test(`${adapter.info?.vendor} ${adapter.info?.architecture} ${adapter.info?.description}`);
  } catch {
    return false;
  }
}

/** The backend a job's option names, here: "auto" takes WebGPU where the browser has a
 * hardware GPU adapter, WASM otherwise. */
export async function pickBackend(runtime, wanted) {
  const gpu = wanted === "webgpu" || (wanted === "auto" && (await hasHardwareGpu()));
  if (runtime === "litert") return gpu ? "litert-js-webgpu" : "litert-js";
  return gpu ? "webgpu" : "wasm";
}

async function fixedInputs(model) {
  return Promise.all(model.inputs.map(async (input) => {
    const Typed = TYPED[input.dtype];
    if (!Typed) throw new BundleError(`${model.name}: input ${input.name} has dtype ${input.dtype}, which the page cannot feed`);
    return { ...input, data: new Typed(await fetchBytes(input.url)) };
  }));
}

/** {backend, llm, first(), step(), prefill()|null, outputs() -> {shape, values}} */
export async function createBenchModel(model, job) {
  const bundle = new Bundle(model.base, model.manifest);
  const backend = await pickBackend(model.runtime, job.options.backend);
  const threads = job.options.threads;
  if (bundle.kind === "llm") {
    const llm = await LlmSession.create(bundle, { backend, threads });
    return llmModel(llm, job.prompt, backend);
  }
  const inputs = await fixedInputs(model);
  const bytes = await bundle.file(model.manifest.model.file);
  if (model.runtime === "litert") {
    const litert = await loadLiteRtJs(threads);
    const compiled = await createLiteRtModel(litert, bytes, {
      name: model.name, accelerator: backend === "litert-js-webgpu" ? "webgpu" : "wasm" });
    const run = () => compiled.run(inputs);
    return visionModel(backend, run, async () => (await run())[0]);
  }
  const ort = await loadOrt(backend, threads);
  const session = await createOnnxSession(ort, bytes, { backend, name: model.name });
  const feeds = Object.fromEntries(inputs.map((i) => [i.name, new ort.Tensor(i.dtype, i.data, i.shape)]));
  const run = () => session.run(feeds);
  return visionModel(backend, run, async () => {
    const out = (await run())[session.outputNames[0]];
    return { data: out.data, shape: out.dims };
  });
}

function visionModel(backend, run, first) {
  return {
    backend, llm: null, prefill: null, first: run, step: run,
    async outputs() {
      const { data, shape } = await first();
      return { shape: [...shape], values: Array.from(data, Number) };
    },
  };
}

function llmModel(llm, prompt, backend) {
  let prefilled = null;
  let token = null;
  const prefill = async () => {
    const result = await llm.call(prompt, 0, llm.emptyCache());
    prefilled = result;
    return result;
  };
  const step = async () => {
    if (!prefilled) await prefill();
    if (token === null) token = argmax(prefilled.logits.subarray(prefilled.logits.length - llm.contract.vocab));
    return llm.call([token], prompt.length, prefilled.cache);
  };
  return {
    backend,
    llm: { prompt_tokens: prompt.length, max_context: llm.contract.maxContext },
    first: prefill, step, prefill,
    async outputs() {
      const { logits } = await prefill();
      const vocab = llm.contract.vocab;
      return { shape: [1, vocab], values: Array.from(logits.subarray(logits.length - vocab)) };
    },
  };
}
