// The bench's summary statistics, defined exactly as the Python bench's
// (toolkit/bench/timing.py): percentiles interpolate linearly between closest ranks
// (numpy's default), the standard deviation is the sample one (n - 1).

/** q-th percentile (0..100) of `values`. */
export function percentile(values, q) {
  if (values.length === 0) throw new Error("percentile of an empty series");
  const ordered = [...values].sort((a, b) => a - b);
  const rank = ((ordered.length - 1) * q) / 100;
  const low = Math.floor(rank);
  const high = Math.min(low + 1, ordered.length - 1);
  return ordered[low] + (rank - low) * (ordered[high] - ordered[low]);
}

/** {count, mean_ms, std_ms, min_ms, max_ms, p50_ms, p90_ms, p99_ms} of samples in ms. */
export function summarize(samplesMs) {
  const n = samplesMs.length;
  const mean = samplesMs.reduce((a, b) => a + b, 0) / n;
  const variance = n > 1 ? samplesMs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1) : 0;
  return {
    count: n, mean_ms: mean, std_ms: Math.sqrt(variance),
    min_ms: Math.min(...samplesMs), max_ms: Math.max(...samplesMs),
    p50_ms: percentile(samplesMs, 50), p90_ms: percentile(samplesMs, 90),
    p99_ms: percentile(samplesMs, 99),
  };
}

/** A seeded generator of floats in [0, 1) (mulberry32): the shuffled order of each timed
 * round is the same on every device for one seed. */
export function seededRandom(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function shuffle(items, random) {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i -= 1) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}
