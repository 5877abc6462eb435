import UIKit

/// A picture as the model takes it, following bundle.json's preprocessing: scaled to
/// width x height (the input size is fixed), RGB or BT.601 grey, raw 0..255 values (not
/// 0..1 and not normalised: the exported file divides by 255 and applies mean/std
/// itself), laid out as the Core ML package's input (NCHW as exported).
enum Pixels {
    /// The image drawn at the model's size, upright (UIImage orientation applied).
    static func resized(_ image: UIImage, width: Int, height: Int) -> UIImage {
        let format = UIGraphicsImageRendererFormat()
        format.scale = 1
        format.opaque = true
        let size = CGSize(width: width, height: height)
        return UIGraphicsImageRenderer(size: size, format: format).image { _ in
            UIColor.black.setFill()
            UIRectFill(CGRect(origin: .zero, size: size))
            image.draw(in: CGRect(origin: .zero, size: size))
        }
    }

    /// RGBA bytes, row-major from the top, of an image drawn at width x height.
    static func rgba(_ image: UIImage, width: Int, height: Int) throws -> [UInt8] {
        guard let cg = resized(image, width: width, height: height).cgImage else {
            throw BundleError("the picture could not be drawn: pick another one")
        }
        var bytes = [UInt8](repeating: 0, count: width * height * 4)
        let drawn = bytes.withUnsafeMutableBytes { buffer -> Bool in
            guard let context = CGContext(
                data: buffer.baseAddress, width: width, height: height, bitsPerComponent: 8,
                bytesPerRow: width * 4, space: CGColorSpaceCreateDeviceRGB(),
                bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)
            else { return false }
            context.draw(cg, in: CGRect(x: 0, y: 0, width: width, height: height))
            return true
        }
        guard drawn else { throw BundleError("the picture could not be converted to RGB") }
        return bytes
    }

    /// Model values from RGBA bytes. Grey: Y = wR R + wG G + wB B (the manifest's
    /// weights); `invert` maps v to 255 - v first (Fashion-MNIST: light garment on black).
    static func values(rgba: [UInt8], pre: Preprocessing, layout: String, invert: Bool) -> [Float] {
        let plane = pre.width * pre.height
        let scale = pre.valueMax / 255
        let w = pre.lumaWeights
        var out = [Float](repeating: 0, count: plane * pre.channels)
        for i in 0..<plane {
            var r = Float(rgba[4 * i]), g = Float(rgba[4 * i + 1]), b = Float(rgba[4 * i + 2])
            if invert {
                r = 255 - r; g = 255 - g; b = 255 - b
            }
            if pre.channels == 1 {
                out[i] = (w[0] * r + w[1] * g + w[2] * b) * scale
            } else if layout == "NHWC" {
                out[3 * i] = r * scale
                out[3 * i + 1] = g * scale
                out[3 * i + 2] = b * scale
            } else {
                out[i] = r * scale
                out[plane + i] = g * scale
                out[2 * plane + i] = b * scale
            }
        }
        return out
    }

    static func values(_ image: UIImage, pre: Preprocessing, layout: String, invert: Bool = false) throws -> [Float] {
        values(rgba: try rgba(image, width: pre.width, height: pre.height), pre: pre, layout: layout, invert: invert)
    }

    /// [1, H, W, C] values as [1, C, H, W] (a LiteRT bundle's sample fed to Core ML).
    static func nhwcToNCHW(_ values: [Float], channels: Int, height: Int, width: Int) -> [Float] {
        var out = [Float](repeating: 0, count: values.count)
        for y in 0..<height {
            for x in 0..<width {
                for c in 0..<channels {
                    out[(c * height + y) * width + x] = values[(y * width + x) * channels + c]
                }
            }
        }
        return out
    }
}
