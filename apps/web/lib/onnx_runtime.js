// onnxruntime-web, loaded once per page for one backend: "wasm" (the CPU build: WASM
// SIMD, multi-threaded when the page is cross-origin isolated) or "webgpu" (its own,
// larger build; only where the browser exposes navigator.gpu). The files are served from
// the app's own node_modules (npm ci), never from a CDN: the app works offline.

import { BundleError } from "./bundle.js";

const ORT_DIR = new URL("../node_modules/onnxruntime-web/dist/", import.meta.url).href;
const BUILDS = { wasm: "ort.wasm.min.mjs", webgpu: "ort.webgpu.min.mjs" };
let loaded = null; // {backend, ort}

/** Threads the wasm backend can use here: one unless the page is cross-origin isolated
 * (SharedArrayBuffer), at most `wanted`. */
export function usableThreads(wanted) {
  return globalThis.crossOriginIsolated ? Math.max(1, wanted) : 1;
}

export async function loadOrt(backend, threads = 1) {
  if (!(backend in BUILDS)) {
    throw new BundleError(`backend ${backend} is not one of ${Object.keys(BUILDS).join(", ")}`);
  }
  if (backend === "webgpu" && !navigator.gpu) {
    throw new BundleError("this browser has no WebGPU (navigator.gpu): choose the wasm backend");
  }
  if (loaded) {
    if (loaded.backend !== backend) {
      throw new BundleError(`onnxruntime-web is already loaded for ${loaded.backend}: reload ` +
        `the page to switch to ${backend}`);
    }
    return loaded.ort;
  }
  const ort = await import(ORT_DIR + BUILDS[backend]);
  ort.env.wasm.wasmPaths = ORT_DIR;
  ort.env.wasm.numThreads = usableThreads(threads);
  ort.env.logLevel = "error";
  loaded = { backend, ort };
  return ort;
}

/** An InferenceSession over model bytes; `externalData` [{path, data}] for a model whose
 * weights lie in a .data file beside it. A file the runtime cannot read is named. */
export async function createOnnxSession(ort, bytes, { backend, externalData = [], name }) {
  const options = {
    executionProviders: backend === "webgpu" ? ["webgpu", "wasm"] : ["wasm"],
    graphOptimizationLevel: "all",
  };
  if (externalData.length) options.externalData = externalData;
  try {
    return await ort.InferenceSession.create(new Uint8Array(bytes), options);
  } catch (error) {
    throw new BundleError(`${name} could not be loaded by onnxruntime-web (` +
      `${String(error.message ?? error).split("\n")[0].slice(0, 200)}): re-export it with ` +
      "`toolkit export onnx`");
  }
}
