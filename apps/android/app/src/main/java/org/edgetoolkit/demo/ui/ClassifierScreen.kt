package org.edgetoolkit.demo.ui

import android.graphics.Bitmap
import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.compose.foundation.Image
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.Spacer
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.size
import androidx.compose.foundation.layout.width
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.Checkbox
import androidx.compose.material3.LinearProgressIndicator
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.rememberCoroutineScope
import androidx.compose.runtime.setValue
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.FilterQuality
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.platform.LocalContext
import androidx.compose.ui.unit.dp
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import org.edgetoolkit.demo.bundle.BundleEntry
import org.edgetoolkit.demo.bundle.Manifest
import org.edgetoolkit.demo.image.Photos
import org.edgetoolkit.demo.image.Pixels
import org.edgetoolkit.demo.runtime.Numerics
import org.edgetoolkit.demo.runtime.VisionModel
import java.io.File

/** One classified picture. */
private class Classified(
    val seen: Bitmap,
    val top: List<Pair<String, Float>>,
    val experts: List<Int>?,
    val preprocessMs: Double,
    val modelMs: Double,
)

/**
 * The classifier demo (the Mobile V-MoE, or any image-classification bundle): a photo or
 * a drawing, scaled and converted as preprocessing says (28 x 28 grey for the
 * Fashion-MNIST V-MoE), the class with its softmax probability, the next four, and for a
 * per-image routed MoE the expert its router chose ("experts" output).
 */
@Composable
fun ClassifierScreen(bundles: List<BundleEntry>, onRefresh: () -> Unit) {
    val context = LocalContext.current
    val scope = rememberCoroutineScope()
    var dir by remember { mutableStateOf<File?>(null) }
    val state by rememberVisionModel(dir)
    val model = (state as? ModelState.Ready)?.model
    var invert by remember { mutableStateOf(false) }
    var result by remember { mutableStateOf<Classified?>(null) }
    var error by remember { mutableStateOf<String?>(null) }
    val strokes = remember { Strokes() }

    fun classify(picture: () -> Bitmap) {
        val m = model ?: return
        scope.launch {
            error = null
            try {
                result = withContext(Dispatchers.Default) { classifyBitmap(m, picture(), invert) }
            } catch (e: Exception) {
                error = e.message ?: e.toString()
            }
        }
    }

    val pick = rememberLauncherForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) classify { Photos.decode(context, uri) }
    }

    Column(
        Modifier.fillMaxWidth().verticalScroll(rememberScrollState()).padding(12.dp),
        verticalArrangement = ScreenSpacing,
    ) {
        BundlePicker(bundles, setOf(Manifest.CLASSIFICATION), dir, { dir = it; result = null }, onRefresh)
        ModelStatus(state)
        model?.manifest?.preprocessing?.datasetNote?.let { Message(it) }
        Row(verticalAlignment = Alignment.CenterVertically) {
            Checkbox(checked = invert, onCheckedChange = { invert = it })
            Text("Invert (dark object on a light background)")
        }
        Row {
            Button(
                onClick = { pick.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly)) },
                enabled = model != null,
            ) { Text("Pick a photo") }
            Spacer(Modifier.width(8.dp))
            Button(onClick = { classify { strokes.toBitmap() } }, enabled = model != null && strokes.lines.isNotEmpty()) {
                Text("Classify drawing")
            }
            Spacer(Modifier.width(8.dp))
            OutlinedButton(onClick = { strokes.clear() }) { Text("Clear") }
        }
        DrawPad(strokes)
        error?.let { ErrorCard(it) }
        result?.let { r -> ResultView(r, model?.manifest) }
    }
}

@Composable
private fun ResultView(r: Classified, manifest: Manifest?) {
    Row(verticalAlignment = Alignment.CenterVertically) {
        // What the model saw, at its own resolution, drawn without smoothing.
        Image(r.seen.asImageBitmap(), "model input", Modifier.size(84.dp), filterQuality = FilterQuality.None)
        Spacer(Modifier.width(12.dp))
        Column {
            val (label, p) = r.top.first()
            Text(label, style = MaterialTheme.typography.headlineSmall)
            Text("%.1f%%, %.1f ms (%.1f preprocessing + %.1f LiteRT CPU)".format(100 * p, r.preprocessMs + r.modelMs, r.preprocessMs, r.modelMs))
        }
    }
    for ((label, p) in r.top) {
        Text("$label  %.1f%%".format(100 * p), style = MaterialTheme.typography.bodySmall)
        LinearProgressIndicator(progress = { p }, modifier = Modifier.fillMaxWidth())
    }
    val experts = manifest?.experts
    if (experts != null && r.experts != null) {
        Text(
            "Router chose expert ${r.experts.joinToString()} of ${experts.numExperts} " +
                "(top-${experts.topK}; used by blocks ${experts.moeBlocks.joinToString()})",
            style = MaterialTheme.typography.titleSmall,
        )
    } else {
        Text("Dense model: no expert routing in this bundle.", style = MaterialTheme.typography.bodySmall)
    }
}

private fun classifyBitmap(model: VisionModel, picture: Bitmap, invert: Boolean): Classified {
    val manifest = model.manifest
    val pre = manifest.preprocessing
    val logits = manifest.logits ?: error("not a classification bundle")
    val (values, preprocessMs) = VisionModel.timed { Pixels.fromBitmap(picture, pre, invert) }
    val (outputs, modelMs) = VisionModel.timed { model.run(values) }
    val raw = outputs.getValue(logits.output)
    val probabilities = if (logits.applySoftmax) Numerics.softmax(raw) else raw
    val top = Numerics.topK(probabilities, 5).map { i ->
        (logits.labels.getOrNull(i) ?: "class $i") to probabilities[i]
    }
    val experts = manifest.experts?.let { spec -> outputs.getValue(spec.output).map { it.toInt() } }
    return Classified(seenBitmap(values, pre.width, pre.height, pre.channels, pre.layout), top, experts, preprocessMs, modelMs)
}

/** The model's input values (0..255) back as a small bitmap, to show what it was given. */
private fun seenBitmap(values: FloatArray, width: Int, height: Int, channels: Int, layout: String): Bitmap {
    val plane = width * height
    val colors = IntArray(plane) { i ->
        fun at(c: Int): Int {
            val v = if (channels == 1) values[i] else if (layout == "NHWC") values[i * channels + c] else values[c * plane + i]
            return v.toInt().coerceIn(0, 255)
        }
        android.graphics.Color.rgb(at(0), at(if (channels == 1) 0 else 1), at(if (channels == 1) 0 else 2))
    }
    return Bitmap.createBitmap(colors, width, height, Bitmap.Config.ARGB_8888)
}
