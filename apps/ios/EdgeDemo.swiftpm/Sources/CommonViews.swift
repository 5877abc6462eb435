import CoreML
import SwiftUI
import UniformTypeIdentifiers

/// A screen's model: nothing chosen, being verified and compiled, ready, or refused.
enum LoadState {
    case idle
    case loading
    case ready(VisionRunner)
    case failed(String)

    var runner: VisionRunner? {
        if case .ready(let runner) = self { return runner }
        return nil
    }

    /// Verifies the bundle (every listed file's SHA-256) and compiles its Core ML package
    /// off the main thread.
    static func load(_ url: URL?, computeUnits: MLComputeUnits = .all) async -> LoadState {
        guard let url else { return .idle }
        do {
            let runner = try await Task.detached(priority: .userInitiated) {
                let bundle = try BundleLibrary.verify(url)
                return try await VisionRunner.open(bundle, computeUnits: computeUnits)
            }.value
            return .ready(runner)
        } catch {
            return .failed(error.localizedDescription)
        }
    }
}

/// The bundles of `kinds`, a way to import one from the Files app, and what is missing.
struct BundlePicker: View {
    @EnvironmentObject private var library: BundleLibrary
    let kinds: Set<String>
    @Binding var selected: URL?
    @State private var importing = false

    var body: some View {
        Section("Bundle") {
            let usable = library.entries.filter { kinds.contains($0.kind) }
            if usable.isEmpty {
                Text("No \(kinds.sorted().joined(separator: " or ")) bundle yet. Import the folder `toolkit export coreml --model M --bundle DIR` wrote (bundle.json, model.mlpackage and the sample files); the README says how.")
                    .font(.footnote)
            }
            Picker("Bundle", selection: $selected) {
                Text("None").tag(URL?.none)
                ForEach(usable) { entry in
                    Text("\(entry.name) (\(entry.origin))").tag(URL?.some(entry.url))
                }
            }
            Button("Import bundle folder…") { importing = true }
            Button("Look again") { library.refresh() }
            if let message = library.importError {
                ErrorText(message)
            }
        }
        .fileImporter(isPresented: $importing, allowedContentTypes: [.folder]) { result in
            switch result {
            case .success(let url): library.importFolder(url)
            case .failure(let error): library.importError = error.localizedDescription
            }
        }
    }
}

/// What the chosen bundle's state means for the user.
struct ModelStatusView: View {
    let state: LoadState

    var body: some View {
        switch state {
        case .idle:
            Text("Choose a bundle.")
        case .loading:
            HStack {
                ProgressView()
                Text("Checking every file's SHA-256 and compiling the Core ML package…")
            }
        case .failed(let message):
            ErrorText(message)
        case .ready(let runner):
            let m = runner.manifest
            let pre = m.preprocessing
            // The export could only open the package and check its inputs and outputs.
            let verified = m.verification.map { $0.passed ? "package checked at export (opened, not run)" : "export check FAILED" }
                ?? "exported without verification"
            VStack(alignment: .leading, spacing: 4) {
                Text("\(m.source ?? runner.bundle.name): \(pre.width)x\(pre.height) \(pre.color), Core ML input \(runner.layout)")
                Text("\(m.files.count) files match their SHA-256 in bundle.json, \(m.model.files?.count ?? 0) of them inside \(runner.bundle.package.lastPathComponent)")
                Text(String(format: "compiled %.0f ms, loaded %.0f ms; %@", runner.compileMs, runner.loadMs, verified))
            }
            .font(.footnote)
        }
    }
}

struct ErrorText: View {
    let message: String

    init(_ message: String) {
        self.message = message
    }

    var body: some View {
        Text(message)
            .font(.callout)
            .foregroundStyle(.red)
    }
}
