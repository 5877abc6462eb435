import PhotosUI
import SwiftUI

/// One classified picture.
struct Classified {
    let seen: UIImage
    let top: [(label: String, probability: Float)]
    let experts: [Int]?
    let preprocessMs: Double
    let modelMs: Double
}

/// The classifier demo (the Mobile V-MoE, or any image-classification bundle): a photo
/// or a drawing, scaled and converted as preprocessing says (28 x 28 grey for the
/// Fashion-MNIST V-MoE), the class with its softmax probability and the next four, and
/// for a per-image routed MoE the expert its router chose (the bundle's "experts" output,
/// int32 [1, k], computed inside the package by the router's own top-k).
struct ClassifierView: View {
    @State private var selected: URL?
    @State private var state: LoadState = .idle
    @State private var item: PhotosPickerItem?
    @State private var lines: [[CGPoint]] = []
    @State private var invert = false
    @State private var result: Classified?
    @State private var error: String?

    var body: some View {
        NavigationStack {
            Form {
                BundlePicker(kinds: [Manifest.classification], selected: $selected)
                Section { ModelStatusView(state: state) }
                if let note = state.runner?.manifest.preprocessing.datasetNote {
                    Section { Text(note).font(.footnote) }
                }
                Section("Picture") {
                    Toggle("Invert (dark object on a light background)", isOn: $invert)
                    // Bordered buttons: in a Form row, plain buttons would all fire on one tap.
                    HStack {
                        PhotosPicker(selection: $item, matching: .images) {
                            Label("Photo", systemImage: "photo")
                        }
                        Button("Classify drawing") { classify(DrawPad.image(lines)) }
                            .disabled(lines.isEmpty)
                        Button("Clear") { lines = [] }
                    }
                    .buttonStyle(.bordered)
                    .disabled(state.runner == nil)
                    DrawPad(lines: $lines)
                }
                if error != nil || result != nil {
                    Section("Result") {
                        if let error { ErrorText(error) }
                        if let result, let manifest = state.runner?.manifest {
                            ResultView(result: result, manifest: manifest)
                        }
                    }
                }
            }
            .navigationTitle("Classifier")
        }
        .task(id: selected) {
            state = .loading
            result = nil
            state = await LoadState.load(selected)
        }
        .onChange(of: item) { _, newItem in
            Task {
                guard let newItem else { return }
                if let data = try? await newItem.loadTransferable(type: Data.self), let image = UIImage(data: data) {
                    classify(image)
                } else {
                    error = "the picked item is not an image iOS can decode"
                }
            }
        }
    }

    private func classify(_ picture: UIImage) {
        guard let runner = state.runner else { return }
        let inverted = invert
        error = nil
        Task {
            do {
                result = try await Task.detached(priority: .userInitiated) {
                    try Self.run(runner, on: picture, invert: inverted)
                }.value
            } catch {
                self.error = error.localizedDescription
            }
        }
    }

    private static func run(_ runner: VisionRunner, on picture: UIImage, invert: Bool) throws -> Classified {
        let manifest = runner.manifest
        let pre = manifest.preprocessing
        let post = manifest.postprocessing
        let start = DispatchTime.now()
        let rgba = try Pixels.rgba(picture, width: pre.width, height: pre.height)
        let values = Pixels.values(rgba: rgba, pre: pre, layout: runner.layout, invert: invert)
        let preprocessMs = milliseconds(since: start)
        let modelStart = DispatchTime.now()
        let outputs = try runner.run(values)
        let modelMs = milliseconds(since: modelStart)
        let probabilities = (post.applySoftmax ?? true) ? Numerics.softmax(outputs.main) : outputs.main
        let labels = post.labels ?? []
        let top = Numerics.topK(probabilities, 5).map { i in
            (label: i < labels.count ? labels[i] : "class \(i)", probability: probabilities[i])
        }
        let seen = Pixels.resized(picture, width: pre.width, height: pre.height)
        return Classified(seen: seen, top: top, experts: outputs.experts, preprocessMs: preprocessMs, modelMs: modelMs)
    }
}

private struct ResultView: View {
    let result: Classified
    let manifest: Manifest

    var body: some View {
        VStack(alignment: .leading, spacing: 6) {
            HStack(spacing: 12) {
                // What the model saw, at its own resolution, without smoothing.
                Image(uiImage: result.seen).interpolation(.none).resizable().frame(width: 84, height: 84)
                VStack(alignment: .leading) {
                    Text(result.top.first?.label ?? "").font(.title2)
                    Text(String(format: "%.1f%%, %.1f ms (%.1f preprocessing + %.1f Core ML)",
                                100 * (result.top.first?.probability ?? 0), result.preprocessMs + result.modelMs,
                                result.preprocessMs, result.modelMs))
                        .font(.footnote)
                }
            }
            ForEach(result.top.indices, id: \.self) { i in
                Text(String(format: "%@  %.1f%%", result.top[i].label, 100 * result.top[i].probability))
                    .font(.caption)
                ProgressView(value: Double(result.top[i].probability))
            }
            if let spec = manifest.experts {
                if let experts = result.experts {
                    Text("Router chose expert \(experts.map(String.init).joined(separator: ", ")) of \(spec.numExperts) (top-\(spec.topK); used by blocks \((spec.moeBlocks ?? []).map(String.init).joined(separator: ", ")))")
                        .font(.headline)
                } else {
                    Text("This model routes each image to \(spec.topK) of \(spec.numExperts) experts, but this bundle's package gave no expert choice: export it again with `toolkit export coreml --bundle DIR`.")
                        .font(.footnote)
                }
            } else {
                Text("Dense model: no expert routing in this bundle.").font(.footnote)
            }
        }
    }
}
