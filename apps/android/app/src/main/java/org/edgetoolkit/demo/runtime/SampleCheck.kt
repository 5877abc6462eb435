package org.edgetoolkit.demo.runtime

import org.edgetoolkit.demo.bundle.BundleException
import org.edgetoolkit.demo.bundle.SampleFile
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * The bundle's own test, run on the phone: the export's verification image
 * (sample_input.bin, raw 0..255 float32 in the file's layout) through this app's LiteRT,
 * compared with what LiteRT gave on the export machine (sample_output_ROLE.bin).
 *
 *     error = max |app - sample| / max |sample|   ("judged_on" "max"; "mean" for int8 files)
 *     integer outputs (expert indices) must be equal
 *
 * Passing means the app binds the tensors, reads the outputs and dequantizes exactly as
 * the exporter meant; the photo path adds only the resize and colour conversion.
 */
object SampleCheck {
    data class Line(val role: String, val text: String, val passed: Boolean)

    data class Result(val lines: List<Line>, val rtol: Float) {
        val passed: Boolean get() = lines.isNotEmpty() && lines.all { it.passed }
    }

    /** The sample's input values, or null when the bundle carries no sample. */
    fun input(model: VisionModel): FloatArray? {
        val sample = model.manifest.sample ?: return null
        return readFloats(model.bundle.file(sample.input.file), sample.input)
    }

    fun run(model: VisionModel): Result {
        val sample = model.manifest.sample
            ?: throw BundleException("this bundle has no sample: export it again with this version of Edge Toolkit")
        val got = model.run(readFloats(model.bundle.file(sample.input.file), sample.input))
        val lines = sample.outputs.map { recorded ->
            val name = recorded.name ?: model.manifest.outputs.first { it.role == recorded.role }.name
            val want = readFloats(model.bundle.file(recorded.file), recorded)
            val value = got.getValue(name)
            if (recorded.dtype.startsWith("int") || recorded.dtype.startsWith("uint")) {
                val equal = value.contentEquals(want)
                Line(recorded.role, if (equal) "equal" else "DIFFERENT", equal)
            } else {
                val error = Numerics.relativeError(value, want, sample.judgedOn)
                Line(recorded.role, "%s relative error %.3g".format(sample.judgedOn, error), error <= sample.rtol)
            }
        }
        return Result(lines, sample.rtol)
    }

    /** A raw little-endian file as floats (float32, int32, or int8 as written). */
    private fun readFloats(file: File, spec: SampleFile): FloatArray {
        val bytes = file.readBytes()
        val count = spec.shape.fold(1) { a, b -> a * b }
        val buffer = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
        val width = when (spec.dtype) {
            "float32", "int32" -> 4
            "int8", "uint8" -> 1
            else -> throw BundleException("${spec.file} is ${spec.dtype}; this app reads float32, int32 and int8 samples")
        }
        if (bytes.size != count * width) {
            throw BundleException("${spec.file} holds ${bytes.size} bytes, not the $count ${spec.dtype} values of ${spec.shape}: export the bundle again")
        }
        return FloatArray(count) {
            when (spec.dtype) {
                "float32" -> buffer.getFloat(it * 4)
                "int32" -> buffer.getInt(it * 4).toFloat()
                "uint8" -> (bytes[it].toInt() and 0xFF).toFloat()
                else -> bytes[it].toFloat()
            }
        }
    }
}
