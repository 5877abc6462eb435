package org.edgetoolkit.demo.image

import android.graphics.Bitmap
import android.graphics.Canvas
import android.graphics.Color
import android.graphics.Paint
import android.graphics.PorterDuff
import android.graphics.PorterDuffXfermode
import android.graphics.Rect

/**
 * The portrait demo's picture: the person (mask) over a blurred or replaced background.
 * The mask is the model's output, p(person) per pixel at the model's input size; it is
 * scaled to the photo with bilinear filtering and used as the person's alpha, so the edge
 * stays soft where the model is unsure.
 */
object Composite {
    enum class Background { BLUR, REPLACE, MASK }

    /** p in 0..1 per pixel (row-major, width x height) as an alpha-only bitmap. */
    fun maskBitmap(probabilities: FloatArray, width: Int, height: Int): Bitmap {
        require(probabilities.size == width * height) {
            "the mask has ${probabilities.size} values, not $width x $height"
        }
        val colors = IntArray(probabilities.size) {
            val a = (probabilities[it].coerceIn(0f, 1f) * 255f + 0.5f).toInt()
            Color.argb(a, 255, 255, 255)
        }
        return Bitmap.createBitmap(colors, width, height, Bitmap.Config.ARGB_8888)
    }

    fun compose(photo: Bitmap, mask: Bitmap, background: Background, color: Int = Color.rgb(40, 120, 90)): Bitmap {
        val w = photo.width
        val h = photo.height
        val full = Rect(0, 0, w, h)
        val filter = Paint(Paint.FILTER_BITMAP_FLAG)
        val out = Bitmap.createBitmap(w, h, Bitmap.Config.ARGB_8888)
        val canvas = Canvas(out)
        when (background) {
            Background.BLUR -> canvas.drawBitmap(blurred(photo), null, full, filter)
            Background.REPLACE -> canvas.drawColor(color)
            Background.MASK -> canvas.drawColor(Color.BLACK)
        }
        val person = Bitmap.createBitmap(w, h, Bitmap.Config.ARGB_8888)
        Canvas(person).apply {
            if (background == Background.MASK) drawColor(Color.WHITE) else drawBitmap(photo, 0f, 0f, null)
            val keep = Paint(Paint.FILTER_BITMAP_FLAG).apply { xfermode = PorterDuffXfermode(PorterDuff.Mode.DST_IN) }
            drawBitmap(mask, null, full, keep)
        }
        canvas.drawBitmap(person, 0f, 0f, null)
        person.recycle()
        return out
    }

    /** A cheap blur on every API level: down to 1/16 and back up with bilinear filtering. */
    private fun blurred(photo: Bitmap): Bitmap {
        val small = Bitmap.createScaledBitmap(photo, maxOf(1, photo.width / 16), maxOf(1, photo.height / 16), true)
        return Bitmap.createScaledBitmap(small, photo.width, photo.height, true)
    }

    /** Share of pixels the model calls person (p above the manifest's threshold). */
    fun coverage(probabilities: FloatArray, threshold: Float): Float =
        if (probabilities.isEmpty()) 0f else probabilities.count { it > threshold }.toFloat() / probabilities.size
}
