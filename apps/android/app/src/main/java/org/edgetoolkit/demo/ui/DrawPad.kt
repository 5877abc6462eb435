package org.edgetoolkit.demo.ui

import android.graphics.Bitmap
import android.graphics.Paint
import androidx.compose.foundation.Canvas
import androidx.compose.foundation.background
import androidx.compose.foundation.gestures.detectDragGestures
import androidx.compose.foundation.layout.aspectRatio
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.runtime.Composable
import androidx.compose.runtime.mutableStateListOf
import androidx.compose.runtime.remember
import androidx.compose.ui.Modifier
import androidx.compose.ui.geometry.Offset
import androidx.compose.ui.graphics.Color
import androidx.compose.ui.graphics.StrokeCap
import androidx.compose.ui.graphics.drawscope.Stroke
import androidx.compose.ui.graphics.Path
import androidx.compose.ui.input.pointer.pointerInput

/** Strokes drawn with a finger, in the pad's own 0..1 coordinates (size independent). */
class Strokes {
    val lines = mutableStateListOf<List<Offset>>()

    fun clear() = lines.clear()

    /**
     * The drawing as a [side] x [side] bitmap: white strokes on black, the way MNIST-style
     * data sets draw (Fashion-MNIST: a light garment on a black background).
     */
    fun toBitmap(side: Int = 280): Bitmap {
        val bitmap = Bitmap.createBitmap(side, side, Bitmap.Config.ARGB_8888)
        val canvas = android.graphics.Canvas(bitmap)
        canvas.drawColor(android.graphics.Color.BLACK)
        val paint = Paint(Paint.ANTI_ALIAS_FLAG).apply {
            color = android.graphics.Color.WHITE
            style = Paint.Style.STROKE
            strokeWidth = side * STROKE
            strokeCap = Paint.Cap.ROUND
            strokeJoin = Paint.Join.ROUND
        }
        for (line in lines) {
            val path = android.graphics.Path()
            line.forEachIndexed { i, p ->
                if (i == 0) path.moveTo(p.x * side, p.y * side) else path.lineTo(p.x * side, p.y * side)
            }
            if (line.size == 1) path.lineTo(line[0].x * side + 0.1f, line[0].y * side)
            canvas.drawPath(path, paint)
        }
        return bitmap
    }

    companion object {
        /** Stroke width as a share of the side: about 2 pixels of a 28 x 28 image. */
        const val STROKE = 0.08f
    }
}

@Composable
fun DrawPad(strokes: Strokes, modifier: Modifier = Modifier) {
    val current = remember { mutableStateListOf<Offset>() }
    Canvas(
        modifier.fillMaxWidth().aspectRatio(1f).background(Color.Black).pointerInput(strokes) {
            detectDragGestures(
                onDragStart = { current.clear(); current.add(Offset(it.x / size.width, it.y / size.height)) },
                onDrag = { change, _ ->
                    current.add(Offset(change.position.x / size.width, change.position.y / size.height))
                },
                onDragEnd = { strokes.lines.add(current.toList()); current.clear() },
                onDragCancel = { current.clear() },
            )
        },
    ) {
        val style = Stroke(width = size.width * Strokes.STROKE, cap = StrokeCap.Round)
        for (line in strokes.lines + listOf(current.toList())) {
            if (line.isEmpty()) continue
            val path = Path().apply {
                moveTo(line[0].x * size.width, line[0].y * size.height)
                for (p in line.drop(1)) lineTo(p.x * size.width, p.y * size.height)
            }
            drawPath(path, Color.White, style = style)
        }
    }
}
