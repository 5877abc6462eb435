// LiteRT.js (@litertjs/core), loaded once per page, runs .tflite files on its XNNPACK
// wasm CPU backend ("litert-js" in bench results) or WebGPU. Its wasm files are served
// from the app's node_modules. Tensors are freed by hand (LiteRT.js has no GC hook).

import { BundleError } from "./bundle.js";

const WASM_DIR = new URL("../node_modules/@litertjs/core/wasm/", import.meta.url).href;
let loading = null;

export async function loadLiteRtJs(threads = 1) {
  if (!loading) {
    loading = (async () => {
      const litert = await import("@litertjs/core");
      const wantThreads = threads > 1 && Boolean(globalThis.crossOriginIsolated);
      try {
        await litert.loadLiteRt(WASM_DIR, { threads: wantThreads });
      } catch (error) {
        // LiteRT.js's threaded build needs relaxed SIMD, which Safari lacks today: it
        // refuses before loading anything, and one thread is what such a browser gets
        if (!wantThreads) throw error;
        await litert.loadLiteRt(WASM_DIR);
      }
      return litert;
    })();
  }
  return loading;
}

/** A compiled model over .tflite bytes, with run(inputs: TypedArray[] with shapes) ->
 * [{data: TypedArray, shape}] copying outputs out and freeing every tensor. */
export async function createLiteRtModel(litert, bytes, { name, accelerator = "wasm" }) {
  let model;
  try {
    model = await litert.loadAndCompile(new Uint8Array(bytes), { accelerator });
  } catch (error) {
    throw new BundleError(`${name} could not be loaded by LiteRT.js (` +
      `${String(error.message ?? error).split("\n")[0].slice(0, 200)}): re-export it with ` +
      "`toolkit export tflite`");
  }
  return {
    inputDetails: model.getInputDetails(),
    outputDetails: model.getOutputDetails(),
    async run(inputs) {
      const tensors = inputs.map(({ data, shape }) => new litert.Tensor(data, shape));
      try {
        const outputs = await model.run(tensors);
        try {
          return outputs.map((t) => ({ data: t.toTypedArray().slice(), shape: [...t.type.layout.dimensions] }));
        } finally {
          for (const t of outputs) t.delete();
        }
      } finally {
        for (const t of tensors) t.delete();
      }
    },
    delete() {
      model.delete();
    },
  };
}
