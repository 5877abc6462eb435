package org.edgetoolkit.demo.bundle

import android.content.Context
import org.json.JSONObject
import java.io.File
import java.security.MessageDigest

/** A bundle folder whose every listed file matched bundle.json's size and SHA-256. */
class VerifiedBundle(val dir: File, val manifest: Manifest) {
    val name: String get() = dir.name
    val modelPath: String get() = File(dir, manifest.modelFile).absolutePath

    fun file(name: String): File = File(dir, name)
}

/** A bundle folder found on the device and the "kind" its bundle.json names (not yet verified). */
data class BundleEntry(val dir: File, val kind: String, val origin: String) {
    val name: String get() = dir.name
}

/**
 * Where bundles live and how they are trusted. A bundle is a folder `bundles/NAME/` holding
 * bundle.json and the files it lists, found in two places:
 *
 *  - `app/src/main/assets/bundles/NAME/` at build time, copied into the app's files dir on
 *    launch (LiteRT opens a model by path, and a path needs a real file);
 *  - the app's external files dir, `/sdcard/Android/data/org.edgetoolkit.demo/files/bundles/`,
 *    where `adb push` can put a bundle without rebuilding the app.
 *
 * Nothing is loaded before [verify] has compared every file with the manifest: a file cut
 * short by a copy, or replaced by another export, is refused with its name, instead of
 * running a model whose preprocessing or labels belong to a different file.
 */
object BundleStore {
    const val FOLDER = "bundles"
    private const val MANIFEST = "bundle.json"

    /** Bundle folders (those holding a bundle.json), assets copied first, sorted by name. */
    fun list(context: Context): List<BundleEntry> {
        copyAssets(context)
        val roots = listOfNotNull(
            File(context.filesDir, FOLDER) to "from assets",
            context.getExternalFilesDir(FOLDER)?.let { it to "pushed" },
        )
        return roots.flatMap { (root, origin) ->
            root.listFiles { dir -> File(dir, MANIFEST).isFile }.orEmpty().map { BundleEntry(it, kindOf(it), origin) }
        }.sortedBy { it.name }
    }

    /** The manifest's "kind" ("llm" when absent, as in bundles older than vision ones). */
    private fun kindOf(dir: File): String = try {
        JSONObject(File(dir, MANIFEST).readText()).optString("kind", "llm")
    } catch (e: Exception) {
        "unreadable bundle.json"
    }

    /** Copies assets/bundles/NAME/ to filesDir/bundles/NAME/ unless the same manifest is there. */
    fun copyAssets(context: Context) {
        val assets = context.assets
        for (name in assets.list(FOLDER).orEmpty()) {
            val files = assets.list("$FOLDER/$name").orEmpty()
            if (MANIFEST !in files) continue
            val manifest = assets.open("$FOLDER/$name/$MANIFEST").use { it.readBytes() }
            val target = File(context.filesDir, "$FOLDER/$name")
            val copied = File(target, MANIFEST)
            if (copied.isFile && copied.readBytes().contentEquals(manifest)) continue
            target.deleteRecursively()
            target.mkdirs()
            // bundle.json last: a copy cut short leaves a folder the list does not show.
            for (file in files.filter { it != MANIFEST }) {
                assets.open("$FOLDER/$name/$file").use { input ->
                    File(target, file).outputStream().use { input.copyTo(it) }
                }
            }
            copied.writeBytes(manifest)
        }
    }

    /** Parses bundle.json and checks every file it lists; throws [BundleException]. */
    fun verify(dir: File): VerifiedBundle {
        val manifestFile = File(dir, MANIFEST)
        if (!manifestFile.isFile) {
            throw BundleException("${dir.name} has no $MANIFEST: copy the whole folder that `toolkit export tflite --bundle` wrote")
        }
        val manifest = Manifest.parse(manifestFile.readText())
        for ((name, entry) in manifest.files) {
            checkFile(dir, name, entry)
        }
        return VerifiedBundle(dir, manifest)
    }

    private fun checkFile(dir: File, name: String, entry: FileEntry) {
        if (name.startsWith("/") || name.split('/').any { it == ".." }) {
            throw BundleException("bundle.json lists the file $name outside its folder: export the bundle again")
        }
        val file = File(dir, name)
        if (!file.isFile) {
            throw BundleException("${dir.name}/$name is missing: copy the whole bundle folder again")
        }
        if (file.length() != entry.bytes) {
            throw BundleException("${dir.name}/$name has ${file.length()} bytes, bundle.json says ${entry.bytes}: the copy is incomplete; copy the bundle again")
        }
        val digest = sha256(file)
        if (digest != entry.sha256) {
            throw BundleException("${dir.name}/$name has SHA-256 ${digest.take(12)}.., bundle.json says ${entry.sha256.take(12)}..: the file changed since export; copy the bundle again")
        }
    }

    /** Lower-case hex SHA-256 of a file, read in 1 MiB pieces. */
    fun sha256(file: File): String {
        val digest = MessageDigest.getInstance("SHA-256")
        val buffer = ByteArray(1 shl 20)
        file.inputStream().use { input ->
            while (true) {
                val n = input.read(buffer)
                if (n < 0) break
                digest.update(buffer, 0, n)
            }
        }
        return digest.digest().joinToString("") { "%02x".format(it) }
    }
}
