package org.edgetoolkit.demo.ui

import android.graphics.Bitmap
import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.compose.foundation.Image
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.selection.selectable
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.RadioButton
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.LaunchedEffect
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.rememberCoroutineScope
import androidx.compose.runtime.setValue
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.layout.ContentScale
import androidx.compose.ui.platform.LocalContext
import androidx.compose.ui.unit.dp
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import org.edgetoolkit.demo.bundle.BundleEntry
import org.edgetoolkit.demo.bundle.Manifest
import org.edgetoolkit.demo.image.Composite
import org.edgetoolkit.demo.image.Photos
import org.edgetoolkit.demo.image.Pixels
import org.edgetoolkit.demo.runtime.VisionModel
import java.io.File

/** One segmented photo: the mask at the model's size and the times it took. */
private class PortraitResult(
    val photo: Bitmap,
    val mask: Bitmap,
    val coverage: Float,
    val preprocessMs: Double,
    val modelMs: Double,
)

/**
 * The portrait demo: pick a photo, scale it to the model's input, run the segmenter, and
 * show the person over a blurred or replaced background (or the mask alone), with the
 * milliseconds per frame split into preprocessing and the model call.
 */
@Composable
fun PortraitScreen(bundles: List<BundleEntry>, onRefresh: () -> Unit) {
    val context = LocalContext.current
    val scope = rememberCoroutineScope()
    var dir by remember { mutableStateOf<File?>(null) }
    val state by rememberVisionModel(dir)
    var result by remember { mutableStateOf<PortraitResult?>(null) }
    var error by remember { mutableStateOf<String?>(null) }
    var background by remember { mutableStateOf(Composite.Background.BLUR) }
    var shown by remember { mutableStateOf<Bitmap?>(null) }

    val pick = rememberLauncherForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        val model = (state as? ModelState.Ready)?.model ?: return@rememberLauncherForActivityResult
        if (uri == null) return@rememberLauncherForActivityResult
        scope.launch {
            error = null
            try {
                result = withContext(Dispatchers.Default) {
                    segment(model, Photos.decode(context, uri))
                }
            } catch (e: Exception) {
                error = e.message ?: e.toString()
            }
        }
    }
    // Recomposite when the photo or the background choice changes (not the model call).
    LaunchedEffect(result, background) {
        val r = result ?: return@LaunchedEffect
        shown = withContext(Dispatchers.Default) { Composite.compose(r.photo, r.mask, background) }
    }

    Column(
        Modifier.fillMaxWidth().verticalScroll(rememberScrollState()).padding(12.dp),
        verticalArrangement = ScreenSpacing,
    ) {
        BundlePicker(bundles, setOf(Manifest.SEGMENTATION), dir, { dir = it; result = null; shown = null }, onRefresh)
        ModelStatus(state)
        Button(
            onClick = { pick.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly)) },
            enabled = state is ModelState.Ready,
        ) { Text("Pick a photo") }
        Row {
            for (option in Composite.Background.entries) {
                Row(
                    Modifier.selectable(selected = background == option, onClick = { background = option }),
                    verticalAlignment = Alignment.CenterVertically,
                ) {
                    RadioButton(selected = background == option, onClick = { background = option })
                    Text(option.name.lowercase())
                }
            }
        }
        error?.let { ErrorCard(it) }
        result?.let { r ->
            Text(
                "%.1f ms per frame: %.1f ms preprocessing + %.1f ms LiteRT (CPU); %.0f%% of the picture is person"
                    .format(r.preprocessMs + r.modelMs, r.preprocessMs, r.modelMs, 100 * r.coverage),
            )
        }
        shown?.let {
            Image(it.asImageBitmap(), "photo with the background changed", Modifier.fillMaxWidth(), contentScale = ContentScale.FillWidth)
        }
    }
}

private fun segment(model: VisionModel, photo: Bitmap): PortraitResult {
    val manifest = model.manifest
    val pre = manifest.preprocessing
    val mask = manifest.mask ?: error("not a segmentation bundle")
    val (values, preprocessMs) = VisionModel.timed { Pixels.fromBitmap(photo, pre) }
    val (outputs, modelMs) = VisionModel.timed { model.run(values) }
    // [1, 1, H, W] or [1, H, W, 1]: one value per input pixel, row-major either way.
    val probabilities = outputs.getValue(mask.output)
    return PortraitResult(
        photo = photo,
        mask = Composite.maskBitmap(probabilities, pre.width, pre.height),
        coverage = Composite.coverage(probabilities, mask.threshold),
        preprocessMs = preprocessMs,
        modelMs = modelMs,
    )
}
