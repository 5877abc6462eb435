package org.edgetoolkit.demo.bundle

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject

/**
 * bundle.json of a vision bundle, as `toolkit export tflite --model M --bundle DIR` writes
 * it (format "edge-toolkit-bundle", version 1; the Python reader's docstring in
 * export/bundle_read.py lists every key). Only what this app uses is read; a version 1
 * reader ignores keys it does not know, and refuses a newer version rather than guess.
 *
 * tests/apps/test_native_sources.py greps this file for the keys it reads and checks that
 * the exporter writes each of them, so the app cannot drift from the format unnoticed.
 */
data class Manifest(
    val kind: String,
    val runtime: String,
    val source: String,
    val family: String?,
    val modelFile: String,
    val signature: String,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
    val preprocessing: Preprocessing,
    val mask: MaskSpec?,
    val logits: LogitsSpec?,
    val experts: ExpertsSpec?,
    val sample: SampleSpec?,
    val files: Map<String, FileEntry>,
    val verifiedByExport: Boolean?,
) {
    val pixels: TensorSpec get() = inputs.first { it.role == "pixels" }

    fun output(name: String): TensorSpec =
        outputs.firstOrNull { it.name == name }
            ?: throw BundleException("bundle.json names output $name but lists no such tensor: export the bundle again")

    companion object {
        const val FORMAT = "edge-toolkit-bundle"
        const val VERSION = 1
        const val SEGMENTATION = "image-segmentation"
        const val CLASSIFICATION = "image-classification"
        const val LITERT = "ai-edge-litert"

        /** Parses and checks bundle.json; every failure is one [BundleException] line. */
        fun parse(text: String): Manifest = try {
            read(JSONObject(text))
        } catch (e: JSONException) {
            throw BundleException("bundle.json is not a bundle manifest (${e.message}): export the bundle again with `toolkit export tflite --bundle`")
        }

        private fun read(root: JSONObject): Manifest {
            if (root.optString("format") != FORMAT) {
                throw BundleException("bundle.json is not an Edge Toolkit bundle (format ${root.optString("format")}): export one with `toolkit export tflite --bundle DIR`")
            }
            val version = root.getInt("version")
            if (version > VERSION) {
                throw BundleException("bundle.json is version $version; this app reads version $VERSION: update the app or export with the matching toolkit")
            }
            val kind = root.optString("kind", "llm")
            if (kind != SEGMENTATION && kind != CLASSIFICATION) {
                throw BundleException("this bundle is a \"$kind\" model; this app runs image-segmentation and image-classification bundles (LLM bundles run in apps/web)")
            }
            val runtime = root.getString("runtime")
            if (runtime != LITERT) {
                throw BundleException("this bundle is for $runtime; the Android app runs LiteRT: export it with `toolkit export tflite --bundle DIR`")
            }
            val model = root.getJSONObject("model")
            val post = root.getJSONObject("postprocessing")
            return Manifest(
                kind = kind,
                runtime = runtime,
                source = root.optString("source"),
                family = root.optText("family"),
                modelFile = model.getString("file"),
                signature = model.optText("signature") ?: "serving_default",
                inputs = tensors(root.getJSONArray("inputs")),
                outputs = tensors(root.getJSONArray("outputs")),
                preprocessing = Preprocessing.read(root.getJSONObject("preprocessing")),
                mask = post.optJSONObject("mask")?.let {
                    MaskSpec(it.getString("output"), post.optDouble("threshold", 0.5).toFloat())
                },
                logits = post.optJSONObject("logits")?.let {
                    LogitsSpec(it.getString("output"), post.optBoolean("apply_softmax", true),
                        strings(post.optJSONArray("labels")))
                },
                experts = root.optJSONObject("experts")?.let { ExpertsSpec.read(it) },
                sample = root.optJSONObject("sample")?.let { SampleSpec.read(it) },
                files = fileEntries(root.getJSONObject("files")),
                verifiedByExport = root.optJSONObject("verification")?.optBoolean("passed"),
            ).also { validate(it) }
        }

        private fun validate(m: Manifest) {
            if (m.inputs.none { it.role == "pixels" }) {
                throw BundleException("bundle.json lists no \"pixels\" input: export the bundle again")
            }
            val main = (if (m.kind == SEGMENTATION) m.mask?.output else m.logits?.output)
                ?: throw BundleException("bundle.json has no postprocessing for its ${m.kind} output: export the bundle again")
            m.output(main)
            m.experts?.let { m.output(it.output) }
            if (m.modelFile !in m.files) {
                throw BundleException("bundle.json gives no sha256 for ${m.modelFile}: export the bundle again")
            }
        }

        private fun tensors(array: JSONArray): List<TensorSpec> =
            (0 until array.length()).map { TensorSpec.read(array.getJSONObject(it)) }

        private fun fileEntries(obj: JSONObject): Map<String, FileEntry> =
            obj.keys().asSequence().associateWith { name ->
                val entry = obj.getJSONObject(name)
                FileEntry(entry.getLong("bytes"), entry.getString("sha256").lowercase())
            }
    }
}

/** An input or output as the file binds it: LiteRT signature key, dtype, shape. */
data class TensorSpec(
    val role: String,
    val name: String,
    val dtype: String,
    val shape: List<Int>,
    val quantization: Quantization?,
) {
    val count: Int get() = shape.fold(1) { a, b -> a * b }

    companion object {
        fun read(obj: JSONObject) = TensorSpec(
            role = obj.getString("role"),
            name = obj.getString("name"),
            dtype = obj.getString("dtype"),
            shape = ints(obj.getJSONArray("shape")),
            quantization = obj.optJSONObject("quantization")?.let {
                Quantization(it.getDouble("scale").toFloat(), it.getInt("zero_point"))
            },
        )
    }
}

/** real = scale * (q - zeroPoint): a fully int8 LiteRT file's tensors. */
data class Quantization(val scale: Float, val zeroPoint: Int)

/**
 * What to do to a photo before the model: scale it to width x height, take RGB or BT.601
 * grey, keep raw 0..255 values (the file normalises itself), lay them out NHWC or NCHW.
 */
data class Preprocessing(
    val height: Int,
    val width: Int,
    val channels: Int,
    val layout: String,
    val color: String,
    val valueMax: Float,
    val lumaWeights: FloatArray,
    val dataset: String?,
    val datasetNote: String?,
) {
    companion object {
        // ITU-R BT.601 luma, what the exporter writes under preprocessing.grayscale.
        private val BT601 = floatArrayOf(0.299f, 0.587f, 0.114f)

        fun read(obj: JSONObject): Preprocessing {
            val range = obj.getJSONArray("value_range")
            if (range.getDouble(0) != 0.0) {
                throw BundleException("preprocessing.value_range starts at ${range.getDouble(0)}, not 0: this app feeds raw 0..255 pixels; export the bundle again")
            }
            if (!obj.optBoolean("normalization_folded", false)) {
                throw BundleException("this bundle's file does not normalise its input itself: export it with this version of Edge Toolkit")
            }
            val layout = obj.getString("layout")
            if (layout != "NHWC" && layout != "NCHW") {
                throw BundleException("preprocessing.layout is $layout, not NHWC or NCHW: export the bundle again")
            }
            val weights = obj.optJSONObject("grayscale")?.optJSONArray("weights_rgb")
            return Preprocessing(
                height = obj.getInt("height"),
                width = obj.getInt("width"),
                channels = obj.getInt("channels"),
                layout = layout,
                color = obj.getString("color"),
                valueMax = range.getDouble(1).toFloat(),
                lumaWeights = weights?.let { w -> FloatArray(3) { w.getDouble(it).toFloat() } } ?: BT601,
                dataset = obj.optText("dataset"),
                datasetNote = obj.optText("dataset_note"),
            )
        }
    }
}

/** The segmenter's output: already p(person) per pixel, compared with [threshold]. */
data class MaskSpec(val output: String, val threshold: Float)

/** The classifier's output: logits, softmax over the last axis, one label per class. */
data class LogitsSpec(val output: String, val applySoftmax: Boolean, val labels: List<String>)

/** The V-MoE's routing output: the expert indices the per-image router chose. */
data class ExpertsSpec(val output: String, val topK: Int, val numExperts: Int, val moeBlocks: List<Int>) {
    companion object {
        fun read(obj: JSONObject) = ExpertsSpec(
            output = obj.getString("output"),
            topK = obj.getInt("top_k"),
            numExperts = obj.getInt("num_experts"),
            moeBlocks = ints(obj.optJSONArray("moe_blocks") ?: JSONArray()),
        )
    }
}

/** The export's verification image and the outputs LiteRT gave on it (raw little-endian). */
data class SampleSpec(
    val input: SampleFile,
    val outputs: List<SampleFile>,
    val rtol: Float,
    val judgedOn: String,
) {
    companion object {
        fun read(obj: JSONObject): SampleSpec {
            if (obj.optString("byte_order", "little") != "little") {
                throw BundleException("the sample files are not little-endian: export the bundle again")
            }
            val outs = obj.getJSONArray("outputs")
            return SampleSpec(
                input = SampleFile.read(obj.getJSONObject("input")),
                outputs = (0 until outs.length()).map { SampleFile.read(outs.getJSONObject(it)) },
                rtol = obj.getDouble("rtol").toFloat(),
                judgedOn = obj.optString("judged_on", "max"),
            )
        }
    }
}

data class SampleFile(val role: String, val name: String?, val file: String, val dtype: String, val shape: List<Int>) {
    companion object {
        fun read(obj: JSONObject) = SampleFile(
            role = obj.getString("role"),
            name = obj.optText("name"),
            file = obj.getString("file"),
            dtype = obj.getString("dtype"),
            shape = ints(obj.getJSONArray("shape")),
        )
    }
}

/** A file's size and SHA-256 as the exporter recorded them. */
data class FileEntry(val bytes: Long, val sha256: String)

class BundleException(message: String) : Exception(message)

/** A string value, or null when the key is missing or JSON null (optString gives "null"). */
private fun JSONObject.optText(key: String): String? = if (isNull(key)) null else getString(key)

private fun ints(array: JSONArray): List<Int> = (0 until array.length()).map { array.getInt(it) }

private fun strings(array: JSONArray?): List<String> =
    if (array == null) emptyList() else (0 until array.length()).map { array.getString(it) }
