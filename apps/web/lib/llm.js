// An exported LLM (an ONNX bundle's "main" signature) behind the decoder contract the
// toolkit exports (export/llm/decoder.py, bundle.json's "cache" section):
//
//   inputs:  input_ids [1, T] int64, position [1] int64, past keys/values
//   outputs: logits [1, T, V], present keys/values
//
// The cache is one [1, kv_heads, max_context, head_dim] tensor per layer and role
// ("per_layer": past_key.i -> present_key.i) or one stacked [layers, ...] tensor per role.
// The tokens at positions p .. p+T-1 write their keys/values at those rows; present_*
// feed the next call's past_*. onnxruntime-web returns new output tensors, so the cache
// is carried by swapping them in (a copy in and out of the wasm heap per call; the
// Python runner binds the buffers in place instead).

import { BundleError } from "./bundle.js";
import { createOnnxSession, loadOrt } from "./onnx_runtime.js";

const PAST = { past_keys: "present_keys", past_values: "present_values" };

/** The manifest's signature as {ids, position, logits, pairs: [[past, present, shape,
 * dtype]]}: each past tensor paired with the present tensor of the same role and layer. */
export function cacheContract(manifest) {
  const signature = manifest.signatures?.main;
  if (!signature) {
    throw new BundleError("this bundle has no \"main\" signature (a LiteRT LLM bundle has " +
      "prefill/decode ones): the web app runs ONNX LLM bundles; export with `toolkit " +
      "export onnx --bundle DIR`");
  }
  const byRole = (list, role) => list.filter((t) => t.role === role);
  const one = (list, role) => {
    const found = byRole(list, role);
    if (found.length !== 1) throw new BundleError(`bundle.json's main signature has no single ${role}`);
    return found[0];
  };
  const pairs = [];
  for (const [pastRole, presentRole] of Object.entries(PAST)) {
    const presents = byRole(signature.outputs, presentRole);
    for (const past of byRole(signature.inputs, pastRole)) {
      const present = presents.find((t) => (t.layer ?? null) === (past.layer ?? null));
      if (!present) throw new BundleError(`bundle.json pairs no ${presentRole} with ${past.name}`);
      pairs.push({ past: past.name, present: present.name, shape: past.shape, dtype: past.dtype });
    }
  }
  return {
    ids: one(signature.inputs, "input_ids").name,
    position: one(signature.inputs, "position").name,
    logits: one(signature.outputs, "logits").name,
    pairs,
    maxContext: manifest.max_context,
    vocab: manifest.vocab_size,
  };
}

/** Index of the largest value (ties: the first, as numpy's argmax). */
export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i += 1) if (values[i] > values[best]) best = i;
  return best;
}

export class LlmSession {
  constructor(ort, session, contract) {
    this.ort = ort;
    this.session = session;
    this.contract = contract;
    this.position = 0;
    this.cache = this.emptyCache();
  }

  /** The bundle's model (and external data) fetched, checked and loaded. */
  static async create(bundle, { backend = "wasm", threads = 1, onProgress } = {}) {
    const contract = cacheContract(bundle.manifest);
    const ort = await loadOrt(backend, threads);
    const model = bundle.manifest.model;
    const bytes = await bundle.file(model.file, onProgress);
    const externalData = [];
    for (const name of model.external_data ?? []) {
      externalData.push({ path: name, data: new Uint8Array(await bundle.file(name, onProgress)) });
    }
    const session = await createOnnxSession(ort, bytes, { backend, externalData, name: model.file });
    return new LlmSession(ort, session, contract);
  }

  emptyCache() {
    const cache = {};
    for (const { past, shape, dtype } of this.contract.pairs) {
      const size = shape.reduce((a, b) => a * b, 1);
      const data = dtype === "float16" ? new Uint16Array(size) : new Float32Array(size);
      cache[past] = new this.ort.Tensor(dtype, data, shape);
    }
    return cache;
  }

  reset() {
    this.position = 0;
    this.cache = this.emptyCache();
  }

  /** Runs `ids` at `position` over `cache`; {logits: Float32Array [T * V], cache}. */
  async call(ids, position, cache) {
    const { contract, ort } = this;
    if (position + ids.length > contract.maxContext) {
      throw new BundleError(`${position + ids.length} tokens do not fit the model's context ` +
        `of ${contract.maxContext}: start a new conversation or export with a larger --max-context`);
    }
    const feeds = {
      [contract.ids]: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]),
      [contract.position]: new ort.Tensor("int64", BigInt64Array.of(BigInt(position)), [1]),
      ...cache,
    };
    const out = await this.session.run(feeds);
    const next = {};
    for (const { past, present } of contract.pairs) next[past] = out[present];
    return { logits: out[contract.logits].data, cache: next };
  }

  /** Appends `ids` to the conversation; the logits of its last token. */
  async append(ids) {
    const { logits, cache } = await this.call(ids, this.position, this.cache);
    this.cache = cache;
    this.position += ids.length;
    const vocab = this.contract.vocab;
    return logits.subarray(logits.length - vocab);
  }

  /** Greedy generation after `promptIds`: calls onToken(id, {ttftMs, decodeMs}) per new
   * token, stops at an end id, `maxNew` tokens, or the context; returns the new ids. */
  async generate(promptIds, maxNew, { eosIds = [], onToken = () => {}, shouldStop = () => false } = {}) {
    const start = performance.now();
    let logits = await this.append(promptIds);
    const ttftMs = performance.now() - start;
    const out = [];
    let decodeStart = performance.now();
    while (out.length < maxNew && !shouldStop()) {
      const token = argmax(logits);
      out.push(token);
      onToken(token, { ttftMs, decodeMs: performance.now() - decodeStart, count: out.length });
      if (eosIds.includes(token) || this.position + 1 > this.contract.maxContext) break;
      if (out.length === 1) decodeStart = performance.now();
      logits = await this.append([token]);
    }
    return out;
  }
}
