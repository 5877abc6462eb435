import CoreML
import Foundation

/// What one model call gave: the main output as floats (mask probabilities or logits),
/// and the chosen experts when the Core ML file has that output.
struct RunOutputs {
    let main: [Float]
    let experts: [Int]?
}

/// The bundle's Core ML package, compiled on the device and called with raw pixels.
///
/// What `toolkit export coreml --model M --out model.mlpackage` writes for a vision model
/// (export/coreml/vision.py): an iOS 18 ML program with ONE input, a float32 MultiArray
/// named "pixels" of shape [1, C, H, W] (NCHW; raw 0..255 values, the normalisation is
/// folded in, as in the ONNX and LiteRT files), and ONE output whose name coremltools
/// derives from the graph (e.g. "div_2", "linear_9"): the mask probability [1, 1, H, W]
/// or the logits [1, classes]. The V-MoE's expert choice is an output only of bundles
/// (export/bundle_experts.py), which Core ML does not have yet, so `experts` is nil unless
/// the package has a second output of the manifest's experts shape.
///
/// Outputs are therefore found by shape, never by name: the main output is the one with
/// as many values as the manifest's mask or logits.
final class VisionRunner: @unchecked Sendable {
    let bundle: VerifiedBundle
    let inputName: String
    let inputShape: [Int]
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
        guard let input = inputs["pixels"] ?? (inputs.count == 1 ? inputs.values.first : nil),
              let constraint = input.multiArrayConstraint
        else {
            throw BundleError("the Core ML package has no MultiArray input \"pixels\": export it again with `toolkit export coreml --out`")
        }
        guard constraint.dataType == .float32 else {
            throw BundleError("the Core ML input is not float32; this app feeds float32 pixels: export without changing the input type")
        }
        let shape = constraint.shape.map { $0.intValue }
        let (c, h, w) = (pre.channels, pre.height, pre.width)
        let layout: String
        if shape == [1, c, h, w] {
            layout = "NCHW"
        } else if shape == [1, h, w, c] {
            layout = "NHWC"
        } else {
            throw BundleError("the Core ML package takes \(shape), bundle.json says \(w)x\(h) with \(c) channels: export both from the same model")
        }
        let outputs = model.modelDescription.outputDescriptionsByName.values.compactMap { d -> (String, Int)? in
            guard let shape = d.multiArrayConstraint?.shape else { return nil }
            return (d.name, shape.reduce(1) { $0 * $1.intValue })
        }
        guard let main = manifest.mainOutput,
              let found = outputs.first(where: { $0.1 == main.count }) ?? (outputs.count == 1 ? outputs[0] : nil),
              found.1 == main.count
        else {
            throw BundleError("no Core ML output has the \(manifest.mainOutput?.count ?? 0) values of the bundle's \(manifest.mainOutput?.role ?? "main") output: export both from the same model")
        }
        var experts: String?
        if let spec = manifest.experts {
            let k = spec.shape.reduce(1, *)
            experts = outputs.first(where: { $0.0 != found.0 && $0.1 == k })?.0
        }
        self.inputName = input.name
        self.inputShape = shape
        self.layout = layout
        self.mainOutput = found.0
        self.expertsOutput = experts
    }

    /// Compiles the .mlpackage (Core ML needs the compiled .mlmodelc) and loads it.
    static func open(_ bundle: VerifiedBundle, computeUnits: MLComputeUnits = .all) async throws -> VisionRunner {
        let start = DispatchTime.now()
        let compiled: URL
        do {
            compiled = try await MLModel.compileModel(at: bundle.package)
        } catch {
            throw BundleError("Core ML could not compile \(bundle.package.lastPathComponent) (\(error.localizedDescription)): export it again with `toolkit export coreml`")
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

    /// Raw 0..255 pixels laid out as `layout`; the outputs as floats.
    func run(_ values: [Float]) throws -> RunOutputs {
        let expected = inputShape.reduce(1, *)
        guard values.count == expected else {
            throw BundleError("the input has \(values.count) values, the Core ML package takes \(expected) (\(inputShape))")
        }
        let array = MLMultiArray(MLShapedArray<Float>(scalars: values, shape: inputShape))
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
