// The bench protocol of `toolkit bench` (toolkit/bench/timing.py and session.py), run in
// the page: per model load time and first inference; then warm-up runs and timed rounds
// that run every model once in a seeded shuffled order (a slow drift of the device hits
// every model alike) until every model has `runs` runs and the slowest has
// `min_seconds` of timed time; then the LLMs' prefill the same way (1 warm-up,
// `prefill_runs` runs). The page sends raw samples: the CLI computes the statistics
// with the same code as for host runs.

import { createBenchModel } from "./bench_models.js";
import { seededRandom, shuffle } from "./stats.js";

async function timed(fn) {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

export async function interleaved(runners, { warmup, runs, minSeconds, seed, onRound }) {
  const names = Object.keys(runners);
  for (const name of names) for (let i = 0; i < warmup; i += 1) await runners[name]();
  const random = seededRandom(seed);
  const samples = Object.fromEntries(names.map((n) => [n, []]));
  const totals = Object.fromEntries(names.map((n) => [n, 0]));
  let rounds = 0;
  const done = () => rounds >= runs && Math.max(...Object.values(totals)) >= minSeconds * 1000;
  while (!done()) {
    for (const name of shuffle(names, random)) {
      const ms = await timed(runners[name]);
      samples[name].push(ms);
      totals[name] += ms;
    }
    rounds += 1;
    onRound?.(rounds);
  }
  return samples;
}

/** Device facts as the browser reports them. */
export async function deviceFacts() {
  let gpu = null;
  try {
    const adapter = await navigator.gpu?.requestAdapter();
    if (adapter) gpu = `${adapter.info?.vendor ?? ""} ${adapter.info?.architecture ?? ""}`.trim() || "yes";
  } catch { /* no adapter: gpu stays null */ }
  return {
    gpu_adapter: gpu,
    user_agent: navigator.userAgent,
    platform: navigator.userAgentData?.platform ?? navigator.platform ?? null,
    mobile: navigator.userAgentData?.mobile ?? null,
    hardware_concurrency: navigator.hardwareConcurrency ?? null,
    device_memory_gb: navigator.deviceMemory ?? null,
    cross_origin_isolated: Boolean(globalThis.crossOriginIsolated),
    webgpu: Boolean(navigator.gpu),
    screen: `${screen.width}x${screen.height}@${devicePixelRatio}`,
  };
}

/** The results document the bench server accepts (schema in toolkit/bench/device/results.py). */
export async function runJob(job, onStatus = () => {}) {
  const o = job.options;
  const models = [];
  const instances = {};
  for (const model of job.models) {
    onStatus(`loading ${model.name}`);
    const start = performance.now();
    const instance = await createBenchModel(model, job);
    const loadSeconds = (performance.now() - start) / 1000;
    onStatus(`first inference of ${model.name}`);
    const firstMs = await timed(instance.first);
    instances[model.name] = instance;
    models.push({ name: model.name, runtime: model.runtime, backend: instance.backend,
      load_seconds: loadSeconds, first_inference_ms: firstMs, llm: instance.llm });
  }
  const steps = await interleaved(
    Object.fromEntries(Object.entries(instances).map(([n, m]) => [n, m.step])),
    { warmup: o.warmup, runs: o.runs, minSeconds: o.min_seconds, seed: o.seed,
      onRound: (r) => onStatus(`timed round ${r}`) });
  const llms = Object.entries(instances).filter(([, m]) => m.llm);
  const prefills = llms.length ? await interleaved(
    Object.fromEntries(llms.map(([n, m]) => [n, m.prefill])),
    { warmup: 1, runs: o.prefill_runs, minSeconds: 0, seed: o.seed,
      onRound: (r) => onStatus(`prefill round ${r}`) }) : {};
  for (const model of models) {
    model.samples_ms = steps[model.name];
    model.prefill_samples_ms = prefills[model.name] ?? null;
    onStatus(`outputs of ${model.name}`);
    model.output = await instances[model.name].outputs();
  }
  return { schema: "edge-toolkit-browser-bench", version: 1, job: job.id,
    device: await deviceFacts(), models, error: null };
}
