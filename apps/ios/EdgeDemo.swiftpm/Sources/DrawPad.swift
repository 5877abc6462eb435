import SwiftUI
import UIKit

/// Finger strokes in the pad's own 0..1 coordinates, drawn white on black the way
/// MNIST-style data sets are (Fashion-MNIST: a light garment on a black background).
struct DrawPad: View {
    @Binding var lines: [[CGPoint]]
    @State private var current: [CGPoint] = []

    /// Stroke width as a share of the side: about 2 pixels of a 28 x 28 image.
    static let stroke: CGFloat = 0.08

    var body: some View {
        GeometryReader { geometry in
            Canvas { context, size in
                for line in lines + [current] where !line.isEmpty {
                    var path = Path()
                    path.addLines(line.map { CGPoint(x: $0.x * size.width, y: $0.y * size.height) })
                    context.stroke(path, with: .color(.white),
                                   style: StrokeStyle(lineWidth: size.width * Self.stroke, lineCap: .round, lineJoin: .round))
                }
            }
            .background(Color.black)
            .gesture(
                DragGesture(minimumDistance: 0)
                    .onChanged { value in
                        current.append(CGPoint(x: value.location.x / geometry.size.width,
                                               y: value.location.y / geometry.size.height))
                    }
                    .onEnded { _ in
                        lines.append(current)
                        current = []
                    }
            )
        }
        .aspectRatio(1, contentMode: .fit)
    }

    /// The drawing as a side x side image, white strokes on black.
    static func image(_ lines: [[CGPoint]], side: CGFloat = 280) -> UIImage {
        let format = UIGraphicsImageRendererFormat()
        format.scale = 1
        format.opaque = true
        let rect = CGRect(x: 0, y: 0, width: side, height: side)
        return UIGraphicsImageRenderer(size: rect.size, format: format).image { context in
            UIColor.black.setFill()
            context.fill(rect)
            let path = UIBezierPath()
            path.lineWidth = side * stroke
            path.lineCapStyle = .round
            path.lineJoinStyle = .round
            for line in lines where !line.isEmpty {
                path.move(to: CGPoint(x: line[0].x * side, y: line[0].y * side))
                for point in line.dropFirst() {
                    path.addLine(to: CGPoint(x: point.x * side, y: point.y * side))
                }
                if line.count == 1 {
                    path.addLine(to: CGPoint(x: line[0].x * side + 0.1, y: line[0].y * side))
                }
            }
            UIColor.white.setStroke()
            path.stroke()
        }
    }
}
