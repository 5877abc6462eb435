import CoreML
import SwiftUI

/// A tiny on-device bench, timed the way toolkit/bench/timing.py times a model: one first
/// run reported on its own (it pays for lazy allocations), the warm-up runs discarded,
/// then the timed runs one by one, summarised as mean, p50 and p90. The input is the
/// bundle's sample image (the model's exact input), so preprocessing is not in the
/// numbers. The compute units (CPU, GPU, Neural Engine) are Core ML's choice to make
/// within what is allowed here. "Check sample" compares Core ML's outputs on that image
/// with the PyTorch outputs the bundle recorded at export (SampleCheck).
struct BenchView: View {
    /// Which bundle, under which compute units: changing either compiles again.
    private struct LoadKey: Hashable {
        var url: URL?
        var units: Units
    }

    enum Units: String, CaseIterable, Identifiable {
        case all = "All"
        case cpuOnly = "CPU"
        case cpuAndGPU = "CPU + GPU"
        case cpuAndNeuralEngine = "CPU + ANE"

        var id: String { rawValue }

        var computeUnits: MLComputeUnits {
            switch self {
            case .all: return .all
            case .cpuOnly: return .cpuOnly
            case .cpuAndGPU: return .cpuAndGPU
            case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
            }
        }
    }

    private struct BenchResult {
        let firstMs: Double
        let warmup: Int
        let stats: LatencyStats
    }

    @State private var selected: URL?
    @State private var units: Units = .all
    @State private var state: LoadState = .idle
    @State private var warmup = 10
    @State private var runs = 50
    @State private var busy = false
    @State private var bench: BenchResult?
    @State private var check: SampleCheck.Result?
    @State private var error: String?

    var body: some View {
        NavigationStack {
            Form {
                BundlePicker(kinds: [Manifest.segmentation, Manifest.classification], selected: $selected)
                Section {
                    Picker("Compute units", selection: $units) {
                        ForEach(Units.allCases) { Text($0.rawValue).tag($0) }
                    }
                    .pickerStyle(.segmented)
                    ModelStatusView(state: state)
                }
                Section("Bench") {
                    Stepper("warm-up runs: \(warmup)", value: $warmup, in: 0...200, step: 5)
                    Stepper("timed runs: \(runs)", value: $runs, in: 1...1000, step: 10)
                    Button("Run bench") { start(bench: true) }
                        .disabled(state.runner == nil || busy)
                    Button("Check sample") { start(bench: false) }
                        .disabled(state.runner == nil || busy)
                    if busy { ProgressView() }
                    if let error { ErrorText(error) }
                }
                if let bench {
                    Section("Latency") {
                        let s = bench.stats
                        Text("\(Self.device()), iOS \(UIDevice.current.systemVersion), Core ML (\(units.rawValue))")
                            .font(.footnote)
                        Text(String(format: "first run %.2f ms, %d warm-up runs", bench.firstMs, bench.warmup))
                        Text(String(format: "%d runs: p50 %.2f ms, p90 %.2f ms", s.count, s.p50Ms, s.p90Ms))
                            .font(.headline)
                        Text(String(format: "mean %.2f ± %.2f ms, min %.2f, max %.2f", s.meanMs, s.stdMs, s.minMs, s.maxMs))
                    }
                }
                if let check {
                    Section(check.passed ? "Sample matches PyTorch" : "Sample MISMATCH") {
                        Text(String(format: "limit: relative error %g against PyTorch's outputs (the bundle's sample.rtol)", check.rtol)).font(.footnote)
                        ForEach(check.lines) { line in
                            Text("\(line.role): \(line.text)")
                                .foregroundStyle(line.passed ? Color.primary : Color.red)
                        }
                    }
                }
            }
            .navigationTitle("Bench")
        }
        .task(id: LoadKey(url: selected, units: units)) {
            state = .loading
            bench = nil
            check = nil
            state = await LoadState.load(selected, computeUnits: units.computeUnits)
        }
    }

    private func start(bench wantBench: Bool) {
        guard let runner = state.runner else { return }
        let warmupRuns = warmup
        let timedRuns = runs
        busy = true
        error = nil
        Task {
            do {
                if wantBench {
                    bench = try await Task.detached(priority: .userInitiated) {
                        try Self.time(runner, warmup: warmupRuns, runs: timedRuns)
                    }.value
                } else {
                    check = try await Task.detached(priority: .userInitiated) {
                        try SampleCheck.run(runner)
                    }.value
                }
            } catch {
                self.error = error.localizedDescription
            }
            busy = false
        }
    }

    private static func time(_ runner: VisionRunner, warmup: Int, runs: Int) throws -> BenchResult {
        // The sample image when the bundle has one, else mid-grey: for these fixed-shape
        // models the time depends on the shape, not on the values.
        let count = runner.inputShape.reduce(1, *)
        let input = try SampleCheck.input(runner)
            ?? [Float](repeating: runner.manifest.preprocessing.valueMax / 2, count: count)
        let first = DispatchTime.now()
        _ = try runner.run(input)
        let firstMs = milliseconds(since: first)
        for _ in 0..<warmup { _ = try runner.run(input) }
        var samples: [Double] = []
        samples.reserveCapacity(runs)
        for _ in 0..<runs {
            let start = DispatchTime.now()
            _ = try runner.run(input)
            samples.append(milliseconds(since: start))
        }
        return BenchResult(firstMs: firstMs, warmup: warmup, stats: LatencyStats(samplesMs: samples))
    }

    /// The hardware model identifier, e.g. "iPhone16,1".
    private static func device() -> String {
        var info = utsname()
        uname(&info)
        return withUnsafeBytes(of: &info.machine) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}
