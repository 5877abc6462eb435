package org.edgetoolkit.demo.runtime

import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.TensorBuffer
import org.edgetoolkit.demo.bundle.BundleException
import org.edgetoolkit.demo.bundle.Manifest
import org.edgetoolkit.demo.bundle.TensorSpec
import org.edgetoolkit.demo.bundle.VerifiedBundle

/**
 * One bundle's .tflite under LiteRT's CompiledModel API, bound by the names the manifest
 * read from the file (signature "serving_default", inputs "args_0", outputs "output_0",
 * "output_1" ..), so the app never relies on tensor order.
 *
 * [run] takes raw 0..255 pixels already laid out as preprocessing says (the file divides
 * by 255 and normalises itself) and gives every output as floats: float32 as they are,
 * int8 dequantized with the tensor's scale and zero point, int32 (the V-MoE's expert
 * indices) converted exactly (they are small).
 *
 * CPU only: the GPU accelerator is a second artifact (litert-gpu) this small app leaves out.
 */
class VisionModel private constructor(
    val bundle: VerifiedBundle,
    private val model: CompiledModel,
    /** Wall time of CompiledModel.create: reading the file and preparing the CPU kernels. */
    val loadMs: Double,
) : AutoCloseable {
    val manifest: Manifest get() = bundle.manifest
    private val pixels: TensorSpec = manifest.pixels
    private val signature = manifest.signature
    private val input: TensorBuffer = model.createInputBuffer(pixels.name, signature)
    private val outputs: Map<String, TensorBuffer> =
        manifest.outputs.associate { it.name to model.createOutputBuffer(it.name, signature) }
    private var closed = false

    /** Outputs by tensor name. */
    @Synchronized
    fun run(values: FloatArray): Map<String, FloatArray> {
        check(!closed) { "the model was closed" }
        if (values.size != pixels.count) {
            throw BundleException("the input has ${values.size} values, the file takes ${pixels.count} (${pixels.shape}): check preprocessing")
        }
        write(values)
        model.run(mapOf(pixels.name to input), outputs, signature)
        return manifest.outputs.associate { it.name to read(it) }
    }

    private fun write(values: FloatArray) {
        val quant = pixels.quantization
        when {
            pixels.dtype == "float32" -> input.writeFloat(values)
            pixels.dtype == "int8" && quant != null ->
                input.writeInt8(Numerics.quantizeInt8(values, quant.scale, quant.zeroPoint))
            else -> throw BundleException("the input is ${pixels.dtype}; this app feeds float32 or int8: export the bundle with `toolkit export tflite` (with or without --int8)")
        }
    }

    private fun read(spec: TensorSpec): FloatArray {
        val buffer = outputs.getValue(spec.name)
        val quant = spec.quantization
        return when {
            spec.dtype == "float32" -> buffer.readFloat()
            spec.dtype == "int32" -> buffer.readInt().let { ints -> FloatArray(ints.size) { ints[it].toFloat() } }
            spec.dtype == "int8" && quant != null ->
                Numerics.dequantizeInt8(buffer.readInt8(), quant.scale, quant.zeroPoint)
            else -> throw BundleException("output ${spec.name} is ${spec.dtype}; this app reads float32, int32 and quantized int8 outputs")
        }
    }

    @Synchronized
    override fun close() {
        if (closed) return
        closed = true
        input.close()
        outputs.values.forEach { it.close() }
        model.close()
    }

    companion object {
        /** Compiles the verified bundle's model for the CPU; a failure is one line. */
        fun open(bundle: VerifiedBundle): VisionModel {
            val manifest = bundle.manifest
            val channels = manifest.preprocessing.channels
            if (channels != 1 && channels != 3) {
                throw BundleException("the model takes $channels channels; this app feeds RGB (3) or grey (1) pixels")
            }
            val start = System.nanoTime()
            val compiled = try {
                CompiledModel.create(bundle.modelPath, CompiledModel.Options(Accelerator.CPU))
            } catch (e: Exception) {
                throw BundleException("LiteRT could not load ${manifest.modelFile} (${e.message}): export it again with `toolkit export tflite --bundle`")
            }
            val loadMs = (System.nanoTime() - start) / 1e6
            return try {
                VisionModel(bundle, compiled, loadMs)
            } catch (e: Exception) {
                compiled.close()
                throw BundleException("the file has no tensors named as bundle.json says (${e.message}): export the bundle again")
            }
        }

        /** Milliseconds [block] took, and its result. */
        inline fun <T> timed(block: () -> T): Pair<T, Double> {
            val start = System.nanoTime()
            val result = block()
            return result to (System.nanoTime() - start) / 1e6
        }
    }
}
