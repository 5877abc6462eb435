import CoreML
import Foundation

/// What one model call gave: the main output as floats (mask probabilities or logits),
/// and the chosen experts when the bundle has that output.
struct RunOutputs {
    let main: [Float]
    let experts: [Int]?
}

/// The bundle's Core ML package, compiled on the device and called with raw pixels.
///
/// What `toolkit export coreml --model M --bundle DIR` writes for a vision model
/// (export/coreml/vision.py, export/coreml_bundle.py): an iOS 18 ML program with ONE
/// input, a float32 MultiArray "pixels" of shape [1, C, H, W] (NCHW; raw 0..255 values,
/// the normalisation is folded in, as in the ONNX and LiteRT files), and the outputs the
/// manifest lists by role with the names coremltools gave them (e.g. "div_2" for the
/// portrait mask [1, 1, H, W], "linear_9" for V-MoE logits [1, classes]); a V-MoE's
/// bundle has a second output, the router's expert choice, int32 [1, k].
///
/// Every feature is bound by the name bundle.json gives it (read from the package's spec
/// at export), and its type and size are compared with the compiled model's own
/// description before the first call: a mismatch refuses the bundle in one line.
final class VisionRunner: @unchecked Sendable {
    let bundle: VerifiedBundle
    let inputName: String
    let inputShape: [Int]
    /// Whether the package takes float16 pixels (exported with --fp16).
    let inputHalf: Bool
    /// "NCHW" or "NHWC", read from the package's input shape.
    let layout: String
    let mainOutput: String
    let expertsOutput: String?
    let compileMs: Double
    let loadMs: Double
    let computeUnits: MLComputeUnits
    private let model: MLModel
    private let lock = NSLock()

    var manifest: Manifest { bundle.manifest }

    private init(bundle: VerifiedBundle, model: MLModel, compileMs: Double, loadMs: Double,
                 computeUnits: MLComputeUnits) throws {
        self.bundle = bundle
        self.model = model
        self.compileMs = compileMs
        self.loadMs = loadMs
        self.computeUnits = computeUnits
        let manifest = bundle.manifest
        let pre = manifest.preprocessing
        let inputs = model.modelDescription.inputDescriptionsByName
        guard let pixels = manifest.pixelsInput, let input = inputs[pixels.name],
              let constraint = input.multiArrayConstraint
        else {
            throw BundleError("the Core ML package has no MultiArray input \"\(manifest.pixelsInput?.name ?? "pixels")\" as bundle.json says: export the bundle again with `toolkit export coreml --bundle DIR`")
        }
        // A float32 package takes float32 pixels; a --fp16 one float16 (0..255 is exact
        // in float16 for whole numbers, and a scaled photo's fractions round to 1/8).
        guard constraint.dataType == .float32 || constraint.dataType == .float16 else {
            throw BundleError("the Core ML input is neither float32 nor float16; this app feeds float pixels: export the bundle again")
        }
        let shape = constraint.shape.map { $0.intValue }
        let (c, h, w) = (pre.channels, pre.height, pre.width)
        let layout: String
        if shape == [1, c, h, w] {
            layout = "NCHW"
        } else if shape == [1, h, w, c] {
            layout = "NHWC"
        } else {
            throw BundleError("the Core ML package takes \(shape), bundle.json says \(w)x\(h) with \(c) channels: export the bundle again")
        }
        let outputs = model.modelDescription.outputDescriptionsByName
        guard let main = manifest.mainOutput else {
            throw BundleError("bundle.json names no output for its \(manifest.task) postprocessing: export the bundle again")
        }
        try Self.check(outputs[main.name], against: main)
        var experts: String?
        if let spec = manifest.expertsOutput {
            try Self.check(outputs[spec.name], against: spec)
            experts = spec.name
        }
        self.inputName = input.name
        self.inputHalf = constraint.dataType == .float16
        self.inputShape = shape
        self.layout = layout
        self.mainOutput = main.name
        self.expertsOutput = experts
    }

    /// The compiled model's output `name` is a MultiArray of the manifest's type and size
    /// (Core ML may report a flexible or missing shape: then only the type is compared).
    private static func check(_ description: MLFeatureDescription?, against spec: TensorSpec) throws {
        guard let description, let constraint = description.multiArrayConstraint else {
            throw BundleError("the Core ML package has no MultiArray output \"\(spec.name)\" (\(spec.role)) as bundle.json says: export the bundle again")
        }
        let types: [String: MLMultiArrayDataType] = ["float32": .float32, "float16": .float16, "int32": .int32, "float64": .double]
        guard types[spec.dtype] == constraint.dataType else {
            throw BundleError("the Core ML output \(spec.name) is not \(spec.dtype) as bundle.json says: export the bundle again")
        }
        let count = constraint.shape.reduce(1) { $0 * $1.intValue }
        guard constraint.shape.isEmpty || count == spec.count else {
            throw BundleError("the Core ML output \(spec.name) holds \(count) values, bundle.json says \(spec.count) (\(spec.shape)): export the bundle again")
        }
    }

    /// Compiles the .mlpackage (Core ML needs the compiled .mlmodelc) and loads it.
    static func open(_ bundle: VerifiedBundle, computeUnits: MLComputeUnits = .all) async throws -> VisionRunner {
        let start = DispatchTime.now()
        let compiled: URL
        do {
            compiled = try await MLModel.compileModel(at: bundle.package)
        } catch {
            throw BundleError("Core ML could not compile \(bundle.package.lastPathComponent) (\(error.localizedDescription)): export the bundle again with `toolkit export coreml --bundle DIR`")
        }
        let compileMs = milliseconds(since: start)
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        let loadStart = DispatchTime.now()
        let model: MLModel
        do {
            model = try MLModel(contentsOf: compiled, configuration: config)
        } catch {
            throw BundleError("Core ML could not load the compiled model (\(error.localizedDescription))")
        }
        return try VisionRunner(bundle: bundle, model: model, compileMs: compileMs,
                                loadMs: milliseconds(since: loadStart), computeUnits: computeUnits)
    }

    /// Raw 0..255 pixels laid out as `layout`; the outputs as floats (a float16 output is
    /// widened to Float).
    func run(_ values: [Float]) throws -> RunOutputs {
        let expected = inputShape.reduce(1, *)
        guard values.count == expected else {
            throw BundleError("the input has \(values.count) values, the Core ML package takes \(expected) (\(inputShape))")
        }
        let array = inputHalf
            ? MLMultiArray(MLShapedArray<Float16>(scalars: values.map { Float16($0) }, shape: inputShape))
            : MLMultiArray(MLShapedArray<Float>(scalars: values, shape: inputShape))
        let features = try MLDictionaryFeatureProvider(dictionary: [inputName: MLFeatureValue(multiArray: array)])
        lock.lock()
        defer { lock.unlock() }
        let result = try model.prediction(from: features)
        guard let main = result.featureValue(for: mainOutput)?.multiArrayValue else {
            throw BundleError("Core ML returned no \(mainOutput)")
        }
        var experts: [Int]?
        if let name = expertsOutput, let value = result.featureValue(for: name)?.multiArrayValue {
            experts = MLShapedArray<Int32>(converting: value).scalars.map { Int($0) }
        }
        return RunOutputs(main: MLShapedArray<Float>(converting: main).scalars, experts: experts)
    }
}

/// Milliseconds since `start` on the monotonic clock.
func milliseconds(since start: DispatchTime) -> Double {
    Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e6
}
