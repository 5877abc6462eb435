package org.edgetoolkit.demo.ui

import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.selection.selectable
import androidx.compose.material3.Card
import androidx.compose.material3.CardDefaults
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.RadioButton
import androidx.compose.material3.Text
import androidx.compose.material3.TextButton
import androidx.compose.runtime.Composable
import androidx.compose.runtime.State
import androidx.compose.runtime.produceState
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.NonCancellable
import kotlinx.coroutines.withContext
import org.edgetoolkit.demo.bundle.BundleEntry
import org.edgetoolkit.demo.bundle.BundleStore
import org.edgetoolkit.demo.runtime.VisionModel
import java.io.File

/** A screen's model: nothing chosen, being verified and compiled, ready, or refused. */
sealed interface ModelState {
    data object Idle : ModelState
    data object Loading : ModelState
    data class Ready(val model: VisionModel) : ModelState
    data class Failed(val message: String) : ModelState
}

/**
 * Verifies the bundle in [dir] (every file's SHA-256) and compiles its model off the main
 * thread; the model is closed when [dir] changes or the screen leaves.
 */
@Composable
fun rememberVisionModel(dir: File?): State<ModelState> =
    produceState<ModelState>(ModelState.Idle, dir) {
        value = if (dir == null) ModelState.Idle else ModelState.Loading
        if (dir == null) return@produceState
        // NonCancellable: a model opened while the user switched bundles is still closed
        // below (awaitDispose runs its block at once in a cancelled coroutine).
        val opened = withContext(Dispatchers.IO + NonCancellable) {
            runCatching { VisionModel.open(BundleStore.verify(dir)) }
        }
        value = opened.fold(
            onSuccess = { ModelState.Ready(it) },
            onFailure = { ModelState.Failed(it.message ?: it.toString()) },
        )
        awaitDispose { (value as? ModelState.Ready)?.model?.close() }
    }

/** Radio buttons over the bundles whose kind is one of [kinds]. */
@Composable
fun BundlePicker(
    bundles: List<BundleEntry>,
    kinds: Set<String>,
    selected: File?,
    onSelect: (File) -> Unit,
    onRefresh: () -> Unit,
) {
    val usable = bundles.filter { it.kind in kinds }
    Column(Modifier.fillMaxWidth()) {
        Row(verticalAlignment = Alignment.CenterVertically) {
            Text("Bundle", style = MaterialTheme.typography.titleSmall, modifier = Modifier.weight(1f))
            TextButton(onClick = onRefresh) { Text("Look again") }
        }
        if (usable.isEmpty()) {
            Message(
                "No ${kinds.joinToString(" or ")} bundle found. Put one in app/src/main/assets/bundles/NAME/ " +
                    "and rebuild, or push it:\nadb push DIR /sdcard/Android/data/org.edgetoolkit.demo/files/bundles/NAME\n" +
                    "(README.md says how to export one). Other bundles here: " +
                    (bundles.filter { it.kind !in kinds }.joinToString { "${it.name} (${it.kind})" }.ifEmpty { "none" }),
            )
        }
        for (entry in usable) {
            Row(
                Modifier.fillMaxWidth().selectable(selected = entry.dir == selected, onClick = { onSelect(entry.dir) }),
                verticalAlignment = Alignment.CenterVertically,
            ) {
                RadioButton(selected = entry.dir == selected, onClick = { onSelect(entry.dir) })
                Text("${entry.name}  (${entry.origin})")
            }
        }
    }
}

/** What the chosen bundle's state means for the user: nothing, a spinner line, or an error. */
@Composable
fun ModelStatus(state: ModelState) {
    when (state) {
        ModelState.Idle -> Text("Choose a bundle.")
        ModelState.Loading -> Text("Checking every file's SHA-256 and compiling the model...")
        is ModelState.Failed -> ErrorCard(state.message)
        is ModelState.Ready -> {
            val m = state.model
            val pre = m.manifest.preprocessing
            val verified = when (m.manifest.verifiedByExport) {
                true -> "export verification passed"
                false -> "export verification FAILED"
                null -> "exported without verification"
            }
            Text(
                "${m.manifest.source}: ${pre.width}x${pre.height} ${pre.color} ${pre.layout}, " +
                    "files checked, loaded in %.0f ms; %s".format(m.loadMs, verified),
                style = MaterialTheme.typography.bodySmall,
            )
        }
    }
}

@Composable
fun ErrorCard(message: String) {
    Card(
        colors = CardDefaults.cardColors(containerColor = MaterialTheme.colorScheme.errorContainer),
        modifier = Modifier.fillMaxWidth().padding(vertical = 4.dp),
    ) {
        Text(message, Modifier.padding(12.dp), color = MaterialTheme.colorScheme.onErrorContainer)
    }
}

@Composable
fun Message(text: String) {
    Card(Modifier.fillMaxWidth().padding(vertical = 4.dp)) {
        Text(text, Modifier.padding(12.dp), style = MaterialTheme.typography.bodySmall)
    }
}

/** Standard spacing for the screens' scrolling columns. */
val ScreenSpacing = Arrangement.spacedBy(8.dp)
