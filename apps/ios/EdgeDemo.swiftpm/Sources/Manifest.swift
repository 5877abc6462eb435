import Foundation

/// bundle.json of a Core ML vision bundle, as `toolkit export coreml --model M --bundle DIR`
/// writes it (format "edge-toolkit-bundle", version 1, target "coreml"; the docstrings of
/// export/bundle_read.py and export/coreml_bundle.py list every key). The folder holds
/// bundle.json, model.mlpackage/ and the sample files; "files" lists every one of them,
/// each file inside the package by its relative path, with its size and SHA-256. The app
/// takes from the manifest the Core ML feature names (read from the package's spec at
/// export), the input size and colour, the labels, the mask threshold, the expert meaning
/// and the sample. Only the keys below are read; a version 1 reader ignores the others
/// and refuses a newer version.
///
/// Every CodingKeys case spells its JSON key as a raw string on purpose:
/// tests/apps/test_native_sources.py greps them and checks that the exporter writes each.
struct Manifest: Decodable {
    static let format = "edge-toolkit-bundle"
    static let version = 1
    static let segmentation = "image-segmentation"
    static let classification = "image-classification"
    static let target = "coreml"
    static let runtime = "coremltools"
    static let package = "mlpackage"

    let format: String
    let version: Int
    let kind: String?
    let target: String?
    let runtime: String
    let source: String?
    let family: String?
    let model: ModelEntry
    let inputs: [TensorSpec]
    let outputs: [TensorSpec]
    let preprocessing: Preprocessing
    let postprocessing: Postprocessing
    let experts: ExpertsSpec?
    let sample: SampleSpec?
    let verification: Verification?
    let files: [String: FileEntry]

    enum CodingKeys: String, CodingKey {
        case format = "format"
        case version = "version"
        case kind = "kind"
        case target = "target"
        case runtime = "runtime"
        case source = "source"
        case family = "family"
        case model = "model"
        case inputs = "inputs"
        case outputs = "outputs"
        case preprocessing = "preprocessing"
        case postprocessing = "postprocessing"
        case experts = "experts"
        case sample = "sample"
        case verification = "verification"
        case files = "files"
    }

    /// The task, "llm" for manifests written before vision bundles existed.
    var task: String { kind ?? "llm" }

    /// The output the demo reads: the mask of a segmenter, the logits of a classifier.
    var mainOutput: TensorSpec? {
        let name = task == Manifest.segmentation ? postprocessing.mask?.output : postprocessing.logits?.output
        return outputs.first { $0.name == name }
    }

    /// The input the package takes: the raw pixels.
    var pixelsInput: TensorSpec? { inputs.first { $0.role == "pixels" } }

    /// The V-MoE's expert choice output, when the bundle has one.
    var expertsOutput: TensorSpec? {
        guard let name = experts?.output else { return nil }
        return outputs.first { $0.name == name && $0.role == "experts" }
    }

    /// Parses and checks bundle.json; every failure is one BundleError line. The envelope
    /// (format, version, kind, runtime) is checked first, so an LLM or ONNX bundle is
    /// refused for what it is rather than for the vision keys it lacks.
    static func read(_ data: Data) throws -> Manifest {
        if let envelope = try? JSONDecoder().decode(Envelope.self, from: data),
           envelope.format == format, envelope.version <= version {
            let kind = envelope.kind ?? "llm"
            guard kind == segmentation || kind == classification else {
                throw BundleError("this bundle is a \"\(kind)\" model; this app runs image-segmentation and image-classification bundles")
            }
            guard envelope.runtime == runtime else {
                throw BundleError("this is a \(envelope.runtime ?? "non-Core ML") bundle; this app runs Core ML bundles: export one with `toolkit export coreml --model M --bundle DIR`")
            }
        }
        let manifest: Manifest
        do {
            manifest = try JSONDecoder().decode(Manifest.self, from: data)
        } catch {
            throw BundleError("bundle.json is not a bundle manifest (\(describe(error))): export the bundle again with `toolkit export coreml --model M --bundle DIR`")
        }
        guard manifest.format == format else {
            throw BundleError("bundle.json is not an Edge Toolkit bundle (format \(manifest.format)): export one with `toolkit export coreml --model M --bundle DIR`")
        }
        guard manifest.version <= version else {
            throw BundleError("bundle.json is version \(manifest.version); this app reads version \(version): update the app")
        }
        guard manifest.runtime == runtime, (manifest.target ?? target) == target else {
            throw BundleError("this is a \(manifest.target ?? manifest.runtime) bundle; this app runs Core ML bundles: export one with `toolkit export coreml --model \(manifest.source ?? "M") --bundle DIR`")
        }
        guard manifest.task == segmentation || manifest.task == classification else {
            throw BundleError("this bundle is a \"\(manifest.task)\" model; this app runs image-segmentation and image-classification bundles")
        }
        guard manifest.model.package == package, manifest.model.file.hasSuffix(".mlpackage") else {
            throw BundleError("bundle.json names no .mlpackage as its model: export the bundle again with `toolkit export coreml --bundle DIR`")
        }
        guard let files = manifest.model.files, !files.isEmpty,
              files.allSatisfy({ $0.hasPrefix(manifest.model.file + "/") && manifest.files[$0] != nil })
        else {
            throw BundleError("bundle.json does not list the files inside \(manifest.model.file) with their SHA-256: export the bundle again with this version of Edge Toolkit")
        }
        guard manifest.pixelsInput != nil else {
            throw BundleError("bundle.json names no pixels input: export the bundle again")
        }
        guard manifest.mainOutput != nil else {
            throw BundleError("bundle.json names no output for its \(manifest.task) postprocessing: export the bundle again")
        }
        guard manifest.preprocessing.valueRange.first == 0, manifest.preprocessing.normalizationFolded == true else {
            throw BundleError("this bundle's file does not take raw 0..255 pixels: export it with this version of Edge Toolkit")
        }
        guard manifest.preprocessing.channels == 1 || manifest.preprocessing.channels == 3 else {
            throw BundleError("the model takes \(manifest.preprocessing.channels) channels; this app feeds RGB (3) or grey (1)")
        }
        return manifest
    }

    /// A decoding error as the JSON path it failed at (Foundation's own text names none).
    private static func describe(_ error: Error) -> String {
        func path(_ keys: [CodingKey]) -> String { keys.map(\.stringValue).joined(separator: ".") }
        switch error as? DecodingError {
        case .keyNotFound(let key, let context)?:
            return "no key \(path(context.codingPath + [key]))"
        case .typeMismatch(_, let context)?, .valueNotFound(_, let context)?:
            return "unexpected value at \(path(context.codingPath))"
        case .dataCorrupted(let context)?:
            return context.debugDescription
        default:
            return error.localizedDescription
        }
    }
}

/// The keys that say what a bundle is, read before the rest.
struct Envelope: Decodable {
    let format: String
    let version: Int
    let kind: String?
    let runtime: String?

    enum CodingKeys: String, CodingKey {
        case format = "format"
        case version = "version"
        case kind = "kind"
        case runtime = "runtime"
    }
}

/// The package: its folder name, every file inside it (relative to the bundle), the
/// precision it computes in ("float32", "float16", palettized).
struct ModelEntry: Decodable {
    let file: String
    let files: [String]?
    let package: String?
    let precision: String?

    enum CodingKeys: String, CodingKey {
        case file = "file"
        case files = "files"
        case package = "package"
        case precision = "precision"
    }
}

/// An input or output of the Core ML package, as its spec names it (read at export:
/// "pixels"; the outputs keep the names coremltools gave them, e.g. "linear_9", "div_2").
struct TensorSpec: Decodable {
    let role: String
    let name: String
    let dtype: String
    let shape: [Int]

    enum CodingKeys: String, CodingKey {
        case role = "role"
        case name = "name"
        case dtype = "dtype"
        case shape = "shape"
    }

    var count: Int { shape.reduce(1, *) }
}

/// Scale the picture to width x height, take RGB or BT.601 grey, keep raw 0..255 values
/// (the exported file divides by 255 and normalises itself).
struct Preprocessing: Decodable {
    let height: Int
    let width: Int
    let channels: Int
    let layout: String
    let color: String
    let valueRange: [Double]
    let normalizationFolded: Bool?
    let grayscale: Grayscale?
    let dataset: String?
    let datasetNote: String?

    enum CodingKeys: String, CodingKey {
        case height = "height"
        case width = "width"
        case channels = "channels"
        case layout = "layout"
        case color = "color"
        case valueRange = "value_range"
        case normalizationFolded = "normalization_folded"
        case grayscale = "grayscale"
        case dataset = "dataset"
        case datasetNote = "dataset_note"
    }

    /// ITU-R BT.601 luma unless the manifest gives other weights.
    var lumaWeights: [Float] { grayscale?.weightsRGB ?? [0.299, 0.587, 0.114] }
    var valueMax: Float { Float(valueRange.last ?? 255) }
}

struct Grayscale: Decodable {
    let weightsRGB: [Float]

    enum CodingKeys: String, CodingKey {
        case weightsRGB = "weights_rgb"
    }
}

struct Postprocessing: Decodable {
    let mask: OutputRef?
    let threshold: Float?
    let logits: OutputRef?
    let applySoftmax: Bool?
    let labels: [String]?

    enum CodingKeys: String, CodingKey {
        case mask = "mask"
        case threshold = "threshold"
        case logits = "logits"
        case applySoftmax = "apply_softmax"
        case labels = "labels"
    }
}

struct OutputRef: Decodable {
    let output: String

    enum CodingKeys: String, CodingKey {
        case output = "output"
    }
}

/// The V-MoE's routing: the expert indices its per-image router chose.
struct ExpertsSpec: Decodable {
    let output: String
    let shape: [Int]
    let topK: Int
    let numExperts: Int
    let moeBlocks: [Int]?

    enum CodingKeys: String, CodingKey {
        case output = "output"
        case shape = "shape"
        case topK = "top_k"
        case numExperts = "num_experts"
        case moeBlocks = "moe_blocks"
    }
}

/// The export's verification image and the runtime's outputs on it, raw little-endian.
struct SampleSpec: Decodable {
    let input: SampleFile
    let outputs: [SampleFile]
    let byteOrder: String?
    let rtol: Double
    let judgedOn: String?
    /// "PyTorch": Core ML cannot run where the bundle is exported, so the recorded outputs
    /// are the PyTorch model's, and this app's run is the first Core ML run they meet.
    let producedBy: String?

    enum CodingKeys: String, CodingKey {
        case input = "input"
        case outputs = "outputs"
        case byteOrder = "byte_order"
        case rtol = "rtol"
        case judgedOn = "judged_on"
        case producedBy = "produced_by"
    }
}

struct SampleFile: Decodable {
    let role: String
    let name: String?
    let file: String
    let dtype: String
    let shape: [Int]
    let layout: String?

    enum CodingKeys: String, CodingKey {
        case role = "role"
        case name = "name"
        case file = "file"
        case dtype = "dtype"
        case shape = "shape"
        case layout = "layout"
    }
}

/// The export's check of the package: structural only (Core ML ran nowhere), "ran" false.
struct Verification: Decodable {
    let passed: Bool
    let ran: Bool?

    enum CodingKeys: String, CodingKey {
        case passed = "passed"
        case ran = "ran"
    }
}

struct FileEntry: Decodable {
    let bytes: Int64
    let sha256: String

    enum CodingKeys: String, CodingKey {
        case bytes = "bytes"
        case sha256 = "sha256"
    }
}

/// One line naming the problem and the fix, shown as it is.
struct BundleError: LocalizedError {
    let message: String

    init(_ message: String) {
        self.message = message
    }

    var errorDescription: String? { message }
}
