import Foundation

/// The bundle's own test, run on the phone with Core ML: the export's verification image
/// (sample_input.bin, raw 0..255 float32) through the .mlpackage, compared with what
/// onnxruntime or LiteRT gave on the export machine (sample_output_ROLE.bin).
///
///     error = max |Core ML - sample| / max |sample|
///
/// The sample outputs come from another runtime than Core ML, so the limit is the
/// export's own (verification.rtol, 1e-3 against PyTorch) rather than the sample's 1e-4
/// between two runs of one file. A float16 or palettized package differs by more: the
/// number is shown either way. Integer outputs (expert indices) must be equal.
enum SampleCheck {
    struct Line: Identifiable {
        let role: String
        let text: String
        let passed: Bool
        var id: String { role }
    }

    struct Result {
        let lines: [Line]
        let rtol: Double
        var passed: Bool { !lines.isEmpty && lines.allSatisfy(\.passed) }
    }

    /// The sample input in the Core ML package's layout, or nil without a sample.
    static func input(_ runner: VisionRunner) throws -> [Float]? {
        guard let sample = runner.manifest.sample else { return nil }
        let pre = runner.manifest.preprocessing
        let values = try floats(runner.bundle.file(sample.input.file), sample.input)
        if (sample.input.layout ?? pre.layout) == "NHWC" && runner.layout == "NCHW" && pre.channels > 1 {
            return Pixels.nhwcToNCHW(values, channels: pre.channels, height: pre.height, width: pre.width)
        }
        return values
    }

    static func run(_ runner: VisionRunner) throws -> Result {
        guard let sample = runner.manifest.sample, let values = try input(runner) else {
            throw BundleError("this bundle has no sample: export it again with this version of Edge Toolkit")
        }
        let rtol = runner.manifest.verification?.rtol ?? 1e-3
        let got = try runner.run(values)
        var lines: [Line] = []
        for recorded in sample.outputs {
            let want = try floats(runner.bundle.file(recorded.file), recorded)
            if recorded.role == "experts" {
                guard let experts = got.experts else {
                    lines.append(Line(role: recorded.role, text: "not an output of the Core ML package (not compared)", passed: true))
                    continue
                }
                let equal = experts.map { Float($0) } == want
                lines.append(Line(role: recorded.role, text: equal ? "equal" : "DIFFERENT", passed: equal))
            } else {
                // A mask recorded as [1, 1, H, W] and Core ML's [1, 1, H, W] or [1, H, W, 1]
                // hold one value per pixel in the same order.
                let error = Numerics.relativeError(got.main, want, judgedOn: sample.judgedOn ?? "max")
                lines.append(Line(role: recorded.role, text: String(format: "relative error %.3g", error), passed: error <= rtol))
            }
        }
        return Result(lines: lines, rtol: rtol)
    }

    /// A raw little-endian file as floats (float32, int32 or int8 values).
    private static func floats(_ url: URL, _ spec: SampleFile) throws -> [Float] {
        let data = try Data(contentsOf: url)
        let count = spec.shape.reduce(1, *)
        let width: Int
        switch spec.dtype {
        case "float32", "int32": width = 4
        case "int8", "uint8": width = 1
        default: throw BundleError("\(spec.file) is \(spec.dtype); this app reads float32, int32 and int8 samples")
        }
        guard data.count == count * width else {
            throw BundleError("\(spec.file) holds \(data.count) bytes, not the \(count) \(spec.dtype) values of \(spec.shape): export the bundle again")
        }
        let bytes = [UInt8](data)
        return (0..<count).map { i in
            switch spec.dtype {
            case "float32":
                return Float(bitPattern: littleEndianWord(bytes, at: i * 4))
            case "int32":
                return Float(Int32(bitPattern: littleEndianWord(bytes, at: i * 4)))
            case "uint8":
                return Float(bytes[i])
            default:
                return Float(Int8(bitPattern: bytes[i]))
            }
        }
    }

    private static func littleEndianWord(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8
            | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24
    }
}
