import Foundation

/// The bundle's own test, run on the phone with Core ML: the export's verification image
/// (sample_input.bin, raw 0..255 float32, NCHW) through the .mlpackage, compared with
/// sample_output_ROLE.bin. Core ML cannot run where bundles are exported (Linux), so those
/// outputs are the PyTorch model's ("produced_by": "PyTorch"): this check is the first
/// time the package's numbers meet a reference.
///
///     error = max (or mean, as sample.judged_on says) |Core ML - sample| / max |sample|
///
/// The limit is the sample's rtol: 1e-3 on the max for a float32 package (the export's
/// own limit against PyTorch); for float16 and palettized packages a looser limit on the
/// mean that the exporter states as an expectation, not a measurement. The number is
/// shown either way. Integer outputs (expert indices) must be equal.
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
        let rtol = sample.rtol
        let got = try runner.run(values)
        var lines: [Line] = []
        for recorded in sample.outputs {
            let want = try floats(runner.bundle.file(recorded.file), recorded)
            if recorded.role == "experts" {
                guard let experts = got.experts else {
                    lines.append(Line(role: recorded.role, text: "no expert output was bound (not compared)", passed: false))
                    continue
                }
                let equal = experts.map { Float($0) } == want
                lines.append(Line(role: recorded.role, text: equal ? "equal to PyTorch's choice" : "DIFFERENT from PyTorch's choice \(want.map { Int($0) })", passed: equal))
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
