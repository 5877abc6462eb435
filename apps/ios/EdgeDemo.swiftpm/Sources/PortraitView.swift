import PhotosUI
import SwiftUI

/// The portrait demo: pick a photo, scale it to the model's input, run the segmenter with
/// Core ML, and show the person over a blurred or replaced background (or the mask
/// alone), with the milliseconds per frame split into preprocessing and the model call.
struct PortraitView: View {
    @State private var selected: URL?
    @State private var state: LoadState = .idle
    @State private var item: PhotosPickerItem?
    @State private var photo: UIImage?
    @State private var probabilities: [Float]?
    @State private var background: Composite.Background = .blur
    @State private var shown: UIImage?
    @State private var timing: String?
    @State private var error: String?

    var body: some View {
        NavigationStack {
            Form {
                BundlePicker(kinds: [Manifest.segmentation], selected: $selected)
                Section { ModelStatusView(state: state) }
                Section("Photo") {
                    PhotosPicker(selection: $item, matching: .images) {
                        Label("Pick a photo", systemImage: "photo")
                    }
                    .disabled(state.runner == nil)
                    Picker("Background", selection: $background) {
                        ForEach(Composite.Background.allCases) { Text($0.rawValue).tag($0) }
                    }
                    .pickerStyle(.segmented)
                    if let timing { Text(timing).font(.footnote) }
                    if let error { ErrorText(error) }
                    if let shown {
                        Image(uiImage: shown).resizable().scaledToFit()
                    }
                }
            }
            .navigationTitle("Portrait")
        }
        .task(id: selected) {
            state = .loading
            shown = nil
            state = await LoadState.load(selected)
        }
        .onChange(of: item) { _, newItem in
            Task { await segment(newItem) }
        }
        .onChange(of: background) { _, _ in
            Task { await recompose() }
        }
    }

    private func segment(_ item: PhotosPickerItem?) async {
        guard let item, let runner = state.runner else { return }
        error = nil
        do {
            guard let data = try await item.loadTransferable(type: Data.self), let image = UIImage(data: data) else {
                throw BundleError("the picked item is not an image iOS can decode")
            }
            let result = try await Task.detached(priority: .userInitiated) {
                try Self.run(runner, on: image)
            }.value
            photo = image
            probabilities = result.probabilities
            timing = result.timing
            await recompose()
        } catch {
            self.error = error.localizedDescription
        }
    }

    private func recompose() async {
        guard let photo, let probabilities, let pre = state.runner?.manifest.preprocessing else { return }
        let choice = background
        shown = await Task.detached(priority: .userInitiated) {
            Composite.compose(photo: photo, probabilities: probabilities, width: pre.width,
                              height: pre.height, background: choice)
        }.value
    }

    private static func run(_ runner: VisionRunner, on image: UIImage) throws -> (probabilities: [Float], timing: String) {
        let manifest = runner.manifest
        let pre = manifest.preprocessing
        let start = DispatchTime.now()
        let values = try Pixels.values(image, pre: pre, layout: runner.layout)
        let preprocessMs = milliseconds(since: start)
        let modelStart = DispatchTime.now()
        let outputs = try runner.run(values)
        let modelMs = milliseconds(since: modelStart)
        let coverage = Composite.coverage(outputs.main, threshold: manifest.postprocessing.threshold ?? 0.5)
        let timing = String(format: "%.1f ms per frame: %.1f ms preprocessing + %.1f ms Core ML; %.0f%% of the picture is person",
                            preprocessMs + modelMs, preprocessMs, modelMs, 100 * coverage)
        return (outputs.main, timing)
    }
}
