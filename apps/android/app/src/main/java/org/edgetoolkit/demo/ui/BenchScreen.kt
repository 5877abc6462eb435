package org.edgetoolkit.demo.ui

import android.os.Build
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.Spacer
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.width
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.text.KeyboardOptions
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.rememberCoroutineScope
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.text.input.KeyboardType
import androidx.compose.ui.unit.dp
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import org.edgetoolkit.demo.bundle.BundleEntry
import org.edgetoolkit.demo.bundle.Manifest
import org.edgetoolkit.demo.runtime.LatencyStats
import org.edgetoolkit.demo.runtime.SampleCheck
import org.edgetoolkit.demo.runtime.VisionModel
import java.io.File

/** A finished bench: the first (cold) run, then the timed series after the warm-up. */
private class BenchResult(val firstMs: Double, val warmup: Int, val stats: LatencyStats)

/**
 * A tiny on-device bench, timed the way toolkit/bench/timing.py times a model: one first
 * run reported on its own (it pays for lazy allocations), [warm-up] runs discarded, then
 * [runs] timed one by one and summarised as mean, p50 and p90. The input is the bundle's
 * sample image (the model's exact input), so preprocessing is not in the numbers.
 * "Check sample" compares this phone's outputs on that image with the export machine's.
 */
@Composable
fun BenchScreen(bundles: List<BundleEntry>, onRefresh: () -> Unit) {
    val scope = rememberCoroutineScope()
    var dir by remember { mutableStateOf<File?>(null) }
    val state by rememberVisionModel(dir)
    val model = (state as? ModelState.Ready)?.model
    var warmupText by remember { mutableStateOf("10") }
    var runsText by remember { mutableStateOf("50") }
    var busy by remember { mutableStateOf(false) }
    var bench by remember { mutableStateOf<BenchResult?>(null) }
    var check by remember { mutableStateOf<SampleCheck.Result?>(null) }
    var error by remember { mutableStateOf<String?>(null) }

    fun launchWork(work: suspend (VisionModel) -> Unit) {
        val m = model ?: return
        scope.launch {
            busy = true
            error = null
            try {
                work(m)
            } catch (e: Exception) {
                error = e.message ?: e.toString()
            } finally {
                busy = false
            }
        }
    }

    Column(
        Modifier.fillMaxWidth().verticalScroll(rememberScrollState()).padding(12.dp),
        verticalArrangement = ScreenSpacing,
    ) {
        BundlePicker(
            bundles, setOf(Manifest.SEGMENTATION, Manifest.CLASSIFICATION), dir,
            { dir = it; bench = null; check = null }, onRefresh,
        )
        ModelStatus(state)
        Row {
            OutlinedTextField(
                warmupText, { warmupText = it.filter(Char::isDigit) }, Modifier.weight(1f),
                label = { Text("warm-up runs") },
                keyboardOptions = KeyboardOptions(keyboardType = KeyboardType.Number),
            )
            Spacer(Modifier.width(8.dp))
            OutlinedTextField(
                runsText, { runsText = it.filter(Char::isDigit) }, Modifier.weight(1f),
                label = { Text("timed runs") },
                keyboardOptions = KeyboardOptions(keyboardType = KeyboardType.Number),
            )
        }
        Row {
            Button(onClick = {
                val warmup = warmupText.toIntOrNull() ?: 10
                val runs = (runsText.toIntOrNull() ?: 50).coerceAtLeast(1)
                launchWork { m -> bench = withContext(Dispatchers.Default) { timeRuns(m, warmup, runs) } }
            }, enabled = model != null && !busy) { Text("Run bench") }
            Spacer(Modifier.width(8.dp))
            OutlinedButton(onClick = {
                launchWork { m -> check = withContext(Dispatchers.Default) { SampleCheck.run(m) } }
            }, enabled = model != null && !busy) { Text("Check sample") }
        }
        if (busy) Text("Running...")
        error?.let { ErrorCard(it) }
        bench?.let { b ->
            val s = b.stats
            Text(
                "${Build.MANUFACTURER} ${Build.MODEL}, Android ${Build.VERSION.RELEASE}, LiteRT CompiledModel on the CPU",
                style = MaterialTheme.typography.bodySmall,
            )
            Text("load %.1f ms, first run %.2f ms, %d warm-up runs".format(model?.loadMs ?: 0.0, b.firstMs, b.warmup))
            Text(
                "%d runs: p50 %.2f ms, p90 %.2f ms, mean %.2f ± %.2f ms, min %.2f, max %.2f"
                    .format(s.count, s.p50Ms, s.p90Ms, s.meanMs, s.stdMs, s.minMs, s.maxMs),
                style = MaterialTheme.typography.titleSmall,
            )
        }
        check?.let { c ->
            Text(
                (if (c.passed) "Sample matches the export (rtol %g)" else "Sample MISMATCH (rtol %g)").format(c.rtol),
                style = MaterialTheme.typography.titleSmall,
            )
            for (line in c.lines) Text("${line.role}: ${line.text}", style = MaterialTheme.typography.bodySmall)
        }
    }
}

private fun timeRuns(model: VisionModel, warmup: Int, runs: Int): BenchResult {
    val pre = model.manifest.preprocessing
    // The sample image when the bundle has one, else mid-grey: the numbers do not depend
    // on the values for these fixed-shape models, only on the shape.
    val input = SampleCheck.input(model) ?: FloatArray(model.manifest.pixels.count) { pre.valueMax / 2 }
    val (_, firstMs) = VisionModel.timed { model.run(input) }
    repeat(warmup) { model.run(input) }
    val samples = DoubleArray(runs) { VisionModel.timed { model.run(input) }.second }
    return BenchResult(firstMs, warmup, LatencyStats.of(samples))
}
