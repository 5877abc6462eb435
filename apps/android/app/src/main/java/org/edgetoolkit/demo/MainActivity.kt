package org.edgetoolkit.demo

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.padding
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Scaffold
import androidx.compose.material3.Surface
import androidx.compose.material3.Tab
import androidx.compose.material3.TabRow
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableIntStateOf
import androidx.compose.runtime.produceState
import androidx.compose.runtime.remember
import androidx.compose.runtime.saveable.rememberSaveable
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.platform.LocalContext
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext
import org.edgetoolkit.demo.bundle.BundleEntry
import org.edgetoolkit.demo.bundle.BundleStore
import org.edgetoolkit.demo.ui.BenchScreen
import org.edgetoolkit.demo.ui.ClassifierScreen
import org.edgetoolkit.demo.ui.PortraitScreen

/** Three tabs over the bundles the app finds: portrait, classifier, bench. */
class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent {
            MaterialTheme {
                Surface(Modifier.fillMaxSize()) { App() }
            }
        }
    }
}

private val TABS = listOf("Portrait", "Classifier", "Bench")

@Composable
private fun App() {
    val context = LocalContext.current
    var tab by rememberSaveable { mutableIntStateOf(0) }
    // Bumped by a screen's "Look again" button after a bundle was pushed with adb.
    var generation by remember { mutableIntStateOf(0) }
    val bundles by produceState(emptyList<BundleEntry>(), generation) {
        value = withContext(Dispatchers.IO) { BundleStore.list(context) }
    }
    val refresh: () -> Unit = { generation++ }
    Scaffold { padding ->
        Column(Modifier.padding(padding)) {
            TabRow(selectedTabIndex = tab) {
                TABS.forEachIndexed { index, title ->
                    Tab(selected = tab == index, onClick = { tab = index }, text = { Text(title) })
                }
            }
            when (tab) {
                0 -> PortraitScreen(bundles, refresh)
                1 -> ClassifierScreen(bundles, refresh)
                else -> BenchScreen(bundles, refresh)
            }
        }
    }
}
