package org.edgetoolkit.demo.image

import android.graphics.Bitmap
import org.edgetoolkit.demo.bundle.Preprocessing

/**
 * A picture as the model takes it, following the manifest's preprocessing section: scaled
 * to width x height (the input size is fixed), RGB or BT.601 grey, raw 0..255 values (not
 * 0..1 and not normalised: the exported file divides by 255 and applies mean/std itself),
 * laid out NHWC (LiteRT) or NCHW.
 */
object Pixels {
    fun fromBitmap(bitmap: Bitmap, pre: Preprocessing, invert: Boolean = false): FloatArray {
        val scaled = Bitmap.createScaledBitmap(bitmap, pre.width, pre.height, true)
        val argb = IntArray(pre.width * pre.height)
        scaled.getPixels(argb, 0, pre.width, 0, 0, pre.width, pre.height)
        if (scaled !== bitmap) scaled.recycle()
        return fromArgb(argb, pre, invert)
    }

    /**
     * Row-major ARGB ints to model values. Grey: Y = wR R + wG G + wB B with the manifest's
     * weights; [invert] maps v to 255 - v first (Fashion-MNIST is a light garment on black).
     */
    fun fromArgb(argb: IntArray, pre: Preprocessing, invert: Boolean): FloatArray {
        val plane = pre.width * pre.height
        require(argb.size == plane) { "expected $plane pixels, got ${argb.size}" }
        val scale = pre.valueMax / 255f
        val out = FloatArray(plane * pre.channels)
        val (wr, wg, wb) = pre.lumaWeights
        for (i in 0 until plane) {
            val p = argb[i]
            var r = ((p shr 16) and 0xFF).toFloat()
            var g = ((p shr 8) and 0xFF).toFloat()
            var b = (p and 0xFF).toFloat()
            if (invert) {
                r = 255f - r; g = 255f - g; b = 255f - b
            }
            if (pre.channels == 1) {
                out[i] = (wr * r + wg * g + wb * b) * scale
            } else if (pre.layout == "NHWC") {
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
}
