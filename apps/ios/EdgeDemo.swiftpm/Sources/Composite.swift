import CoreImage
import UIKit

/// The portrait demo's picture: the person (mask) over a blurred or replaced background,
/// or the mask alone. The mask is the model's output, p(person) per pixel at the model's
/// input size, scaled to the photo (bilinear) and used as the person's alpha, so the
/// edge stays soft where the model is unsure.
enum Composite {
    enum Background: String, CaseIterable, Identifiable {
        case blur, replace, mask
        var id: String { rawValue }
    }

    private static let context = CIContext()

    static func compose(photo: UIImage, probabilities: [Float], width: Int, height: Int,
                        background: Background) -> UIImage? {
        let upright = Pixels.resized(photo, width: Int(photo.size.width), height: Int(photo.size.height))
        guard let photoCG = upright.cgImage, let maskCG = maskImage(probabilities, width: width, height: height)
        else { return nil }
        let person = CIImage(cgImage: photoCG)
        let extent = person.extent
        let mask = CIImage(cgImage: maskCG)
            .samplingLinear()
            .transformed(by: CGAffineTransform(scaleX: extent.width / CGFloat(width),
                                               y: extent.height / CGFloat(height)))
        let back: CIImage
        let front: CIImage
        switch background {
        case .blur:
            back = person.clampedToExtent().applyingGaussianBlur(sigma: 24).cropped(to: extent)
            front = person
        case .replace:
            back = CIImage(color: CIColor(red: 0.16, green: 0.47, blue: 0.35)).cropped(to: extent)
            front = person
        case .mask:
            back = CIImage(color: .black).cropped(to: extent)
            front = CIImage(color: .white).cropped(to: extent)
        }
        let blended = front.applyingFilter("CIBlendWithMask", parameters: [
            kCIInputBackgroundImageKey: back,
            kCIInputMaskImageKey: mask,
        ])
        guard let out = context.createCGImage(blended, from: extent) else { return nil }
        return UIImage(cgImage: out)
    }

    /// p in 0..1 per pixel (row-major) as an 8-bit grey image.
    static func maskImage(_ probabilities: [Float], width: Int, height: Int) -> CGImage? {
        guard probabilities.count == width * height else { return nil }
        let bytes = probabilities.map { UInt8((min(max($0, 0), 1) * 255).rounded()) }
        guard let provider = CGDataProvider(data: Data(bytes) as CFData) else { return nil }
        return CGImage(width: width, height: height, bitsPerComponent: 8, bitsPerPixel: 8,
                       bytesPerRow: width, space: CGColorSpaceCreateDeviceGray(),
                       bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.none.rawValue),
                       provider: provider, decode: nil, shouldInterpolate: true,
                       intent: .defaultIntent)
    }

    /// Share of pixels the model calls person (p above the manifest's threshold).
    static func coverage(_ probabilities: [Float], threshold: Float) -> Float {
        guard !probabilities.isEmpty else { return 0 }
        return Float(probabilities.filter { $0 > threshold }.count) / Float(probabilities.count)
    }
}
