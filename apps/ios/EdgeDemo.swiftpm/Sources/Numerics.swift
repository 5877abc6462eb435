import Foundation

/// The few formulas the app applies to a model's numbers (the same as the Android app's
/// Numerics.kt and the Python bench's toolkit/bench/timing.py).
enum Numerics {
    /// softmax(z)_i = exp(z_i - max z) / sum_j exp(z_j - max z); the shift avoids overflow.
    static func softmax(_ logits: [Float]) -> [Float] {
        guard let top = logits.max() else { return [] }
        let e = logits.map { exp(Double($0 - top)) }
        let sum = e.reduce(0, +)
        return e.map { Float($0 / sum) }
    }

    /// Indices of the k largest values, largest first.
    static func topK(_ values: [Float], _ k: Int) -> [Int] {
        Array(values.indices.sorted { values[$0] > values[$1] }.prefix(k))
    }

    /// q-th percentile (0..100), linear between closest ranks (numpy's default).
    static func percentile(_ values: [Double], _ q: Double) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return .nan }
        let rank = Double(sorted.count - 1) * q / 100
        let low = Int(rank.rounded(.down))
        let high = min(low + 1, sorted.count - 1)
        return sorted[low] + (rank - Double(low)) * (sorted[high] - sorted[low])
    }

    /// max (or mean) |got - want| / max |want|, as the bundle's sample is judged.
    static func relativeError(_ got: [Float], _ want: [Float], judgedOn: String) -> Double {
        guard got.count == want.count else { return .infinity }
        guard !got.isEmpty else { return 0 }
        let diff = zip(got, want).map { abs(Double($0) - Double($1)) }
        let error = judgedOn == "mean" ? diff.reduce(0, +) / Double(diff.count) : diff.max()!
        let scale = want.map { abs(Double($0)) }.max()!
        return scale > 0 ? error / scale : error
    }
}

/// Per-run latencies summarised like toolkit/bench/timing.py (sample std, n - 1).
struct LatencyStats {
    let count: Int
    let meanMs: Double
    let stdMs: Double
    let minMs: Double
    let maxMs: Double
    let p50Ms: Double
    let p90Ms: Double

    init(samplesMs: [Double]) {
        count = samplesMs.count
        meanMs = samplesMs.reduce(0, +) / Double(max(count, 1))
        let mean = meanMs
        stdMs = count > 1 ? (samplesMs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(count - 1)).squareRoot() : 0
        minMs = samplesMs.min() ?? .nan
        maxMs = samplesMs.max() ?? .nan
        p50Ms = Numerics.percentile(samplesMs, 50)
        p90Ms = Numerics.percentile(samplesMs, 90)
    }
}
