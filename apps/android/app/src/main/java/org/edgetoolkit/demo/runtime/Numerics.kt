package org.edgetoolkit.demo.runtime

import kotlin.math.exp
import kotlin.math.floor
import kotlin.math.max
import kotlin.math.min
import kotlin.math.rint
import kotlin.math.sqrt

/**
 * The few formulas the app applies to a model's numbers, kept free of Android classes so
 * the JVM unit tests (app/src/test) can check them against hand-computed values.
 */
object Numerics {
    /** softmax(z)_i = exp(z_i - max z) / sum_j exp(z_j - max z); the shift avoids overflow. */
    fun softmax(logits: FloatArray): FloatArray {
        val top = logits.maxOrNull() ?: return FloatArray(0)
        val e = DoubleArray(logits.size) { exp((logits[it] - top).toDouble()) }
        val sum = e.sum()
        return FloatArray(logits.size) { (e[it] / sum).toFloat() }
    }

    fun argmax(values: FloatArray): Int = values.indices.maxByOrNull { values[it] } ?: -1

    /** Indices of the k largest values, largest first. */
    fun topK(values: FloatArray, k: Int): List<Int> =
        values.indices.sortedByDescending { values[it] }.take(k)

    /**
     * int8 codes of real values for a fully int8 LiteRT input:
     * q = clip(round_half_even(x / scale) + zero_point, -128, 127), as the manifest's
     * preprocessing.quantize gives it (rint rounds half to even, like numpy's round).
     */
    fun quantizeInt8(values: FloatArray, scale: Float, zeroPoint: Int): ByteArray =
        ByteArray(values.size) {
            val q = rint(values[it] / scale.toDouble()) + zeroPoint
            min(127.0, max(-128.0, q)).toInt().toByte()
        }

    /** x = scale * (q - zero_point): an int8 output back to real values. */
    fun dequantizeInt8(codes: ByteArray, scale: Float, zeroPoint: Int): FloatArray =
        FloatArray(codes.size) { scale * (codes[it] - zeroPoint) }

    /** q-th percentile (0..100), linear between closest ranks (numpy's default; the
     * Python bench, toolkit/bench/timing.py, and apps/web define it the same way). */
    fun percentile(values: DoubleArray, q: Double): Double {
        require(values.isNotEmpty()) { "percentile of an empty series" }
        val sorted = values.sortedArray()
        val rank = (sorted.size - 1) * q / 100.0
        val low = floor(rank).toInt()
        val high = min(low + 1, sorted.size - 1)
        return sorted[low] + (rank - low) * (sorted[high] - sorted[low])
    }

    /** Error of [got] against [want] the way the bundle's sample is judged:
     * max (or mean) |got - want| / max |want| ("judged_on"); infinite on a size mismatch. */
    fun relativeError(got: FloatArray, want: FloatArray, judgedOn: String): Double {
        if (got.size != want.size) return Double.POSITIVE_INFINITY
        if (got.isEmpty()) return 0.0
        val diff = DoubleArray(got.size) { kotlin.math.abs(got[it].toDouble() - want[it]) }
        val error = if (judgedOn == "mean") diff.average() else diff.max()
        val scale = want.maxOf { kotlin.math.abs(it.toDouble()) }
        return if (scale > 0) error / scale else error
    }
}

/** Per-run latencies summarised like toolkit/bench/timing.py (sample std, n - 1). */
data class LatencyStats(
    val count: Int,
    val meanMs: Double,
    val stdMs: Double,
    val minMs: Double,
    val maxMs: Double,
    val p50Ms: Double,
    val p90Ms: Double,
) {
    companion object {
        fun of(samplesMs: DoubleArray): LatencyStats {
            val n = samplesMs.size
            val mean = samplesMs.average()
            val std = if (n > 1) sqrt(samplesMs.sumOf { (it - mean) * (it - mean) } / (n - 1)) else 0.0
            return LatencyStats(
                count = n, meanMs = mean, stdMs = std,
                minMs = samplesMs.min(), maxMs = samplesMs.max(),
                p50Ms = Numerics.percentile(samplesMs, 50.0),
                p90Ms = Numerics.percentile(samplesMs, 90.0),
            )
        }
    }
}
