package org.edgetoolkit.demo.image

import android.content.Context
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.ImageDecoder
import android.net.Uri
import android.os.Build
import kotlin.math.max

/** A picked photo as a software ARGB bitmap no larger than [maxSide] pixels a side. */
object Photos {
    fun decode(context: Context, uri: Uri, maxSide: Int = 1024): Bitmap {
        val resolver = context.contentResolver
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.P) {
            // ImageDecoder applies the EXIF rotation; a software bitmap allows getPixels.
            val source = ImageDecoder.createSource(resolver, uri)
            return ImageDecoder.decodeBitmap(source) { decoder, info, _ ->
                decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
                val side = max(info.size.width, info.size.height)
                if (side > maxSide) {
                    decoder.setTargetSize(info.size.width * maxSide / side, info.size.height * maxSide / side)
                }
            }.copy(Bitmap.Config.ARGB_8888, false)
        }
        // Android 8.x: BitmapFactory, power-of-two subsampling (EXIF rotation not applied).
        val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
        resolver.openInputStream(uri).use { BitmapFactory.decodeStream(it, null, bounds) }
        var sample = 1
        while (max(bounds.outWidth, bounds.outHeight) / (sample * 2) >= maxSide) sample *= 2
        val options = BitmapFactory.Options().apply {
            inSampleSize = sample
            inPreferredConfig = Bitmap.Config.ARGB_8888
        }
        return resolver.openInputStream(uri).use { BitmapFactory.decodeStream(it, null, options) }
            ?: throw IllegalArgumentException("the picked file is not an image Android can decode")
    }
}
